"""`phive serve` configured only by PHIVE_* environment variables, as the container image and
the Kubernetes manifests run it: it listens where they say, serves the name they give, turns
ready, and exits 0 on SIGTERM."""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

from conftest import MODEL, PHIVE, free_port


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_environment_variables_configure_serve(tmp_path):
    port = free_port()
    env = dict(os.environ, PHIVE_MODEL=str(MODEL), PHIVE_HOST="127.0.0.1", PHIVE_PORT=str(port),
               PHIVE_SERVED_MODEL_NAME="from-env", PHIVE_MAX_NUM_SEQS="2", PHIVE_SHUTDOWN_TIMEOUT="5",
               PHIVE_KV_CACHE_MEM="0.05")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(PHIVE), "serve", "vision"], env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if get(base + "/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, log.read_text()
            time.sleep(0.1)
        assert get(base + "/v1/models")[1]["data"][0]["id"] == "from-env"
        assert get(base + "/health/live") == (200, {"status": "ok"})
        assert "max sequences 2" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text()
