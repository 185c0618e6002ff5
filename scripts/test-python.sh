#!/usr/bin/env bash
# Builds phive's Python package (crates/phive-python) in release mode into .venv and runs the
# Python SDK tests (tests/python) against the tiny fixture checkpoint. Creates .venv on first use;
# the HTTP tests (scripts/test-http.sh) share it, each installing its own requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    python3 -m venv .venv
fi
echo "== pip install -r tests/python/requirements.txt"
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt

echo "== maturin develop --release (crates/phive-python)"
VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH" \
    .venv/bin/maturin develop --release -m crates/phive-python/Cargo.toml

echo "== pytest tests/python"
status=0
.venv/bin/python -m pytest tests/python -q "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$status"
