#!/usr/bin/env bash
# Lints the Dockerfile (hadolint) and validates deploy/kubernetes, base and overlays, against
# the Kubernetes schemas (tests/deploy/validate_manifests.py). Creates target/deploy-venv on
# first use. No container runtime, cluster or network beyond PyPI is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/deploy-venv
if ! "$venv/bin/python" -c "import kubernetes_validate, jsonpatch, yaml" 2>/dev/null \
    || [ ! -x "$venv/bin/hadolint" ]; then
    echo "== creating $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r deploy/requirements.txt
fi
echo "== hadolint Dockerfile"
"$venv/bin/hadolint" Dockerfile
echo "== Kubernetes manifests"
"$venv/bin/python" tests/deploy/validate_manifests.py
