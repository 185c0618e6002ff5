#!/usr/bin/env bash
# Runs every check phive has: formatting, lints, all Rust tests (unit, golden, SDK, server), the
# HTTP server driven by the official `openai` client, schemathesis against the server's OpenAPI
# description, a 60-second soak, the Python SDK tests, the chat page in headless chromium, the
# deployment files (Dockerfile lint, Kubernetes schemas) and three replicas behind nginx (needs
# root).
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
# The scripts below run the binary this built (see build_cli in scripts/lib/serve.sh).
export PHIVE_CLI_BUILT=1
echo "== HTTP server with the openai client"
bash scripts/test-http.sh
echo "== schemathesis against /openapi.json (bounded)"
bash scripts/schemathesis.sh
echo "== soak: 64 clients for 60 s"
bash scripts/soak.sh
echo "== Python SDK"
bash scripts/test-python.sh
echo "== chat page in headless chromium"
bash scripts/test-ui.sh
echo "== deployment files: hadolint, Kubernetes schemas"
bash scripts/validate-deploy.sh
echo "== three replicas behind nginx: drain and restart under load"
bash scripts/test-replicas.sh --short
