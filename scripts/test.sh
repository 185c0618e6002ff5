#!/usr/bin/env bash
# Runs every check phive has: formatting, lints, all Rust tests (unit, golden, SDK, server), the
# HTTP server driven by the official `openai` client, schemathesis against the server's OpenAPI
# description, a 60-second soak, the Python SDK tests, the chat page in headless chromium, the
# deployment files (Dockerfile lint, Kubernetes schemas) and three replicas behind nginx (needs
# root). Each step's wall time is printed when it ends, and all of them once more at the end
# (CI has a time budget; this says where it goes).
set -euo pipefail
cd "$(dirname "$0")/.."

timings=()
print_timings() {
    echo "== wall time per step"
    printf '%s\n' "${timings[@]}"
}
trap print_timings EXIT

# step NAME COMMAND...: runs one check, announcing it and recording its wall time.
step() {
    local name=$1 start=$SECONDS
    shift
    echo "== $name"
    "$@"
    timings+=("$(printf '%5d s  %s' $((SECONDS - start)) "$name")")
    echo "== $name: $((SECONDS - start)) s"
}

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo doc (the Rust SDK's documentation builds without warnings)" \
    env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p phive
step "cargo test (release: the model tests run real math on tiny checkpoints)" \
    cargo test --release --workspace
# The scripts below run the binary this built (see build_cli in scripts/lib/serve.sh).
export PHIVE_CLI_BUILT=1
step "HTTP server with the openai client" bash scripts/test-http.sh
step "schemathesis against /openapi.json (bounded)" bash scripts/schemathesis.sh
step "soak: 64 clients for 60 s" bash scripts/soak.sh
step "Python SDK" bash scripts/test-python.sh
step "chat page in headless chromium" bash scripts/test-ui.sh
step "deployment files: hadolint, Kubernetes schemas" bash scripts/validate-deploy.sh
step "three replicas behind nginx: drain and restart under load" bash scripts/test-replicas.sh --short
