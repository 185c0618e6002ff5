"""Fixtures for the Python SDK tests: the tiny random-weight checkpoints, a local HTTP server for
image URLs, and the goldens recorded by the PyTorch reference."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from typing import Any, Dict, Iterator

import pytest

from sdk_paths import FIXTURES, IMAGES, MODEL


@pytest.fixture(scope="session")
def runner():
    """The tiny Phi-3.5-vision checkpoint, loaded once."""
    from phive import Runner, VisionArchitecture, Which

    return Runner(which=Which.VisionPlain(model_id=str(MODEL), arch=VisionArchitecture.Phi3V))


@pytest.fixture(scope="session")
def golden_cases() -> Dict[str, Dict[str, Any]]:
    """Greedy outputs per case from tests/fixtures/goldens/phi3v/generation.json."""
    data = json.loads((FIXTURES / "goldens" / "phi3v" / "generation.json").read_text())
    return {case["name"]: case for case in data["cases"]}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass


@pytest.fixture(scope="session")
def image_server() -> Iterator[str]:
    """Serves tests/fixtures/images on 127.0.0.1; yields the base URL (ending in '/')."""
    handler = functools.partial(_QuietHandler, directory=str(IMAGES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="image-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
