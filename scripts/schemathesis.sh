#!/usr/bin/env bash
# Fuzzes the HTTP API from its own description: starts `phive serve` on the tiny fixture (with an
# API key, a small KV cache so that huge max_tokens are refused quickly) and runs schemathesis
# against /openapi.json with its default checks (no 5xx, status codes, content types, headers
# and bodies as documented) except positive_data_acceptance: phive's validation has rules that a
# JSON schema cannot state (top_logprobs needs logprobs, n and max_tokens against the KV cache,
# ...), so a schema-valid request may rightly get a 400. Bounded: MAX_EXAMPLES per operation
# (default 40), MAX_TIME seconds (default 60). Creates .venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/serve.sh
source scripts/lib/serve.sh

MAX_EXAMPLES="${MAX_EXAMPLES:-40}"
MAX_TIME="${MAX_TIME:-60}"
KEY="schemathesis-key"

build_cli
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/schemathesis --version >/dev/null 2>&1; then
    .venv/bin/pip install -q --disable-pip-version-check -r tests/schemathesis/requirements.txt
fi

port=$(free_port)
log=$(mktemp)
PHIVE_API_KEY="$KEY" ./target/release/phive serve vision -p "$port" -m tests/fixtures/phi3v-tiny \
    --kv-cache-mem 0.002 --max-num-seqs 8 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -f "$log"' EXIT
wait_for_health "$server" "$port" "$log"

status=0
.venv/bin/schemathesis --no-color run "http://127.0.0.1:$port/openapi.json" \
    -H "Authorization: Bearer $KEY" \
    --exclude-checks positive_data_acceptance \
    --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" --request-timeout 60 \
    --seed 17 || status=$?
if grep -q "panicked" "$log"; then
    echo "the server logged a panic:" >&2
    grep -A5 "panicked" "$log" >&2
    status=1
fi
exit "$status"
