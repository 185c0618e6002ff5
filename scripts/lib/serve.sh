# Sourced by the scripts that drive a `phive serve` of their own on loopback.

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
