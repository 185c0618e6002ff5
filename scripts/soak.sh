#!/usr/bin/env bash
# Soak test on loopback: `phive serve` on the tiny fixture with an API key, a local file server
# for image URLs, and CLIENTS concurrent clients (default 64) for DURATION seconds (default 60;
# the 10-minute figures in docs/operations.md use DURATION=600) running tools/soak.py's mix.
# Fails on any 5xx, connection error, unfinished request, leftover active sequence, or resident
# memory growing more than 10% after the warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/serve.sh
source scripts/lib/serve.sh

DURATION="${DURATION:-60}"
CLIENTS="${CLIENTS:-64}"
KEY="soak-key"

build_cli
port=$(free_port)
files_port=$(free_port)
log=$(mktemp)
python3 -m http.server "$files_port" --bind 127.0.0.1 --directory tests/fixtures/images >/dev/null 2>&1 &
files=$!
PHIVE_API_KEY="$KEY" ./target/release/phive serve vision -p "$port" -m tests/fixtures/phi3v-tiny \
    --allow-private-urls --max-queue 256 >"$log" 2>&1 &
server=$!
trap 'kill $server $files 2>/dev/null || true; wait $server $files 2>/dev/null || true; rm -f "$log"' EXIT
wait_for_health "$server" "$port" "$log"

status=0
python3 tools/soak.py --port "$port" --key "$KEY" --pid "$server" \
    --image-base "http://127.0.0.1:$files_port" --duration "$DURATION" --clients "$CLIENTS" || status=$?
if [ "$status" -ne 0 ]; then
    echo "== server log (tail)" >&2
    tail -n 40 "$log" >&2
fi
exit "$status"
