"""Soak test: many concurrent clients against a running `phive serve` (loopback only).

Each client loops until the time is up, choosing at random: text chats (streamed or not,
n = 1 or 2), chats with one or two images (base64 or http from a local file server), text
completions, bad requests (expect 400), wrong API keys (expect 401) and streams it abandons
after the first chunks. Pass: no 5xx, no connection errors, every accepted request completed
(or was abandoned by its client), active sequences back to 0 afterwards, and resident memory at
the end within 10% of resident memory after the warm-up. Prints a JSON summary; exit 1 on failure.

Usage: python tools/soak.py --port P --key KEY --pid SERVER_PID --image-base URL --duration S
"""

import argparse
import base64
import collections
import http.client
import json
import random
import sys
import threading
import time
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "images"
IMAGE_NAMES = ["gray_400x300.png", "wide_1000x600.png"]


def rss_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Soak:
    def __init__(self, args):
        self.args = args
        self.counts = collections.Counter()
        self.failures = []
        self.lock = threading.Lock()
        self.data_urls = [
            "data:image/png;base64," + base64.b64encode((IMAGES / n).read_bytes()).decode() for n in IMAGE_NAMES
        ]

    def record(self, kind, ok, detail=""):
        with self.lock:
            self.counts[kind] += 1
            if not ok:
                self.failures.append(f"{kind}: {detail}"[:500])

    def image(self, rng):
        if rng.random() < 0.5:
            return rng.choice(self.data_urls)
        return f"{self.args.image_base}/{rng.choice(IMAGE_NAMES)}"

    def request(self, method, path, body=None, key=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.args.port, timeout=300)
        headers = {"Authorization": f"Bearer {key or self.args.key}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        return conn, conn.getresponse()

    def one(self, rng):
        roll = rng.random()
        stream = rng.random() < 0.5
        body = {"model": "default", "max_tokens": rng.randint(4, 24), "n": rng.choice([1, 1, 2]),
                "temperature": rng.choice([0, 0.8]), "seed": rng.randint(0, 1000), "stream": stream}
        if roll < 0.10:
            kind, expect = "bad_request", 400
            body.update(messages=[{"role": "user", "content": "Hi"}], temperature=rng.choice([-1, 7, "hot"]))
        elif roll < 0.15:
            kind, expect = "wrong_key", 401
            body.update(messages=[{"role": "user", "content": "Hi"}])
        elif roll < 0.25:
            kind, expect = "abandoned_stream", 200
            body.update(messages=[{"role": "user", "content": "Write a very long story."}], stream=True,
                        max_tokens=400)
        elif roll < 0.45:
            kind, expect = "one_image", 200
            body.update(messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": self.image(rng)}},
                {"type": "text", "text": "Describe the image."}]}])
        elif roll < 0.55:
            kind, expect = "two_images", 200
            body.update(messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": self.image(rng)}},
                {"type": "image_url", "image_url": {"url": self.image(rng)}},
                {"type": "text", "text": "Compare the images."}]}])
        elif roll < 0.65:
            kind, expect = "completion", 200
            body = {k: v for k, v in body.items() if k != "messages"}
            body["prompt"] = "Once upon a time"
        else:
            kind, expect = "text", 200
            body.update(messages=[{"role": "user", "content": rng.choice(["Hi", "What is 2+2?", "Tell me a joke."])}])
        path = "/v1/completions" if kind == "completion" else "/v1/chat/completions"
        key = "sk-wrong" if kind == "wrong_key" else None
        try:
            conn, response = self.request("POST", path, body, key)
            try:
                if response.status != expect:
                    self.record(kind, False, f"status {response.status}: {response.read()[:300]!r}")
                    return
                if expect != 200:
                    error = json.loads(response.read())["error"]
                    self.record(kind, set(error) == {"message", "type", "param", "code"}, str(error))
                elif kind == "abandoned_stream":
                    for _ in range(3):
                        response.readline()
                    self.record(kind, True)
                elif body.get("stream"):
                    text = response.read().decode()
                    self.record(kind, text.rstrip().endswith("data: [DONE]") and '"error"' not in text, text[-300:])
                else:
                    reply = json.loads(response.read())
                    done = len(reply["choices"]) == body["n"] and all(c["finish_reason"] for c in reply["choices"])
                    self.record(kind, done, json.dumps(reply)[:300])
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            self.record(kind, False, f"connection error: {e!r}")

    def client(self, index, deadline):
        rng = random.Random(index)
        while time.time() < deadline:
            self.one(rng)

    def metric(self, name):
        conn, response = self.request("GET", "/metrics")
        text = response.read().decode()
        conn.close()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise RuntimeError(f"no metric {name}")

    def run(self):
        start = time.time()
        deadline = start + self.args.duration
        threads = [threading.Thread(target=self.client, args=(i, deadline), daemon=True)
                   for i in range(self.args.clients)]
        for t in threads:
            t.start()
        warmup = min(60.0, self.args.duration / 3)
        time.sleep(warmup)
        rss_warm = rss_bytes(self.args.pid)
        for t in threads:
            t.join()
        settle = time.time() + 60
        while self.metric("phive_active_sequences") != 0 and time.time() < settle:
            time.sleep(0.2)
        active = self.metric("phive_active_sequences")
        rss_end = rss_bytes(self.args.pid)
        growth = rss_end / rss_warm - 1
        summary = {
            "duration_s": round(time.time() - start, 1), "clients": self.args.clients,
            "requests": sum(self.counts.values()), "by_kind": dict(self.counts),
            "failures": len(self.failures), "first_failures": self.failures[:10],
            "active_sequences_after": active,
            "rss_after_warmup_mb": round(rss_warm / 1e6, 1), "rss_end_mb": round(rss_end / 1e6, 1),
            "rss_growth": round(growth, 3),
        }
        print(json.dumps(summary, indent=2))
        return not self.failures and active == 0 and growth <= 0.10


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--image-base", required=True)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--clients", type=int, default=64)
    sys.exit(0 if Soak(parser.parse_args()).run() else 1)


if __name__ == "__main__":
    main()
