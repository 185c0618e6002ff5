#!/usr/bin/env bash
# Runs every check phive has: formatting, lints, all Rust tests (unit, golden, SDK, server), the
# HTTP server driven by the official `openai` client, the Python SDK tests, and the chat page in
# headless chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo doc (the Rust SDK's documentation builds without warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p phive
echo "== cargo test (release: the model tests run real math on tiny checkpoints)"
cargo test --release --workspace
echo "== HTTP server with the openai client"
bash scripts/test-http.sh
echo "== Python SDK"
bash scripts/test-python.sh
echo "== chat page in headless chromium"
bash scripts/test-ui.sh
