"""Paths the Python SDK tests use (a module of its own: tests/http has a conftest.py too)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
MODEL = FIXTURES / "phi3v-tiny"
PHI4_MODEL = FIXTURES / "phi4mm-tiny"
IMAGES = FIXTURES / "images"
EXAMPLES = REPO / "crates" / "phive-python" / "examples"
AUDIO = FIXTURES / "audio"
