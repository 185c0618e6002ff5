#!/usr/bin/env bash
# Three `phive serve` replicas on the tiny checkpoint, each in its own network namespace (veth
# pairs on this machine only), behind nginx with deploy/nginx/phive.conf. Under load from one
# client per session, the busiest replica gets SIGTERM and is restarted; tests/replicas/drive.py
# checks that no request fails, in-flight ones finish, and sessions stay on their replica.
#
#   bash scripts/test-replicas.sh              # 2 minutes, 16 clients (results in docs/deploy.md)
#   bash scripts/test-replicas.sh --short      # 30 seconds (CI)
#
# Needs root (ip netns), nginx and iproute2 (installed with apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/serve.sh
source scripts/lib/serve.sh

duration=120
if [ "${1:-}" = "--short" ]; then duration=30; fi
if [ "$(id -u)" != 0 ]; then
    echo "test-replicas.sh needs root (it creates network namespaces)" >&2
    exit 1
fi
if ! command -v nginx >/dev/null || ! command -v ip >/dev/null; then
    echo "== installing nginx and iproute2"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx iproute2 >/dev/null
fi
build_cli

work=$(mktemp -d)
prefix="phv$$"
nginx_port=18080
keep_logs=0
cleanup() {
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    for i in 1 2 3; do
        ip link del "$prefix-h$i" 2>/dev/null || true
        ip netns del "$prefix-$i" 2>/dev/null || true
    done
    if [ "$keep_logs" = 0 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

# One namespace per replica: 10.219.<i>.2 inside, 10.219.<i>.1 on this side of the veth pair.
replicas=()
for i in 1 2 3; do
    ns="$prefix-$i"
    ip netns add "$ns"
    ip link add "$prefix-h$i" type veth peer name "$prefix-n$i"
    ip link set "$prefix-n$i" netns "$ns"
    ip addr add "10.219.$i.1/30" dev "$prefix-h$i"
    ip link set "$prefix-h$i" up
    ip netns exec "$ns" ip addr add "10.219.$i.2/30" dev "$prefix-n$i"
    ip netns exec "$ns" ip link set "$prefix-n$i" up
    ip netns exec "$ns" ip link set lo up
    replicas+=(--replica "$ns=10.219.$i.2")
done

# The shipped config, its example replica addresses (10.0.0.1N) swapped for this cluster's and
# its port for a local one.
sed -e 's/10\.0\.0\.1\([1-3]\):8000/10.219.\1.2:8000/' -e "s/listen 8080;/listen 127.0.0.1:$nginx_port;/" \
    deploy/nginx/phive.conf > "$work/phive.conf"
grep -q "server 10.219.3.2:8000" "$work/phive.conf"
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log $work/nginx-access.log;
    client_body_temp_path $work/body;
    proxy_temp_path $work/proxy;
    include $work/phive.conf;
}
EOF
nginx -t -q -c "$work/nginx.conf"
nginx -c "$work/nginx.conf"

echo "== load: 16 clients for ${duration}s, SIGTERM and restart of the busiest replica"
status=0
python3 tests/replicas/drive.py --phive target/release/phive --model tests/fixtures/phi3v-tiny \
    --nginx "127.0.0.1:$nginx_port" "${replicas[@]}" --duration "$duration" --clients 16 \
    --shutdown-timeout 30 --fail-timeout 5 --logdir "$work" --results target/test-replicas.json || status=$?
if [ "$status" != 0 ]; then
    echo "== FAILED; replica logs:" >&2
    tail -n 20 "$work"/phv*.log "$work/nginx-error.log" >&2 || true
    echo "(logs kept in $work)" >&2
    keep_logs=1
fi
exit "$status"
