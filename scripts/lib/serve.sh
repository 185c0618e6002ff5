# Sourced by the scripts that drive a `phive serve` of their own on loopback.

# Builds target/release/phive, unless PHIVE_CLI_BUILT=1 says it is built: scripts/test.sh sets
# that once `cargo test --release --workspace` has built the binary. That build carries the
# workspace's test-only features (`fault-injection`, which reacts only to marker strings no
# client sends); `cargo build -p phive-cli` would recompile about 90 crates with the CLI's own
# feature set (5 to 10 minutes of CI) for the same behaviour.
build_cli() {
    if [ "${PHIVE_CLI_BUILT:-}" = 1 ] && [ -x target/release/phive ]; then
        echo "== target/release/phive, as cargo test built it"
        return
    fi
    echo "== cargo build --release -p phive-cli"
    cargo build --release -p phive-cli
}

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until the server with pid $1 answers http://127.0.0.1:$2/health (up to a minute); if it
# exits first, prints its log $3 and fails.
wait_for_health() {
    local pid=$1 port=$2 log=$3
    for _ in $(seq 1 300); do
        if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
            "http://127.0.0.1:$port/health" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$log"
            return 1
        fi
        sleep 0.2
    done
    echo "phive serve did not answer /health within a minute" >&2
    cat "$log"
    return 1
}
