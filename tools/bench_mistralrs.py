#!/usr/bin/env python3
"""Run `phive bench`'s workload through mistral.rs and write the same JSON (schema phive-bench/1).

The same filler prompt (the generator of crates/phive/src/bench/prompt.rs), cut to the same
number of tokens with the chat template included, the same number of decoded tokens (EOS is
ignored so every request decodes them all), optionally one request per image with a short
text, at concurrency 1. Times are taken on the client from the streamed chunks, as phive bench
takes them from the engine's events; the engine's own `usage` timings are kept under
`mistralrs_usage`.

    python3 -m venv /tmp/benchvenv2
    /tmp/benchvenv2/bin/pip install mistralrs==0.9.5 tokenizers matplotlib
    /tmp/benchvenv2/bin/python tools/bench_mistralrs.py -m /tmp/phi35-real --isq Q4K \
        --prompt-tokens 256 --decode-tokens 32 --json mistralrs.json --roofline-from phive.json

`--roofline-from` takes the measured peaks (and, for the same ISQ type, the weight bytes per
decode step) from a phive bench report so the "% of peak" figures are filled in too; without
it they are null. Peak RSS is this Python process's VmHWM (interpreter included).
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import resource
import sys
import time

WORDS = (
    "the keeper of a lighthouse counted waves and wrote them down every night while ships "
    "passed far beyond rocks under grey clouds with salt wind morning bread lamp oil stairs "
    "gulls harbour letters from mainland brother storm season quiet bright ledger numbers tide "
    "moon slowly returned north south island boat"
).split()
MASK = (1 << 64) - 1
SIMD_FLAGS = [
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
    "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "sve2", "i8mm",
]
IMAGE_QUESTION = "Describe this picture in one sentence."


def filler(variant, words):
    """The filler text of phive's `bench::prompt::filler`, word for word."""
    state = 0x9E3779B97F4A7C15 ^ ((variant * 0xA24BAED4963EE407) & MASK)
    parts = [f"Passage {variant}:"]
    for i in range(words):
        state = (state * 6364136223846793005 + 1442695040888963407) & MASK
        parts.append(" " + WORDS[(state >> 33) % len(WORDS)])
        if i % 12 == 11:
            parts.append(".")
    return "".join(parts)


def machine():
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    field = {}
    for line in info.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            field.setdefault(k.strip(), v.strip())
    present = (field.get("flags") or field.get("Features") or "").split()
    mem = 0
    if os.path.exists("/proc/meminfo"):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "model": field.get("model name") or field.get("Model") or "unknown",
        "flags": [f for f in SIMD_FLAGS if f in present],
        "threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": mem,
    }


def peak_rss_bytes():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def lm_params(model_dir):
    """Weight elements of the decoder projections and lm_head, from config.json (as phive counts)."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        return None
    c = json.load(open(path))
    c = c.get("text_config", c)
    h, i, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    hd = h // heads
    per_layer = h * (h + 2 * kv * hd) + h * h + h * 2 * i + i * h
    return layers * per_layer + vocab * h


def summary(values):
    if not values:
        return None
    v = sorted(values)
    rank = lambda p: v[round((len(v) - 1) * p)]  # nearest rank, as phive::bench::percentile
    return {"p50": rank(0.5), "p99": rank(0.99), "mean": sum(v) / len(v)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="local checkpoint folder (or Hub id)")
    ap.add_argument("--arch", default="phi3v", choices=["phi3v", "phi4mm"])
    ap.add_argument("--isq", help="in-situ quantization, e.g. Q4K (default: none)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--image", action="append", default=[], help="image path (repeatable)")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--roofline-from", help="a phive bench JSON whose peaks (and weight bytes) to use")
    a = ap.parse_args()
    if a.prompt_tokens < 1 or a.decode_tokens < 2:
        sys.exit("--prompt-tokens must be >= 1 and --decode-tokens >= 2")
    for img in a.image:
        if not os.path.isfile(img):
            sys.exit(f"image {img}: no such file")

    import mistralrs
    from mistralrs import ChatCompletionRequest, Runner, Which
    from tokenizers import Tokenizer

    # 0.9.5 calls it MultimodalPlain / MultimodalArchitecture; older wheels VisionPlain / VisionArchitecture.
    arch_enum = getattr(mistralrs, "MultimodalArchitecture", None) or getattr(mistralrs, "VisionArchitecture")
    plain = getattr(Which, "MultimodalPlain", None) or getattr(Which, "VisionPlain")
    arch = {"phi3v": arch_enum.Phi3V, "phi4mm": arch_enum.Phi4MM}[a.arch]

    started = time.perf_counter()
    runner = Runner(which=plain(model_id=a.model, arch=arch), in_situ_quant=a.isq, prefix_cache_n=0)
    load_seconds = time.perf_counter() - started
    tok_path = os.path.join(a.model, "tokenizer.json")
    tokenizer = Tokenizer.from_file(tok_path) if os.path.exists(tok_path) else Tokenizer.from_pretrained(a.model)

    def request(content, max_tokens):
        """Streams one request; returns (submit time, chunk times, last usage)."""
        req = ChatCompletionRequest(
            model="bench",
            messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
            ignore_eos=True,
        )
        t0 = time.perf_counter()
        times, usage = [], None
        for chunk in runner.send_chat_completion_request(req):
            # One streamed chunk per token. A random-weight checkpoint's tokens may decode to no
            # text (special or partial tokens), so count chunks, not text; the last chunk only
            # carries the finish reason.
            if chunk.choices and (chunk.choices[0].delta.content is not None or chunk.choices[0].finish_reason is None):
                times.append(time.perf_counter())
            if chunk.usage is not None:
                usage = chunk.usage
        return t0, times, usage

    # The chat template's own tokens: a short request's prompt count minus its text's.
    head = "Passage 1:"
    t0, times, usage = request(head, 2)  # the first request after load; also the warm-up
    first_request_ttft_s = times[0] - t0 if times else None
    overhead = usage.prompt_tokens - len(tokenizer.encode(head, add_special_tokens=False).ids)
    if a.prompt_tokens < usage.prompt_tokens:
        sys.exit(f"a prompt needs at least {usage.prompt_tokens} tokens here")
    ids = tokenizer.encode(filler(1000, a.prompt_tokens + 16), add_special_tokens=False).ids
    keep = max(1, a.prompt_tokens - overhead)
    for _ in range(16):
        text = tokenizer.decode(ids[:keep], skip_special_tokens=True)
        got = len(tokenizer.encode(text, add_special_tokens=False).ids) + overhead
        if got == a.prompt_tokens:
            break
        keep += a.prompt_tokens - got

    t0, times, usage = request(text, a.decode_tokens)
    if not times:
        sys.exit("mistral.rs returned no tokens")
    ttft = times[0] - t0
    prompt_tokens = usage.prompt_tokens if usage else a.prompt_tokens
    gaps = [(b - c) * 1e3 for c, b in zip(times, times[1:])]
    decode_span = times[-1] - times[0]
    aggregate = (len(times) - 1) / decode_span if decode_span > 0 else None
    level = {
        "concurrency": 1,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": usage.completion_tokens if usage else len(times),
        "ttft_s": summary([ttft]),
        "itl_ms": summary(gaps),
        "prefill_tok_s": prompt_tokens / ttft,
        "decode_tok_s_per_stream": usage.avg_compl_tok_per_sec if usage else aggregate,
        "decode_tok_s_aggregate": aggregate,
        "decode_gb_s": None,
        "decode_pct_of_peak": None,
        "prefill_gflop_s": None,
        "prefill_pct_of_peak": None,
        "mistralrs_usage": None
        if usage is None
        else {k: getattr(usage, k) for k in dir(usage) if not k.startswith("_") and not callable(getattr(usage, k))},
    }

    images = []
    for img in a.image:
        parts = [{"type": "image_url", "image_url": {"url": os.path.abspath(img)}}]
        # Both models' chat formats place an image with this tag; mistral.rs 0.9.5 requires it
        # for Phi-4-multimodal as well.
        question = "<|image_1|>\n" + IMAGE_QUESTION
        parts.append({"type": "text", "text": question})
        t0, times, usage = request(parts, 1)
        images.append({
            "path": img,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "image_tokens": None,
            "ttft_s": (times[0] if times else time.perf_counter()) - t0,
        })

    model = {
        "source": a.model,
        "architecture": a.arch,
        "isq": a.isq.upper() if a.isq else None,
        "lm_params": lm_params(a.model) if os.path.isdir(a.model) else None,
        "lm_weight_bytes": None,
    }
    peak = None
    if a.roofline_from:
        ref = json.load(open(a.roofline_from))
        peak = ref.get("peak")
        if (ref["model"].get("isq") or None) == model["isq"]:
            model["lm_weight_bytes"] = ref["model"].get("lm_weight_bytes")
        model["lm_params"] = model["lm_params"] or ref["model"].get("lm_params")
    if model["lm_weight_bytes"] and level["decode_tok_s_aggregate"]:
        level["decode_gb_s"] = level["decode_tok_s_aggregate"] * model["lm_weight_bytes"] / 1e9
    if model["lm_params"]:
        level["prefill_gflop_s"] = level["prefill_tok_s"] * 2 * model["lm_params"] / 1e9
    if peak:
        if level["decode_gb_s"] is not None:
            level["decode_pct_of_peak"] = 100 * level["decode_gb_s"] / peak["memory_read_gb_s"]
        if level["prefill_gflop_s"] is not None:
            level["prefill_pct_of_peak"] = 100 * level["prefill_gflop_s"] / peak["matmul_gflop_s"]

    report = {
        "schema": "phive-bench/1",
        "engine": {"name": "mistral.rs", "version": importlib.metadata.version("mistralrs"), "git": None},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "model": model,
        "workload": {
            "prompt_tokens": a.prompt_tokens,
            "decode_tokens": a.decode_tokens,
            "concurrency": [1],
            "images": a.image,
        },
        "load": {"seconds": load_seconds, "peak_rss_bytes": peak_rss_bytes(), "first_request_ttft_s": first_request_ttft_s},
        "peak": peak,
        "levels": [level],
        "images": images,
    }
    text = json.dumps(report, indent=2)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
        print(f"wrote {a.json}", file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    main()
