#!/usr/bin/env python3
"""Independent PyTorch reference for Phi-3.5-vision, following the Hugging Face Hub remote code of
microsoft/Phi-3.5-vision-instruct step by step (no transformers, no trust_remote_code):

  image_processing_phi3_v.py  HD_transform, padding_336, Phi3VImageProcessor.preprocess
  processing_phi3_v.py        Phi3VProcessor._convert_images_texts_to_inputs
  image_embedding_phi3_v.py   Phi3ImageEmbedding.forward / get_img_features / hd_feature_transform /
                              reshape_hd_patches_2x2merge / add_image_newline
  modeling_phi3_v.py          Phi3RMSNorm, Phi3SuScaledRotaryEmbedding, rotate_half,
                              apply_rotary_pos_emb, Phi3Attention (eager), Phi3MLP,
                              Phi3DecoderLayer, Phi3VModel, Phi3VForCausalLM (+ DynamicCache)
  transformers CLIPVisionModel (modeling_clip.py): CLIPVisionEmbeddings, CLIPAttention (eager),
                              CLIPMLP, CLIPEncoderLayer, CLIPEncoder, CLIPVisionTransformer

Every hard-coded CLIP-L number of the remote code (1024, 576, 24 layers) is read from the
checkpoint's config (`vision_config`, phive's convention; CLIP-L/14-336 when absent).
Everything runs in float32 (bf16 weights are upcast).

Usage:
  tools/.venv/bin/python tools/reference_phi3v.py [--model tests/fixtures/phi3v-tiny]
      [--out tests/fixtures/goldens/phi3v] [--check-only]
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "tests" / "fixtures" / "images"
MAX_INPUT_ID = int(1e9)  # image_embedding_phi3_v.py: MAX_INPUT_ID
EOS_IDS = (32000, 32001, 32007)

torch.set_grad_enabled(False)
torch.manual_seed(0)

# Images whose full pixel_values (global + real sub-crops) are stored; the others store the HD canvas
# (lossless PNG) and the global crop only, to keep the committed goldens small.
FULL_PIXEL_IMAGES = {"wide_1000x600.png", "portrait_480x640.png", "odd_333x777.png",
                     "banner_1600x120.png"}


# ==================================================================================================
# image_processing_phi3_v.py
# ==================================================================================================

def padding_336(b: Image.Image) -> Image.Image:
    # image_processing_phi3_v.py: padding_336 — pad the HEIGHT up to a multiple of 336, centred
    # (top = floor((tar-h)/2), the remainder at the bottom), white fill.
    width, height = b.size
    tar = int(np.ceil(height / 336) * 336)
    top_padding = int((tar - height) / 2)
    bottom_padding = tar - height - top_padding
    left_padding = 0
    right_padding = 0
    return torchvision.transforms.functional.pad(
        b, [left_padding, top_padding, right_padding, bottom_padding], fill=[255, 255, 255])


def hd_transform(img: Image.Image, hd_num: int) -> tuple[Image.Image, dict]:
    # image_processing_phi3_v.py: HD_transform
    width, height = img.size
    trans = False
    if width < height:
        # portrait: PIL TRANSPOSE (swap axes, not a rotation), process as landscape, transpose back
        img = img.transpose(Image.TRANSPOSE)
        trans = True
        width, height = img.size
    ratio = width / height
    scale = 1
    while scale * np.ceil(scale / ratio) <= hd_num:
        scale += 1
    scale -= 1
    new_w = int(scale * 336)
    new_h = int(new_w / ratio)  # f64 division, then truncation toward zero
    # torchvision resize on a PIL image == PIL Image.resize((new_w, new_h), BILINEAR) (antialiased)
    img = torchvision.transforms.functional.resize(img, [new_h, new_w])
    img = padding_336(img)
    if trans:
        img = img.transpose(Image.TRANSPOSE)
    info = {"transposed": trans, "scale": scale,
            # size of the resized image before padding, in the ORIGINAL orientation, [w, h]
            "resized_size": [new_h, new_w] if trans else [new_w, new_h]}
    return img, info


def convert_to_rgb(image: Image.Image) -> Image.Image:
    # transformers.image_transforms.convert_to_rgb (the generic one the Phi-3-V processor imports):
    # plain PIL convert("RGB") — RGBA alpha is DROPPED, not composited on white.
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def preprocess_image(image: Image.Image, num_crops: int, mean, std) -> dict:
    # image_processing_phi3_v.py: Phi3VImageProcessor.preprocess, for one image
    image = convert_to_rgb(image)                     # do_convert_rgb
    image = image.convert("RGB")                      # "convert to RGB first"
    elem, info = hd_transform(image, hd_num=num_crops)
    img_processor = torchvision.transforms.Compose([
        torchvision.transforms.ToTensor(),            # u8 HWC -> f32 CHW / 255
        torchvision.transforms.Normalize(mean, std),
    ])
    hd_image = img_processor(elem)
    # global view: bicubic (align_corners=False, no antialias) on the NORMALISED HD tensor
    global_image = F.interpolate(hd_image.unsqueeze(0).float(), size=(336, 336), mode="bicubic").to(hd_image.dtype)
    h, w = hd_image.size(1), hd_image.size(2)
    num_img_tokens = int((h // 336 * w // 336 + 1) * 144 + 1 + (h // 336 + 1) * 12)
    # (1, 3, h//336, 336, w//336, 336) -> (1, h//336, w//336, 3, 336, 336): row-major crops
    crops = hd_image.reshape(1, 3, h // 336, 336, w // 336, 336).permute(0, 2, 4, 1, 3, 5) \
                    .reshape(-1, 3, 336, 336).contiguous()
    real = torch.cat([global_image, crops], dim=0)
    # pad_to_max_num_crops_tensor: zeros up to num_crops + 1
    padded = real
    if real.shape[0] < num_crops + 1:
        padded = torch.cat([real, torch.zeros(num_crops + 1 - real.shape[0], 3, 336, 336)], dim=0)
    return {"pixel_values": padded, "real_crops": real, "image_size": [h, w],
            "num_img_tokens": num_img_tokens, "hd_pil": elem, "info": info}


# ==================================================================================================
# processing_phi3_v.py
# ==================================================================================================

def convert_images_texts_to_inputs(tok: Tokenizer, text: str, num_img_tokens: list[int]) -> list[int]:
    # processing_phi3_v.py: Phi3VProcessor._convert_images_texts_to_inputs
    if not num_img_tokens:
        # text only: the whole prompt through the tokenizer (add_special_tokens=True)
        return tok.encode(text, add_special_tokens=True).ids
    pattern = r"<\|image_\d+\|>"
    # EACH chunk is tokenized with add_special_tokens=True, so each chunk gets its own <s>
    prompt_chunks = [tok.encode(chunk, add_special_tokens=True).ids for chunk in re.split(pattern, text)]
    image_tags = re.findall(pattern, text)
    image_ids = [int(s.split("|")[1].split("_")[-1]) for s in image_tags]
    unique_image_ids = sorted(set(image_ids))
    assert unique_image_ids == list(range(1, len(unique_image_ids) + 1))
    assert len(unique_image_ids) == len(num_img_tokens)
    image_ids_pad = [[-iid] * num_img_tokens[iid - 1] for iid in image_ids]
    if len(prompt_chunks) > len(image_ids_pad):
        image_ids_pad.append([])
    input_ids = []
    for chunk, pad in zip(prompt_chunks, image_ids_pad):
        input_ids.extend(chunk)   # offset = 0: nothing stripped
        input_ids.extend(pad)
    return input_ids


def render_chat(template: str, messages: list[dict], special: dict) -> str:
    # transformers apply_chat_template: ImmutableSandboxedEnvironment(trim_blocks, lstrip_blocks)
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                      extensions=[jinja2.ext.loopcontrols])

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **special)


# ==================================================================================================
# transformers CLIPVisionModel (eager), parameterised by vision_config
# ==================================================================================================

class Clip:
    def __init__(self, w: dict, prefix: str, vc: dict):
        self.w, self.p, self.vc = w, prefix, vc
        self.heads = vc["num_attention_heads"]
        self.eps = vc["layer_norm_eps"]

    def g(self, name):
        return self.w[self.p + name]

    def ln(self, x, name):
        return F.layer_norm(x, (x.shape[-1],), self.g(name + ".weight"), self.g(name + ".bias"), self.eps)

    def lin(self, x, name):
        return F.linear(x, self.g(name + ".weight"), self.g(name + ".bias"))

    def hidden_states(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        # CLIPVisionEmbeddings.forward
        B = pixel_values.shape[0]
        patch = F.conv2d(pixel_values, self.g("embeddings.patch_embedding.weight"),
                         stride=self.vc["patch_size"])               # no bias
        patch = patch.flatten(2).transpose(1, 2)                      # [B, 576, C]
        cls = self.g("embeddings.class_embedding").expand(B, 1, -1)
        x = torch.cat([cls, patch], dim=1)
        x = x + self.g("embeddings.position_embedding.weight")[None, : x.shape[1]]
        # CLIPVisionTransformer: pre_layrnorm, then the encoder; hidden_states[0] = encoder input
        x = self.ln(x, "pre_layrnorm")
        hs = [x]
        C = x.shape[-1]
        hd = C // self.heads
        for j in range(self.vc["num_hidden_layers"]):
            e = f"encoder.layers.{j}."
            # CLIPEncoderLayer: x + attn(LN1 x); x + mlp(LN2 x)
            r = x
            y = self.ln(x, e + "layer_norm1")
            q = self.lin(y, e + "self_attn.q_proj").view(B, -1, self.heads, hd).transpose(1, 2)
            k = self.lin(y, e + "self_attn.k_proj").view(B, -1, self.heads, hd).transpose(1, 2)
            v = self.lin(y, e + "self_attn.v_proj").view(B, -1, self.heads, hd).transpose(1, 2)
            att = torch.matmul(q, k.transpose(2, 3)) * (hd ** -0.5)   # no mask (vision tower)
            att = torch.softmax(att, dim=-1, dtype=torch.float32)
            o = torch.matmul(att, v).transpose(1, 2).reshape(B, -1, C)
            x = r + self.lin(o, e + "self_attn.out_proj")
            r = x
            y = self.ln(x, e + "layer_norm2")
            y = self.lin(y, e + "mlp.fc1")
            y = y * torch.sigmoid(1.702 * y)                          # quick_gelu
            x = r + self.lin(y, e + "mlp.fc2")
            hs.append(x)
        # post_layernorm only touches the pooled CLS output, which Phi-3-V never uses
        return hs


# ==================================================================================================
# image_embedding_phi3_v.py
# ==================================================================================================

class ImageEmbedding:
    def __init__(self, w: dict, cfg: dict, vc: dict):
        self.w = w
        self.cfg = cfg
        p = "model.vision_embed_tokens."
        self.p = p
        self.clip = Clip(w, p + "img_processor.vision_model.", vc)
        self.image_dim_out = cfg["img_processor"]["image_dim_out"]
        self.layer_idx = cfg["img_processor"].get("layer_idx", -2)
        self.type_feature = cfg["img_processor"].get("type_feature", "patch")
        assert cfg["embd_layer"]["hd_transform_order"] == "sub_glb"
        self.glb_GN = w[p + "glb_GN"]
        self.sub_GN = w[p + "sub_GN"]
        self.n_patches = (vc["image_size"] // vc["patch_size"]) ** 2

    def get_img_features(self, img_embeds):
        # Phi3ImageEmbedding.get_img_features: hidden_states[layer_idx] (-2: penultimate layer,
        # hidden_states[0] being the embeddings after pre_layrnorm), drop CLS for "patch"
        hs = self.clip.hidden_states(img_embeds)
        img_feature = hs[self.layer_idx]
        assert self.type_feature == "patch"
        return img_feature[:, 1:]

    def reshape_hd_patches_2x2merge(self, image_features, h_crop, w_crop):
        # Phi3ImageEmbedding.reshape_hd_patches_2x2merge
        N, L, C = image_features.shape
        assert L == self.n_patches and C == self.image_dim_out and N % (h_crop * w_crop) == 0
        num_images = N // (h_crop * w_crop)
        H = int(L ** 0.5)
        return (image_features.reshape(N, H, H, C)
                .reshape(N, H // 2, 2, H // 2, 2, C)
                .permute(0, 1, 3, 2, 4, 5)              # N, 12, 12, 2, 2, C
                .reshape(N, -1, 4 * C)                  # N, 144, 4C  ([r0c0, r0c1, r1c0, r1c1])
                .reshape(num_images, h_crop, w_crop, H // 2, H // 2, -1)
                .permute(0, 1, 3, 2, 4, 5)              # n, h_crop, 12, w_crop, 12, 4C
                .reshape(num_images, h_crop * H // 2, w_crop * H // 2, 4 * C))

    def add_image_newline(self, image_features_hd):
        # Phi3ImageEmbedding.add_image_newline: sub_GN appended at the end of every row
        num_images, h, w, hid_dim = image_features_hd.shape
        newline = self.sub_GN.expand(num_images, h, -1, -1)
        return torch.cat([image_features_hd, newline], dim=2).reshape(num_images, -1, hid_dim)

    def img_projection(self, x):
        # projection_cls "mlp" with HD: Linear(4C -> H), GELU (exact erf), Linear(H -> H)
        p = self.p + "img_projection."
        x = F.linear(x, self.w[p + "0.weight"], self.w[p + "0.bias"])
        x = F.gelu(x)
        return F.linear(x, self.w[p + "2.weight"], self.w[p + "2.bias"])

    def hd_feature_transform(self, image_features, image_sizes):
        # Phi3ImageEmbedding.hd_feature_transform (sub_glb)
        global_image_features = image_features[:, 0]
        global_hd = self.reshape_hd_patches_2x2merge(global_image_features, 1, 1)
        global_hd_newline = self.add_image_newline(global_hd)
        all_image_embeddings = []
        for i, (h, w) in enumerate(image_sizes):
            h_crop, w_crop = h // 336, w // 336
            num_crops = h_crop * w_crop
            sub = image_features[i, 1: 1 + num_crops]         # padded crops dropped
            sub_hd = self.reshape_hd_patches_2x2merge(sub, h_crop, w_crop)
            sub_hd_newline = self.add_image_newline(sub_hd)
            all_image_embeddings.extend([sub_hd_newline.squeeze(0), self.glb_GN.squeeze(0),
                                         global_hd_newline[i]])
        return self.img_projection(torch.cat(all_image_embeddings, dim=0))

    def forward(self, input_ids, wte, pixel_values, image_sizes):
        # Phi3ImageEmbedding.forward
        positions = torch.nonzero((input_ids < 0) & (input_ids > -MAX_INPUT_ID), as_tuple=True)
        has_image = len(positions[0].tolist()) > 0
        ids = input_ids.clamp_min(0).clamp_max(self.cfg["vocab_size"])
        hidden_states = F.embedding(ids, wte)
        extras = {}
        if has_image:
            num_images, num_crops, c, h, w = pixel_values.shape
            assert c == 3 and h == w == 336
            img_features = self.get_img_features(pixel_values.flatten(0, 1)).reshape(
                num_images, num_crops, -1, self.image_dim_out)
            proj = self.hd_feature_transform(img_features, image_sizes)
            # index_put in row-major order of the placeholder positions
            hidden_states = hidden_states.index_put(positions, proj, accumulate=False)
            extras = {"image_embeds": proj, "img_features": img_features}
        return hidden_states, extras


# ==================================================================================================
# modeling_phi3_v.py
# ==================================================================================================

class Phi3V:
    def __init__(self, model_dir: Path):
        self.cfg = json.loads((model_dir / "config.json").read_text())
        cfg = self.cfg
        vc = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                  image_size=336, patch_size=14, num_channels=3, hidden_act="quick_gelu",
                  layer_norm_eps=1e-5)
        vc.update(cfg.get("vision_config", {}))
        self.vc = vc
        index = json.loads((model_dir / "model.safetensors.index.json").read_text())
        w = {}
        for f in sorted(set(index["weight_map"].values())):
            for k, v in load_file(str(model_dir / f)).items():
                w[k] = v.to(torch.float32)
        assert set(w) == set(index["weight_map"]), "index / shard mismatch"
        self.w = w
        self.H = cfg["hidden_size"]
        self.nh = cfg["num_attention_heads"]
        self.nkv = cfg["num_key_value_heads"]
        self.hd = self.H // self.nh
        self.eps = cfg["rms_norm_eps"]
        self.img = ImageEmbedding(w, cfg, vc)
        rs = cfg["rope_scaling"]
        assert rs["type"] in ("su", "longrope")
        self.short_factor = torch.tensor(rs["short_factor"], dtype=torch.float32)
        self.long_factor = torch.tensor(rs["long_factor"], dtype=torch.float32)
        self.orig_max = cfg["original_max_position_embeddings"]
        self.max_pos = cfg["max_position_embeddings"]
        self.base = cfg["rope_theta"]

    def rms(self, x, name):
        # Phi3RMSNorm (float32 variance, eps from config)
        var = x.pow(2).mean(-1, keepdim=True)
        return self.w[name] * (x * torch.rsqrt(var + self.eps))

    def rotary(self, position_ids):
        # Phi3SuScaledRotaryEmbedding.forward: factors chosen from max(position_ids)+1 of THIS call
        seq_len = int(torch.max(position_ids)) + 1
        ext = self.long_factor if seq_len > self.orig_max else self.short_factor
        inv_freq_shape = torch.arange(0, self.hd, 2, dtype=torch.int64).float() / self.hd
        inv_freq = 1.0 / (ext * self.base ** inv_freq_shape)
        freqs = (inv_freq[None, :, None] @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        scale = self.max_pos / self.orig_max
        scaling_factor = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(self.orig_max))
        return emb.cos() * scaling_factor, emb.sin() * scaling_factor, seq_len > self.orig_max

    @staticmethod
    def rotate_half(x):
        x1 = x[..., : x.shape[-1] // 2]
        x2 = x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    def layer(self, i, x, cos, sin, cache, causal):
        p = f"model.layers.{i}."
        B, T, _ = x.shape
        r = x
        y = self.rms(x, p + "input_layernorm.weight")
        # Phi3Attention.forward (eager)
        qkv = F.linear(y, self.w[p + "self_attn.qkv_proj.weight"])
        qp = self.nh * self.hd
        kp = self.nkv * self.hd
        q = qkv[..., :qp].view(B, T, self.nh, self.hd).transpose(1, 2)
        k = qkv[..., qp: qp + kp].view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = qkv[..., qp + kp:].view(B, T, self.nkv, self.hd).transpose(1, 2)
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * c + self.rotate_half(q) * s
        k = k * c + self.rotate_half(k) * s
        # DynamicCache.update: append post-RoPE keys; cached keys are never re-rotated
        if cache[i] is not None:
            k = torch.cat([cache[i][0], k], dim=2)
            v = torch.cat([cache[i][1], v], dim=2)
        cache[i] = (k, v)
        rep = self.nh // self.nkv
        kk = k.repeat_interleave(rep, dim=1) if rep > 1 else k
        vv = v.repeat_interleave(rep, dim=1) if rep > 1 else v
        att = torch.matmul(q, kk.transpose(2, 3)) / math.sqrt(self.hd)
        if causal:
            S = kk.shape[2]
            mask = torch.full((T, S), float("-inf")).triu(S - T + 1)
            att = att + mask
        att = torch.softmax(att, dim=-1, dtype=torch.float32)
        o = torch.matmul(att, vv).transpose(1, 2).reshape(B, T, self.H)
        x = r + F.linear(o, self.w[p + "self_attn.o_proj.weight"])
        # Phi3MLP: gate_up -> chunk(2): gate first, up second; up * silu(gate)
        r = x
        y = self.rms(x, p + "post_attention_layernorm.weight")
        gu = F.linear(y, self.w[p + "mlp.gate_up_proj.weight"])
        gate, up = gu.chunk(2, dim=-1)
        y = up * F.silu(gate)
        return r + F.linear(y, self.w[p + "mlp.down_proj.weight"])

    def embed(self, input_ids, pixel_values=None, image_sizes=None):
        # Phi3VModel.forward: vision_embed_tokens when pixel_values given, else embed_tokens
        wte = self.w["model.embed_tokens.weight"]
        if pixel_values is not None:
            return self.img.forward(input_ids, wte, pixel_values, image_sizes)
        return F.embedding(input_ids, wte), {}

    def decode(self, x, position_ids, cache):
        # Phi3VModel.forward after the embedding, then Phi3VForCausalLM.lm_head
        cos, sin, is_long = self.rotary(position_ids)
        for i in range(self.cfg["num_hidden_layers"]):
            x = self.layer(i, x, cos, sin, cache, causal=True)
        x = self.rms(x, "model.norm.weight")
        return F.linear(x, self.w["lm_head.weight"]), is_long

    def forward(self, input_ids, position_ids, cache, pixel_values=None, image_sizes=None):
        x, extras = self.embed(input_ids, pixel_values, image_sizes)
        logits, extras["long_rope"] = self.decode(x, position_ids, cache)
        return logits, extras


# ==================================================================================================
# goldens
# ==================================================================================================

def long_text_prompt(tok: Tokenizer, template: str, special: dict, target: int) -> tuple[list, str]:
    rng = np.random.default_rng(4096)
    words = ("the a of and to in is was it for on with as by at from that this which be are an or "
             "image picture model token vision long context window rope scaling position cache "
             "river mountain city light blue green red small large quickly slowly bright dark "
             "engine reference golden test value number system message user assistant").split()
    n = target
    for _ in range(40):
        text = " ".join(words[i] for i in rng.integers(0, len(words), n)) + "."
        rng = np.random.default_rng(4096)
        msgs = [{"role": "user", "content": "Summarise this text.\n" + text}]
        L = len(tok.encode(render_chat(template, msgs, special), add_special_tokens=True).ids)
        if L == target:
            return msgs, text
        n += target - L
    raise RuntimeError("could not hit the target length")


def load_prompting(model_dir: Path):
    """The checkpoint's tokenizer, chat template, special tokens and preprocessor config."""
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tcfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    pcfg = json.loads((model_dir / "preprocessor_config.json").read_text())
    special = {k: tcfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    return tok, tcfg["chat_template"], special, pcfg


def golden_cases(tok: Tokenizer, template: str, special: dict) -> list[tuple[str, list, list]]:
    """The generation cases: (name, messages, image file names)."""
    cases = [
        ("text", [{"role": "user", "content": "Describe a sunset over the ocean in two sentences."}], []),
        ("one_image", [{"role": "user", "content": "<|image_1|>\nWhat is in this picture?"}],
         ["wide_1000x600.png"]),
        ("two_images", [{"role": "user", "content": "<|image_1|>\n<|image_2|>\nCompare these two images."}],
         ["wide_1000x600.png", "portrait_480x640.png"]),
        ("system_and_turns", [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "And of Italy?"}], []),
    ]
    lt_msgs, _ = long_text_prompt(tok, template, special, target=4086)
    cases.append(("long_text", lt_msgs, []))
    return cases


def case_inputs(tok: Tokenizer, template: str, special: dict, messages: list, prs: list):
    """A case's prompt, input ids (-N for image N) and stacked pixel values / image sizes (None
    without images); `prs` are the preprocess_image results of its images."""
    prompt = render_chat(template, messages, special)
    ids = convert_images_texts_to_inputs(tok, prompt, [p["num_img_tokens"] for p in prs])
    pixel_values = torch.stack([p["pixel_values"] for p in prs]) if prs else None
    image_sizes = [p["image_size"] for p in prs] if prs else None
    return prompt, ids, pixel_values, image_sizes


def run(model_dir: Path, out: Path, check_only: bool):
    model = Phi3V(model_dir)
    cfg = model.cfg
    tok, template, special, pcfg = load_prompting(model_dir)
    num_crops, mean, std = pcfg["num_crops"], pcfg["image_mean"], pcfg["image_std"]

    # ---------------------------------------------------------------- preprocess goldens
    pre = {}
    pre_json = []
    pdir = out / "preprocess"
    if not check_only:
        pdir.mkdir(parents=True, exist_ok=True)
    for path in sorted(IMAGES.glob("*.png")):
        im = Image.open(path)
        mode = im.mode
        r = preprocess_image(im, num_crops, mean, std)
        pre[path.name] = r
        h, w = r["image_size"]
        n = (h // 336) * (w // 336)
        entry = {"image": path.name, "mode": mode, "orig_size": list(im.size), "hd_size": [h, w],
                 "transposed": r["info"]["transposed"], "scale": r["info"]["scale"],
                 "resized_size": r["info"]["resized_size"],
                 "crop_grid": [h // 336, w // 336], "num_crops_padded": num_crops + 1,
                 "num_image_tokens": r["num_img_tokens"],
                 "pixel_values_file": f"preprocess/{path.stem}.safetensors",
                 "has_full_pixel_values": path.name in FULL_PIXEL_IMAGES,
                 "hd_canvas_png": f"preprocess/{path.stem}.hd.png",
                 # float64 mean of every real crop (global first) per channel, for a cheap check
                 "crop_channel_means": r["real_crops"].double().mean(dim=(2, 3)).tolist()}
        pre_json.append(entry)
        if not check_only:
            if path.name in FULL_PIXEL_IMAGES:
                tensors = {"pixel_values": r["real_crops"].to(torch.float16).contiguous()}
            else:
                tensors = {"global_crop": r["real_crops"][:1].to(torch.float16).contiguous()}
            assert r["real_crops"].shape[0] == 1 + n
            save_file(tensors, str(pdir / f"{path.stem}.safetensors"))
            r["hd_pil"].save(pdir / f"{path.stem}.hd.png", format="PNG", optimize=True)

    # ---------------------------------------------------------------- generation goldens
    cases = golden_cases(tok, template, special)

    gen_json = []
    gen_t = {}
    for name, messages, images in cases:
        prs = [pre[i] for i in images]
        prompt, ids, pixel_values, image_sizes = case_inputs(tok, template, special, messages, prs)
        input_ids = torch.tensor(ids, dtype=torch.long)[None]
        L = input_ids.shape[1]
        cache = [None] * cfg["num_hidden_layers"]
        logits, extras = model.forward(input_ids.clone(), torch.arange(L)[None], cache, pixel_values, image_sizes)
        logits = logits[0]
        # positions: 0, first image slot, first token after the first image run, last
        pos = {0, L - 1}
        neg = [i for i, t in enumerate(ids) if t < 0]
        if neg:
            pos.add(neg[0])
            after = next(i for i in range(neg[0], L) if ids[i] >= 0)
            pos.add(after)
            pos.add(after - 1)
        else:
            pos.add(L // 2)
        pos = sorted(pos)
        greedy, gaps, long_flags, top5_ids, top5_vals = [], [], [], [], []
        step_logits = logits[-1]
        is_long = extras["long_rope"]
        for step in range(16):
            top = torch.topk(step_logits, 5)
            top5_ids.append(top.indices.tolist())
            top5_vals.append(top.values.tolist())
            gaps.append(float(top.values[0] - top.values[1]))
            long_flags.append(bool(is_long))
            nxt = int(top.indices[0])
            greedy.append(nxt)
            if step == 15:
                break
            p = L + step
            lg, ex = model.forward(torch.tensor([[nxt]]), torch.tensor([[p]]), cache)
            step_logits = lg[0, -1]
            is_long = ex["long_rope"]
        entry = {
            "name": name,
            "messages": messages,
            "openai_messages": to_openai(messages, images),
            "prompt": prompt,
            "images": images,
            "input_ids": ids,
            "num_tokens": L,
            "num_image_tokens": [p["num_img_tokens"] for p in prs],
            "image_sizes": image_sizes or [],
            "logits_positions": pos,
            "greedy_tokens": greedy,
            "greedy_text": tok.decode(greedy, skip_special_tokens=False),
            "top2_gaps": gaps,
            "min_top2_gap": min(gaps),
            # which of the 16 argmax steps ran with the LONG LongRoPE factors (step 0 = prefill)
            "long_rope_per_step": long_flags,
            "eos_in_greedy": any(t in EOS_IDS for t in greedy),
        }
        gen_json.append(entry)
        gen_t[f"{name}.logits"] = logits[pos].contiguous()
        gen_t[f"{name}.step_top5_ids"] = torch.tensor(top5_ids, dtype=torch.int64)
        gen_t[f"{name}.step_top5_logits"] = torch.tensor(top5_vals, dtype=torch.float32)
        if prs:
            gen_t[f"{name}.image_embeds"] = extras["image_embeds"].contiguous()
            nreal = prs[0]["real_crops"].shape[0]
            gen_t[f"{name}.clip_features"] = extras["img_features"][0, :nreal].contiguous()
        print(f"{name:18s} L={L:5d} min_gap={min(gaps):.4f} eos={entry['eos_in_greedy']} "
              f"long={sum(long_flags)} greedy={greedy}")

    if check_only:
        return gen_json
    (out / "preprocess.json").write_text(json.dumps(pre_json, indent=1) + "\n")
    meta = {
        "model": str(model_dir.relative_to(REPO)) if model_dir.is_relative_to(REPO) else str(model_dir),
        "generator": "tools/reference_phi3v.py",
        "dtype": "float32 compute, bf16 weights upcast",
        "notes": "input_ids use negative ids -N for image N (HF processor); logits are from the prefill "
                 "pass at logits_positions; greedy_tokens are 16 argmax steps (prefill + 15 cached "
                 "decode steps), not stopped at eos; clip_features are hidden_states[layer_idx][:,1:] "
                 "of the first image's real crops (global first); image_embeds are the projected "
                 "features written into the sequence, all images concatenated in order.",
        "cases": gen_json,
    }
    (out / "generation.json").write_text(json.dumps(meta, indent=1) + "\n")
    save_file(gen_t, str(out / "generation.safetensors"))
    return gen_json


def to_openai(messages, images):
    """The same conversation as OpenAI-style content parts (images by fixture file name, in the
    order of their <|image_N|> tags; the text keeps no tags)."""
    out = []
    k = 0
    for m in messages:
        text = m["content"]
        tags = re.findall(r"<\|image_(\d+)\|>", text)
        if not tags:
            out.append({"role": m["role"], "content": text})
            continue
        parts = []
        for t in tags:
            parts.append({"type": "image_url", "image_url": {"url": images[int(t) - 1]}})
            k += 1
        rest = re.sub(r"<\|image_\d+\|>\n?", "", text)
        parts.append({"type": "text", "text": rest})
        out.append({"role": m["role"], "content": parts})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "tests" / "fixtures" / "phi3v-tiny"))
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "goldens" / "phi3v"))
    ap.add_argument("--check-only", action="store_true", help="print gaps, write nothing")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.check_only:
        out.mkdir(parents=True, exist_ok=True)
    run(Path(args.model), out, args.check_only)


if __name__ == "__main__":
    main()
