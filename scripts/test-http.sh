#!/usr/bin/env bash
# Builds the `phive` binary and runs the HTTP API tests that drive `phive serve` with the
# official `openai` Python client (tests/http). Creates .venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/serve.sh
source scripts/lib/serve.sh

build_cli
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    python3 -m venv .venv
    .venv/bin/pip install -r tests/http/requirements.txt
elif ! .venv/bin/python -c "import openai, pytest" 2>/dev/null; then
    .venv/bin/pip install -r tests/http/requirements.txt
fi
echo "== pytest tests/http"
status=0
.venv/bin/python -m pytest tests/http -q "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$status"
