#!/usr/bin/env bash
# Browser tests of the chat page that `phive serve` ships (tests/ui): headless Debian chromium
# driven by playwright-core against `phive serve` on the tiny fixtures. Installs chromium (apt)
# and playwright-core (npm ci, from the committed lock file) when they are missing.
# Screenshots at desktop and phone widths land in tests/ui/screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/serve.sh
source scripts/lib/serve.sh

if [ ! -x /usr/bin/chromium ]; then
    echo "== installing chromium (apt)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d tests/ui/node_modules/playwright-core ]; then
    echo "== npm ci (tests/ui)"
    (cd tests/ui && npm ci --no-audit --no-fund)
fi
build_cli
echo "== node --test tests/ui"
cd tests/ui
node --test --test-concurrency=1 "$@"
