"""Drives three `phive serve` replicas behind nginx (set up by scripts/test-replicas.sh): starts
the replicas, runs one client thread per session against nginx, sends SIGTERM to the replica
that serves the most sessions, restarts it, and checks that

- no request failed (no 5xx, no connection error, no stream cut short), in particular none
  sent after the drain began, and every request in flight on the drained replica finished;
- the drained replica exited 0 within its --shutdown-timeout;
- each session stayed on one replica while that replica was up: sessions of the other
  replicas never moved, the drained replica's sessions moved together, and once nginx had
  tried the restarted replica again (within its fail_timeout + 3 s) they all came back;
- the replicas' /metrics agree: each kept replica encoded each of its sessions' images once
  (media cache misses = sessions it served) and answered exactly the requests routed to it.

Standard library only. Prints a summary and writes it as JSON with --results.
"""

import argparse
import base64
import http.client
import json
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG: each session sends its own picture, so caches tell sessions apart."""
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Replica:
    """One `phive serve` in its own network namespace."""

    def __init__(self, args, namespace: str, address: str, logdir: Path):
        self.args, self.namespace, self.address = args, namespace, address
        self.base = f"http://{address}:{args.replica_port}"
        self.log_path = logdir / f"{namespace}.log"
        self.process = None

    def start(self) -> None:
        log = open(self.log_path, "a")
        command = [
            "ip", "netns", "exec", self.namespace, self.args.phive, "serve", "vision",
            "--host", self.address, "--port", str(self.args.replica_port), "-m", self.args.model,
            "--served-model-name", "tiny", "--max-num-seqs", "8", "--kv-cache-mem", "0.1",
            "--shutdown-timeout", str(self.args.shutdown_timeout),
        ]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def get(self, path: str, timeout: float = 2) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"{self.namespace} exited early:\n{self.log_path.read_text()}")
            try:
                if self.get("/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit(f"{self.namespace} never became ready:\n{self.log_path.read_text()}")


class Client(threading.Thread):
    """One session: sequential chat requests about its own image, alternating streamed and
    whole answers, through nginx."""

    def __init__(self, index: int, args, stop: threading.Event, records: list):
        super().__init__(daemon=True)
        self.session = f"session-{index}"
        self.args, self.stop, self.records = args, stop, records
        image = png(48, 48, ((index * 53) % 256, (index * 101) % 256, (index * 197) % 256))
        self.image_url = "data:image/png;base64," + base64.b64encode(image).decode()

    def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            self.records.append(self.request(stream=turn % 2 == 0))
            turn += 1

    def request(self, stream: bool) -> dict:
        body = json.dumps({
            "model": "tiny", "max_tokens": self.args.max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": self.image_url}},
                {"type": "text", "text": "Describe the image."}]}],
        })
        record = {"session": self.session, "stream": stream, "t0": time.time(), "status": None,
                  "error": None, "replica": None, "retried": False, "complete": False}
        host, port = self.args.nginx.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            connection.request("POST", "/v1/chat/completions", body=body, headers={
                "Content-Type": "application/json", "X-Session-Id": self.session})
            response = connection.getresponse()
            record["status"] = response.status
            tried = (response.getheader("X-Phive-Replica") or "").split(", ")
            record["replica"], record["retried"] = tried[-1], len(tried) > 1
            text = response.read().decode()
            if response.status != 200:
                record["error"] = text[:300]
            elif stream:
                record["complete"] = text.rstrip().endswith("data: [DONE]") and '"finish_reason"' in text
            else:
                record["complete"] = json.loads(text)["choices"][0]["finish_reason"] is not None
        except (OSError, http.client.HTTPException, ValueError) as e:
            record["error"] = f"{type(e).__name__}: {e}"
        finally:
            connection.close()
        record["t1"] = time.time()
        return record


def sessions_by_replica(records: list) -> dict:
    routes: dict = {}
    for r in records:
        routes.setdefault(r["session"], set()).add(r["replica"])
    return routes


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phive", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--nginx", required=True, help="HOST:PORT of nginx")
    parser.add_argument("--replica", action="append", required=True, help="NAMESPACE=ADDRESS")
    parser.add_argument("--replica-port", type=int, default=8000)
    parser.add_argument("--fail-timeout", type=float, default=5, help="nginx's fail_timeout")
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--shutdown-timeout", type=float, default=30)
    parser.add_argument("--logdir", type=Path, required=True)
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()

    replicas = [Replica(args, *spec.split("="), args.logdir) for spec in args.replica]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.wait_ready()
    by_address = {f"{r.address}:{args.replica_port}": r for r in replicas}

    stop, records = threading.Event(), []
    clients = [Client(i, args, stop, records) for i in range(args.clients)]
    start = time.time()
    for client in clients:
        client.start()

    # Phase A: everyone up. Then drain the replica that serves the most sessions.
    time.sleep(args.duration * 0.3)
    drain_at = time.time()
    phase_a = [r for r in records if r["t0"] < drain_at and r["replica"]]
    load: dict = {}
    for session, replica in ((r["session"], r["replica"]) for r in phase_a):
        load.setdefault(replica, set()).add(session)
    victim_address = max(load, key=lambda a: len(load[a]))
    victim = by_address[victim_address]
    victim.process.send_signal(signal.SIGTERM)
    # Requests that reached the victim before it handled the signal are admitted (and must
    # finish); from the moment it reports not ready, none may land there.
    while True:
        try:
            if victim.get("/health/ready", timeout=1)[0] == 503:
                break
        except OSError:
            break
        time.sleep(0.01)
    refusing_at = time.time()
    exit_code = victim.process.wait(timeout=args.shutdown_timeout + 10)
    drain_seconds = time.time() - drain_at

    # Phase B: two replicas. Then restart the drained one.
    time.sleep(max(0.0, start + args.duration * 0.55 - time.time()))
    victim.start()
    victim.wait_ready()
    back_at = time.time()

    # Phase C: all three again, once nginx has tried the returning replica (fail_timeout).
    time.sleep(max(0.0, start + args.duration - time.time()))
    stop.set()
    for client in clients:
        client.join(timeout=150)
    elapsed = time.time() - start

    failures = [r for r in records if r["status"] != 200 or not r["complete"]]
    after_drain = [r for r in records if r["t0"] >= drain_at]
    in_flight = [r for r in records if r["replica"] == victim_address and r["t0"] < refusing_at and r["t1"] > drain_at]
    routes_a = sessions_by_replica([r for r in records if r["t0"] < drain_at])
    victim_sessions = sorted(s for s, reps in routes_a.items() if reps == {victim_address})
    kept_sessions = sorted(set(routes_a) - set(victim_sessions))
    routes_b = sessions_by_replica([r for r in records if refusing_at <= r["t0"] and r["t1"] < back_at])
    # nginx rests a refused replica for fail_timeout on its whole-second clock, so it tries the
    # restarted one again up to fail_timeout + 1 s after its last refusal (which may fall just
    # before the restart). That first request is a trial: the others follow once it succeeded.
    home_again = [r for r in records if r["replica"] == victim_address and r["t0"] >= back_at]
    trial = min(home_again, key=lambda r: r["t0"]) if home_again else None
    live_at = trial["t1"] if trial else float("inf")
    routes_all = sessions_by_replica(records)

    problems = []
    if failures:
        problems.append(f"{len(failures)} failed requests, e.g. {failures[:3]}")
    if exit_code != 0:
        problems.append(f"the drained replica exited with {exit_code}")
    if not in_flight:
        problems.append("no request was in flight on the drained replica at SIGTERM (nothing tested)")
    problems += [f"{s} used several replicas before the drain: {reps}" for s, reps in routes_a.items() if len(reps) != 1]
    problems += [f"{s} (kept replica) moved: {routes_all[s]}" for s in kept_sessions if len(routes_all[s]) != 1]
    for s in victim_sessions:
        if len(routes_b.get(s, set())) != 1 or victim_address in routes_b.get(s, set()):
            problems.append(f"{s} was not on one other replica while its own was down: {routes_b.get(s)}")
        later = {r["replica"] for r in records if r["session"] == s and r["t0"] > live_at}
        if later != {victim_address}:
            problems.append(f"{s} did not return to its replica once nginx used it again: {later}")
    if trial is None or trial["t0"] > back_at + args.fail_timeout + 3:
        late = f"{trial['t0'] - back_at:.1f} s" if trial else "never"
        problems.append(f"nginx sent nothing to the restarted replica within fail_timeout + 3 s ({late})")

    # The kept replicas' own counters agree with what the clients saw.
    replica_metrics = {}
    for address, replica in by_address.items():
        if replica is victim:
            continue
        text = replica.get("/metrics")[1]
        served = [r for r in records if r["replica"] == address]
        seen = {r["session"] for r in served}
        numbers = {
            "requests_200": metric(text, 'phive_http_requests_total{route="/v1/chat/completions",method="POST",status="200"}'),
            "media_cache_misses": metric(text, "phive_media_cache_misses_total"),
            "media_cache_hits": metric(text, "phive_media_cache_hits_total"),
            "client_requests": len(served),
            "client_sessions": len(seen),
        }
        replica_metrics[replica.namespace] = numbers
        if numbers["requests_200"] != len(served):
            problems.append(f"{replica.namespace} answered {numbers['requests_200']} chats, clients saw {len(served)}")
        if numbers["media_cache_misses"] != len(seen):
            problems.append(f"{replica.namespace} encoded {numbers['media_cache_misses']} images for {len(seen)} sessions")
        if numbers["media_cache_hits"] != len(served) - len(seen):
            problems.append(f"{replica.namespace}: {numbers['media_cache_hits']} cache hits, expected {len(served) - len(seen)}")

    latencies = sorted(r["t1"] - r["t0"] for r in records if r["status"] == 200)
    summary = {
        "duration_s": round(elapsed, 1),
        "clients": args.clients,
        "requests": len(records),
        "requests_per_s": round(len(records) / elapsed, 2),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p95_s": round(latencies[int(len(latencies) * 0.95) - 1], 3) if latencies else None,
        "failed": len(failures),
        "sent_after_drain_began": len(after_drain),
        "failed_after_drain_began": len([r for r in failures if r["t0"] >= drain_at]),
        "retried_on_another_replica": len([r for r in records if r["retried"]]),
        "in_flight_on_drained_replica": len(in_flight),
        "in_flight_completed": len([r for r in in_flight if r["status"] == 200 and r["complete"]]),
        "drained_replica": victim.namespace,
        "drained_replica_exit_code": exit_code,
        "sigterm_to_not_ready_s": round(refusing_at - drain_at, 3),
        "sigterm_to_exit_s": round(drain_seconds, 2),
        "sessions_moved_and_returned": len(victim_sessions),
        "sessions_never_moved": len(kept_sessions),
        "kept_replicas_metrics": replica_metrics,
        "problems": problems,
    }
    print(json.dumps(summary, indent=2))
    if args.results:
        args.results.write_text(json.dumps(summary, indent=2) + "\n")
    for replica in replicas:
        if replica.process.poll() is None:
            replica.process.send_signal(signal.SIGTERM)
            replica.process.wait(timeout=args.shutdown_timeout + 10)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
