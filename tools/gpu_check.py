#!/usr/bin/env python3
"""The GPU check of a CUDA build of phive: golden answers on both tiny fixtures, then a benchmark
on a real-width Phi-3.5-vision checkpoint. Standard library only (plus numpy and Pillow for the
checkpoint generator), so it runs on a bare GPU machine with the binary from
scripts/build-cuda.sh; scripts/gpu-check.sh is the one command that runs it there.

    python3 tools/gpu_check.py --phive target/release/phive --device cuda --out OUT_DIR
    python3 tools/gpu_check.py --device cpu --bench-layers 2      # the same check on the CPU

Goldens: `phive serve --device DEVICE --dtype D` on each fixture answers every case of
tests/fixtures/goldens/*/generation.json (greedy, 16 tokens) through the OpenAI API, with its
images and audio sent as data URLs, in f32 and in bf16; each answer must equal the Hugging Face
reference text (computed in f32; the fixtures' top-2 logit gaps, 6 or more, leave bf16 room).
Benchmark: `phive bench --device DEVICE` on a real-width checkpoint made by
tools/make_fixtures.py (decode at 1, 8 and 64 concurrent streams, then time to first token with
one 1024x768 image). Writes goldens.json, bench_text.json, bench_image.json and a summary to
OUT_DIR, and exits non-zero when a golden answer differs.
"""

import argparse
import base64
import concurrent.futures
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def image_part(path: Path) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(path, "image/png")}}


def audio_part(path: Path) -> dict:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return {"type": "input_audio", "input_audio": {"data": encoded, "format": path.suffix.lstrip(".")}}


def phi3v_messages(case: dict) -> list:
    """The case's OpenAI messages, image names replaced by data URLs of the fixture images."""
    messages = json.loads(json.dumps(case["openai_messages"]))
    for message in messages:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part.get("type") == "image_url":
                    part.update(image_part(FIXTURES / "images" / part["image_url"]["url"]))
    return messages


def phi4mm_messages(case: dict) -> list:
    """Tagged text messages (`<|image_1|>`, `<|audio_1|>`) with the case's media as parts of the
    first user message, in order."""
    messages = []
    media = [image_part(ROOT / p) for p in case["images"]] + [audio_part(ROOT / p) for p in case["audios"]]
    for message in case["messages"]:
        content = message["content"]
        if message["role"] == "user" and media:
            content = media + [{"type": "text", "text": content}]
            media = []
        messages.append({"role": message["role"], "content": content})
    return messages


class Server:
    """`phive serve` on a free loopback port, for the length of a `with` block."""

    def __init__(self, phive: str, model: Path, device: str, dtype: str, log: Path):
        self.port = free_port()
        self.log = open(log, "w")
        cmd = [phive, "serve", "--device", device, "--dtype", dtype, "-p", str(self.port), "vision", "-m", str(model)]
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self):
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"phive serve exited with {self.process.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError("phive serve did not become healthy in 300 s")

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def chat(self, messages: list) -> dict:
        body = {"model": "default", "messages": messages, "max_tokens": 16, "temperature": 0}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            return {"error": f"HTTP {e.code}: {e.read().decode(errors='replace')[:500]}"}


def check_goldens(phive: str, device: str, dtype: str, out: Path) -> list:
    """Every golden case alone, then all of a fixture's cases at once (decode rows of different
    lengths and kinds in one batch): each answer must equal the reference's either way."""
    results = []
    for family, build in (("phi3v", phi3v_messages), ("phi4mm", phi4mm_messages)):
        goldens = json.loads((FIXTURES / "goldens" / family / "generation.json").read_text())
        cases = goldens["cases"]
        log = out / f"serve-{family}-{dtype}.log"

        def record(case: dict, reply: dict, seconds: float, mode: str) -> None:
            got = reply["choices"][0]["message"]["content"] if "choices" in reply else None
            results.append(
                {
                    "fixture": family,
                    "dtype": dtype,
                    "case": case["name"],
                    "mode": mode,
                    "ok": got == case["greedy_text"],
                    "want": case["greedy_text"],
                    "got": got if got is not None else reply.get("error"),
                    "seconds": round(seconds, 3),
                }
            )
            mark = "ok " if results[-1]["ok"] else "BAD"
            print(f"  {mark} {family}/{case['name']} in {dtype}, {mode} ({results[-1]['seconds']} s)", flush=True)

        with Server(phive, FIXTURES / f"{family}-tiny", device, dtype, log) as server:
            for case in cases:
                started = time.time()
                record(case, server.chat(build(case)), time.time() - started, "alone")
            started = time.time()
            with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
                replies = list(pool.map(lambda case: server.chat(build(case)), cases))
            for case, reply in zip(cases, replies):
                record(case, reply, time.time() - started, "batched")
    return results


def make_image(path: Path, width: int = 1024, height: int = 768) -> None:
    """An RGB gradient as a PNG, written with zlib alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\0" + bytes(v for x in range(width) for v in (x % 256, y % 256, (x + y) % 256)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def bench(phive: str, device: str, layers: int, out: Path, checkpoint: Path) -> None:
    if not (checkpoint / "config.json").exists():
        print(f"== generating a real-width checkpoint with {layers} LM layers into {checkpoint}", flush=True)
        subprocess.run(
            [sys.executable, str(ROOT / "tools" / "make_fixtures.py"), "--real-shape", str(checkpoint),
             "--layers", str(layers), "--tokenizer-from", str(FIXTURES / "phi3v-tiny")],
            check=True,
        )
    image = checkpoint / "bench_1024x768.png"
    if not image.exists():
        make_image(image)
    common = [phive, "bench", "-m", str(checkpoint), "--device", device, "--no-peak"]
    runs = (
        ("bench_text", ["--prompt-tokens", "128", "--decode-tokens", "64", "--concurrency", "1,8,64"]),
        ("bench_image", ["--image", str(image), "--decode-tokens", "16", "--concurrency", "1"]),
    )
    for name, args in runs:
        print(f"== phive bench ({name})", flush=True)
        cmd = common + args + ["--json", str(out / f"{name}.json")]
        with open(out / f"{name}.log", "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
        print((out / f"{name}.log").read_text()[-3000:], flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phive", default=str(ROOT / "target" / "release" / "phive"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="f32,bf16", help="language-model precisions the goldens run in")
    ap.add_argument("--out", default=None, help="folder for the results (default: a temporary one)")
    ap.add_argument("--bench-layers", type=int, default=32, help="LM layers of the benchmark checkpoint")
    ap.add_argument("--checkpoint", default=None, help="benchmark checkpoint folder (made if missing)")
    ap.add_argument("--skip-bench", action="store_true")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="phive-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)

    results = []
    for dtype in args.dtypes.split(","):
        print(f"== goldens on {args.device} in {dtype}", flush=True)
        results += check_goldens(args.phive, args.device, dtype, out)
    (out / "goldens.json").write_text(json.dumps(results, indent=1))
    failed = [r for r in results if not r["ok"]]
    for r in failed:
        print(f"  {r['fixture']}/{r['case']} in {r['dtype']}, {r['mode']}: want {r['want']!r}\n    got {r['got']!r}")
    print(f"== goldens: {len(results) - len(failed)}/{len(results)} answers equal the reference", flush=True)

    if not args.skip_bench:
        checkpoint = Path(args.checkpoint or Path(tempfile.gettempdir()) / f"phi35-real-{args.bench_layers}")
        bench(args.phive, args.device, args.bench_layers, out, checkpoint)
    print(f"== results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
