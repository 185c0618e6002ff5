"""Fixtures: a `phive serve` process on a free port with the tiny checkpoint, an OpenAI client
pointed at it, and a local http.server for URL images."""

import functools
import http.server
import os
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
PHIVE = Path(os.environ.get("PHIVE_BIN", ROOT / "target" / "release" / "phive"))
MODEL = ROOT / "tests" / "fixtures" / "phi3v-tiny"
IMAGES = ROOT / "tests" / "fixtures" / "images"
GOLDENS = ROOT / "tests" / "fixtures" / "goldens" / "phi3v" / "generation.json"
SERVED_NAME = "phi3v-tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `phive serve`; its stderr goes to a log file shown on failure."""

    def __init__(self, tmp: Path, *extra: str, model: Path = MODEL):
        if not PHIVE.exists():
            raise RuntimeError(f"{PHIVE} is missing; build it with `cargo build --release -p phive-cli`")
        self.port = free_port()
        self.log_path = tmp / f"phive-serve-{self.port}.log"
        self.log = open(self.log_path, "w")
        args = [str(PHIVE), "serve", "vision", "-p", str(self.port), "-m", str(model),
                "--served-model-name", SERVED_NAME, "--allow-local-media", str(IMAGES), *extra]
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"phive serve exited early:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"phive serve did not become healthy:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key="unused", max_retries=0, timeout=120)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()
    assert s.process.returncode == 0, s.log_path.read_text()


@pytest.fixture(scope="session")
def phi4_server(tmp_path_factory):
    """A server for the tiny Phi-4-multimodal checkpoint (images and audio)."""
    s = Server(tmp_path_factory.mktemp("serve-phi4"), model=ROOT / "tests" / "fixtures" / "phi4mm-tiny")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def open_server(tmp_path_factory):
    """A server that may fetch private (loopback) URLs."""
    s = Server(tmp_path_factory.mktemp("serve-open"), "--allow-private-urls")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    return server.client()


@pytest.fixture(scope="session")
def image_server():
    """http.server on 127.0.0.1 serving tests/fixtures/images."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(IMAGES))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
