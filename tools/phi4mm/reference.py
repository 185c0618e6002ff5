#!/usr/bin/env python3
"""Goldens for phive's Phi-4-multimodal support, recorded from transformers' NATIVE
`Phi4MultimodalForCausalLM` (pinned in tools/phi4mm/requirements.txt) on the tiny Hub-layout
checkpoint tests/fixtures/phi4mm-tiny (its LM decoder trained by tools/phi4mm/train_fixture.py, which
reuses this module's `load_model`, `CASES`, `route` and `case_inputs`).

* Weights: the Hub (remote-code) tensor names are mapped to the native ones exactly as
  transformers' convert_phi4_multimodal_weights_to_hf.py does (STATE_DICT_MAPPING; `base_layer.`
  stripped; LoRA tensors set aside). The load is checked: the only missing key is the tied lm_head,
  nothing is unexpected.
* LoRA: applied manually, unmerged, as y = W x + (alpha/r) * B(A x) through forward hooks on every
  module matched by the config's `layer` regex (what PEFT's LoraLayer computes at eval; dropout off).
* Routing (Hub modeling_phi4mm.py, `input_mode`): text -> no adapter, audio projection "speech";
  any image (with or without audio) -> vision adapter, projection "vision"; audio only -> speech
  adapter, projection "speech". The native model picks the projection itself ("vision" iff
  image_pixel_values is passed), which is the same rule; this script asserts it.
* Attention: eager everywhere (SDPA in the native SigLIP tower turns causal when a crop has no
  padding). Compute in float32 (bf16 weights upcast).
* Preprocessing: images follow the Hub processing_phi4mm.py path (PIL RGB convert, PIL bilinear
  resize, white pad right/bottom, ToTensor, Normalize(0.5, 0.5), bicubic 448 global view); the native
  image processor is run too and the difference is reported in preprocess.json. Audio follows the
  Hub Phi4MMAudioFeatureExtractor (numpy, SpeechLib mel, 8 kHz fill-zero, scipy resample_poly for
  other rates); for 16 kHz the native feature extractor is run too and compared.

Usage:
  tools/.venv-phi4mm/bin/python tools/phi4mm/reference.py [--model tests/fixtures/phi4mm-tiny]
      [--out tests/fixtures/goldens/phi4mm] [--only preprocess,audio,generation]
"""
from __future__ import annotations

import argparse
import json
import math
import re
import wave
from pathlib import Path

import jinja2
import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

import transformers
from transformers import (Phi4MultimodalConfig, Phi4MultimodalFeatureExtractor,
                          Phi4MultimodalForCausalLM, Phi4MultimodalImageProcessor)

REPO = Path(__file__).resolve().parent.parent.parent
IMAGES = REPO / "tests" / "fixtures" / "images"
AUDIO = REPO / "tests" / "fixtures" / "audio"
IMAGE_TOKEN_ID = 200010  # <|endoftext10|>
AUDIO_TOKEN_ID = 200011  # <|endoftext11|>
TOP_K = 64

torch.set_grad_enabled(False)
torch.manual_seed(0)

PREPROCESS_IMAGES = ["gradient_336x336.png", "gray_400x300.png", "rgba_300x200.png", "odd_333x777.png",
                     "portrait_480x640.png", "banner_1600x120.png", "wide_1000x600.png"]
FULL_PIXEL_IMAGES = {"odd_333x777.png"}
AUDIO_FILES = ["tone_16k.wav", "speechlike_8k.wav", "chirp_44k_stereo.wav"]


# ==================================================================================================
# Hub processing_phi4mm.py: dynamic HD image preprocessing
# ==================================================================================================

def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best_ratio = ratio
    return best_ratio


def dynamic_preprocess(image: Image.Image, max_num=36, min_num=1, image_size=448, mask_size=32, patch=14):
    orig_width, orig_height = image.size
    w_crop_num = math.ceil(orig_width / float(image_size))
    h_crop_num = math.ceil(orig_height / float(image_size))
    if w_crop_num * h_crop_num > max_num:
        aspect_ratio = orig_width / orig_height
        target_ratios = sorted({(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
                                for j in range(1, n + 1) if min_num <= i * j <= max_num},
                               key=lambda x: x[0] * x[1])
        target_aspect_ratio = find_closest_aspect_ratio(aspect_ratio, target_ratios, orig_width, orig_height,
                                                        image_size)
        target_width = image_size * target_aspect_ratio[0]
        target_height = image_size * target_aspect_ratio[1]
    else:
        target_width = image_size * w_crop_num
        target_height = image_size * h_crop_num
        target_aspect_ratio = (w_crop_num, h_crop_num)
    ratio_width = target_width / orig_width
    ratio_height = target_height / orig_height
    if ratio_width < ratio_height:
        new_size = (target_width, int(orig_height * ratio_width))
        padding_width, padding_height = 0, target_height - int(orig_height * ratio_width)
    else:
        new_size = (int(orig_width * ratio_height), target_height)
        padding_width, padding_height = target_width - int(orig_width * ratio_height), 0
    mask = torch.ones((mask_size * target_aspect_ratio[1], mask_size * target_aspect_ratio[0]))
    if padding_width >= patch:
        mask[:, -math.floor(padding_width / patch):] = 0
    if padding_height >= patch:
        mask[-math.floor(padding_height / patch):, :] = 0
    assert mask.sum() > 0
    if min(new_size[1], target_height) < 10 or min(new_size[0], target_width) < 10:
        raise ValueError(f"the aspect ratio is very extreme {new_size}")
    # torchvision resize on a PIL image = PIL bilinear (with PIL's antialiasing support)
    image = TF.resize(image, [new_size[1], new_size[0]])
    canvas = TF.pad(image, [0, 0, padding_width, padding_height], fill=[255, 255, 255])
    return canvas, mask, dict(target=target_aspect_ratio, new_size=new_size,
                              padding=(padding_width, padding_height))


def hub_image_preprocess(image: Image.Image, dynamic_hd=36, base=448, mask_res=32):
    image = image.convert("RGB")
    canvas, mask, info = dynamic_preprocess(image, max_num=dynamic_hd)
    hd = TF.normalize(TF.to_tensor(canvas), [0.5] * 3, [0.5] * 3)  # [3,H,W] float32
    glb = F.interpolate(hd.unsqueeze(0).float(), size=(base, base), mode="bicubic").to(hd.dtype)
    h, w = hd.shape[1:]
    hh, ww = h // base, w // base
    crops = hd.reshape(3, hh, base, ww, base).permute(1, 3, 0, 2, 4).reshape(-1, 3, base, base)
    mh, mw = mask.shape
    mcrops = mask.reshape(hh, mask_res, ww, mask_res).transpose(1, 2).reshape(-1, mask_res, mask_res)
    down = mcrops[:, 0::2, 0::2].reshape(hh, ww, mask_res // 2, mask_res // 2).transpose(1, 2) \
        .reshape(hh * (mask_res // 2), ww * (mask_res // 2))
    num_tokens = 256 + 1 + int(down.sum()) + int(down[:, 0].sum()) + 16
    pixel_values = torch.cat([glb, crops], 0)
    attn = torch.cat([torch.ones(1, mask_res, mask_res), mcrops], 0)
    return dict(pixel_values=pixel_values, attention_mask=attn, image_size=[h, w], num_tokens=num_tokens,
                canvas=canvas, info=info, down_mask=down)


# ==================================================================================================
# Hub processing_phi4mm.py: audio features (Phi4MMAudioFeatureExtractor)
# ==================================================================================================

def speechlib_mel(sample_rate, n_fft, n_mels, fmin=None, fmax=None):
    bank_width = int(n_fft // 2 + 1)
    fmax = sample_rate / 2 if fmax is None else fmax
    fmin = 0 if fmin is None else fmin

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    def bin2mel(k):
        return 1127.0 * np.log(1.0 + k * sample_rate / (n_fft * 700.0))

    def f2bin(f):
        return int((f * n_fft / sample_rate) + 0.5)

    klo, khi = f2bin(fmin) + 1, f2bin(fmax)
    khi = max(khi, klo)
    mlo, mhi = mel(fmin), mel(fmax)
    centers = np.linspace(mlo, mhi, n_mels + 2)
    ms = (mhi - mlo) / (n_mels + 1)
    m = np.zeros((n_mels, bank_width), dtype=np.float32)
    for i in range(n_mels):
        left, center, right = centers[i], centers[i + 1], centers[i + 2]
        for k in range(klo, khi):
            mb = bin2mel(k)
            if left < mb < right:
                m[i, k] = 1.0 - abs(center - mb) / ms
    return m


MEL = speechlib_mel(16000, 512, 80, fmin=None, fmax=7690).T  # [257, 80]


def hub_extract_spectrogram(wav: np.ndarray, fs: int):
    notes = []
    if wav.ndim > 1:
        wav = np.squeeze(wav)
    if len(wav.shape) == 2:
        wav = wav.mean(1)
        notes.append("stereo -> mean of channels")
    if fs > 16000:
        wav = scipy.signal.resample_poly(wav, 1, fs // 16000)
        notes.append(f"resample_poly(wav, 1, {fs}//16000={fs // 16000}) then treated as 16000 Hz "
                     f"(true rate {fs / (fs // 16000):.1f} Hz)")
        fs = 16000
    elif 8000 < fs < 16000:
        wav = scipy.signal.resample_poly(wav, 1, fs // 8000)
        notes.append(f"resample_poly(wav, 1, {fs // 8000}) then treated as 8000 Hz")
        fs = 8000
    elif fs < 8000:
        raise RuntimeError(f"Unsupported sample rate {fs}")
    if fs == 8000:
        n_fft, win, hop = 256, 200, 80
        notes.append("8 kHz: n_fft 256, window 200, hop 80, spectrum padded with zeros to 257 bins (fillzero)")
    else:
        n_fft, win, hop = 512, 400, 160
    window = np.hamming(win)
    n_batch = (wav.shape[0] - win) // hop + 1
    frames = np.array([wav[s:s + win] for s in range(0, hop * n_batch, hop)], dtype=np.float32)
    prev = np.roll(frames, 1, axis=1)
    prev[:, 0] = prev[:, 1]
    frames = (frames - 0.97 * prev) * 32768
    S = np.fft.rfft(window * frames, n=n_fft, axis=1).astype(np.complex64)
    if fs == 8000:
        nf, nb = S.shape
        S = np.concatenate((S[:, 0:-1], np.zeros((nf, nb))), axis=1)
    return np.abs(S).astype(np.float32), notes


def hub_audio_features(wav: np.ndarray, fs: int, compression=8, qformer=1, feat_stride=1):
    spec, notes = hub_extract_spectrogram(wav, fs)
    fbank = np.clip((spec ** 2).dot(MEL), 1.0, None)
    feats = np.log(fbank).astype(np.float32)
    frames = len(feats) * feat_stride
    n = -(-frames // compression)
    n = -(-n // qformer)
    return feats, n, notes


def read_wav(path: Path):
    with wave.open(str(path), "rb") as w:
        fs, ch, sw, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        raw = w.readframes(n)
    assert sw == 2
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0  # soundfile's float convention
    if ch > 1:
        x = x.reshape(-1, ch)
    return x, fs


# ==================================================================================================
# model loading (convert_phi4_multimodal_weights_to_hf.py mapping)
# ==================================================================================================

STATE_DICT_MAPPING = {
    r"^model.embed_tokens_extend.audio_embed.encoder.encoders.(\d+).feed_forward_(in|out).net.0.linear":
        r"model.embed_tokens_extend.audio_embed.encoder.encoders.\1.feed_forward_\2.gate_up_proj",
    r"^model.embed_tokens_extend.audio_embed.encoder.encoders.(\d+).feed_forward_(in|out).net.2":
        r"model.embed_tokens_extend.audio_embed.encoder.encoders.\1.feed_forward_\2.down_proj",
    r"^model.embed_tokens_extend.audio_embed.encoder.encoders.(\d+).self_attn.linear_(q|k|v)":
        r"model.embed_tokens_extend.audio_embed.encoder.encoders.\1.self_attn.\2_proj",
    r"^model.embed_tokens_extend.audio_embed.encoder.encoders.(\d+).self_attn.linear_out":
        r"model.embed_tokens_extend.audio_embed.encoder.encoders.\1.self_attn.o_proj",
    r"^model.embed_tokens_extend.image_embed.img_projection.0":
        r"model.embed_tokens_extend.image_embed.img_projection_up",
    r"^model.embed_tokens_extend.image_embed.img_projection.2":
        r"model.embed_tokens_extend.image_embed.img_projection_down",
    r"^model.embed_tokens_extend.image_embed.glb_GN": r"model.embed_tokens_extend.image_embed.global_img_feature_extensor",
    r"^model.embed_tokens_extend.image_embed.sub_GN": r"model.embed_tokens_extend.image_embed.sub_img_feature_extensor",
    r"^model.embed_tokens_extend.audio_embed.audio_projection.speech.0": r"model.embed_tokens_extend.audio_embed.up_proj_for_speech",
    r"^model.embed_tokens_extend.audio_embed.audio_projection.speech.2": r"model.embed_tokens_extend.audio_embed.down_proj_for_speech",
    r"^model.embed_tokens_extend.audio_embed.audio_projection.vision.0": r"model.embed_tokens_extend.audio_embed.up_proj_for_vision_speech",
    r"^model.embed_tokens_extend.audio_embed.audio_projection.vision.2": r"model.embed_tokens_extend.audio_embed.down_proj_for_vision_speech",
}


def map_key(k):
    for pat, rep in STATE_DICT_MAPPING.items():
        nk, n = re.subn(pat, rep, k)
        if n:
            return nk
    if "lora" in k:
        return None
    return k.replace("base_layer.", "")


SIGLIP_DEFAULT = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27,
                      image_size=448, patch_size=14, num_channels=3, hidden_act="gelu_pytorch_tanh",
                      layer_norm_eps=1e-6)


def native_config(hub: dict) -> Phi4MultimodalConfig:
    c = json.loads(json.dumps(hub))
    for k in ("_name_or_path", "architectures", "auto_map", "vision_lora", "speech_lora", "transformers_version",
              "_attn_implementation", "model_type", "torch_dtype"):
        c.pop(k, None)
    embd = c.pop("embd_layer")
    a = c.pop("audio_processor")["config"]
    for k in ("activation_checkpointing", "cnn_layer_norm", "input_layer", "batch_norm", "encoder_embedding_config",
              "ext_pw_kernel_size", "bias_in_glu", "causal"):
        a.pop(k, None)
    a["hidden_size"] = a.pop("attention_dim")
    a["num_attention_heads"] = a.pop("attention_heads")
    a["intermediate_size"] = a.pop("linear_units")
    a["nemo_conv_channels"] = a.pop("nemo_conv_settings")["conv_channels"]
    a["bias_max_distance"] = a.pop("relative_attention_bias_args")["t5_bias_max_distance"]
    a["depthwise_separable_out_channel"] = a.pop("depthwise_seperable_out_channel")
    a["downsample_rate"] = embd["audio_embd_layer"]["downsample_rate"]
    v = dict(SIGLIP_DEFAULT)
    v.update(c.pop("vision_config", {}) or {})
    v["crop_size"] = embd["image_embd_layer"]["crop_size"]
    img_proc = c.pop("img_processor", None) or {}
    v["feature_layer"] = img_proc.get("layer_idx", -2)
    c["eos_token_id"] = [199999, 200020]
    return Phi4MultimodalConfig(**c, vision_config=v, audio_config=a)


class LoRA:
    """Unmerged LoRA on the native model: y = W x + (alpha/r) * B (A x) for the active adapter."""

    def __init__(self, model, hub_cfg, lora_tensors):
        self.active = None
        self.adapters = {}
        for name in ("vision", "speech"):
            spec = hub_cfg[f"{name}_lora"]
            self.adapters[name] = dict(scale=spec["lora_alpha"] / spec["r"], regex=re.compile(spec["layer"]),
                                       r=spec["r"])
        self.hooked = []
        for mname, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            per = {}
            for name, ad in self.adapters.items():
                a = lora_tensors.get(f"{mname}.lora_A.{name}.weight")
                b = lora_tensors.get(f"{mname}.lora_B.{name}.weight")
                if a is None:
                    continue
                assert ad["regex"].search(mname), (name, mname)
                per[name] = (a.float(), b.float(), ad["scale"])
            if per:
                mod.register_forward_hook(self._hook(per))
                self.hooked.append(mname)
        used = {f"{m}.lora_{x}.{n}.weight" for m in self.hooked for x in "AB" for n in ("vision", "speech")}
        assert used == set(lora_tensors), set(lora_tensors) ^ used

    def _hook(self, per):
        def fn(mod, inp, out):
            if self.active is None:
                return out
            a, b, s = per[self.active]
            return out + s * F.linear(F.linear(inp[0], a), b)
        return fn


def load_model(model_dir: Path):
    hub = json.loads((model_dir / "config.json").read_text())
    cfg = native_config(hub)
    model = Phi4MultimodalForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    sd, lora = {}, {}
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        for k, t in load_file(str(model_dir / shard)).items():
            nk = map_key(k)
            if nk is None:
                lora[k] = t
            else:
                sd[nk] = t.float()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert missing == ["lm_head.weight"], missing
    assert not unexpected, unexpected
    model.tie_weights()
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    impls = {model.config._attn_implementation, model.config.vision_config._attn_implementation,
             model.config.audio_config._attn_implementation}
    assert impls == {"eager"}, impls
    lo = LoRA(model, hub, lora)
    return model, hub, lo


# ==================================================================================================
# prompts
# ==================================================================================================

def render(tok_cfg, messages, add_generation_prompt=True):
    env = jinja2.Environment()
    return env.from_string(tok_cfg["chat_template"]).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                           eos_token=tok_cfg["eos_token"])


def build_input_ids(tokenizer: Tokenizer, prompt: str, img_counts, aud_counts):
    """Hub Phi4MMProcessor: <|image_N|> -> <|endoftext10|>, <|audio_N|> -> <|endoftext11|>, tokenize,
    expand each placeholder token to its count, media consumed in order."""
    text = re.sub(r"<\|image_\d+\|>", "<|endoftext10|>", prompt)
    text = re.sub(r"<\|audio_\d+\|>", "<|endoftext11|>", text)
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    out, ii, ai = [], 0, 0
    for t in ids:
        if t == IMAGE_TOKEN_ID:
            out += [t] * img_counts[ii]
            ii += 1
        elif t == AUDIO_TOKEN_ID:
            out += [t] * aud_counts[ai]
            ai += 1
        else:
            out.append(t)
    assert ii == len(img_counts) and ai == len(aud_counts)
    return out


# ==================================================================================================
# goldens
# ==================================================================================================

def record_preprocess(out: Path):
    native = Phi4MultimodalImageProcessor()
    (out / "preprocess").mkdir(parents=True, exist_ok=True)
    cases = []
    for name in PREPROCESS_IMAGES:
        img = Image.open(IMAGES / name)
        r = hub_image_preprocess(img)
        nat = native(img.convert("RGB"), return_tensors="pt")
        npv = nat["image_pixel_values"][0]
        diff = (npv - r["pixel_values"]).abs()
        nmask_eq = bool(torch.equal(nat["image_attention_mask"][0].to(torch.uint8), r["attention_mask"].to(torch.uint8)))
        stem = name[:-4]
        tensors = {
            "attention_mask": r["attention_mask"].to(torch.uint8).contiguous(),
            "image_size": torch.tensor(r["image_size"], dtype=torch.int64),
            "num_image_tokens": torch.tensor([r["num_tokens"]], dtype=torch.int64),
            "global_crop_rows": r["pixel_values"][0][:, [0, 1, 100, 223, 224, 447], :].float().contiguous(),
            "global_crop_sum": r["pixel_values"][0].double().sum(dim=(1, 2)).contiguous(),
        }
        if name in FULL_PIXEL_IMAGES:
            tensors["pixel_values"] = r["pixel_values"].to(torch.float16).contiguous()
        save_file(tensors, str(out / "preprocess" / f"{stem}.safetensors"))
        r["canvas"].save(out / "preprocess" / f"{stem}.hd.png", optimize=True)
        cases.append(dict(
            image=f"tests/fixtures/images/{name}", original_size=[img.size[0], img.size[1]], mode=img.mode,
            grid_w_h=list(r["info"]["target"]), resized_w_h=list(r["info"]["new_size"]),
            padding_w_h=list(r["info"]["padding"]), image_size_h_w=r["image_size"],
            num_crops=int(r["pixel_values"].shape[0]), num_image_tokens=r["num_tokens"],
            mask_sum_per_crop=[int(m.sum()) for m in r["attention_mask"]],
            useful_rows=int(r["down_mask"][:, 0].sum()), useful_cols=int(r["down_mask"][0, :].sum()),
            full_pixel_values=name in FULL_PIXEL_IMAGES,
            native_processor=dict(num_image_tokens=int(nat["num_img_tokens"][0]),
                                  image_sizes=nat["image_sizes"][0].tolist(), attention_mask_equal=nmask_eq,
                                  max_abs_diff_pixels=float(diff.max()),
                                  max_abs_diff_global=float(diff[0].max()),
                                  max_abs_diff_subcrops=float(diff[1:].max()) if diff.shape[0] > 1 else 0.0),
        ))
        print(f"  {name}: crops {cases[-1]['num_crops']} tokens {r['num_tokens']} native diff "
              f"glb {cases[-1]['native_processor']['max_abs_diff_global']:.4g} "
              f"sub {cases[-1]['native_processor']['max_abs_diff_subcrops']:.4g} mask_eq {nmask_eq}")
    doc = dict(
        generator="tools/phi4mm/reference.py", transformers=transformers.__version__, torch=torch.__version__,
        reference="Hub processing_phi4mm.py dynamic_preprocess/preprocess (PIL bilinear resize, white pad "
                  "right/bottom, ToTensor, Normalize(0.5,0.5), F.interpolate bicubic 448 global view, align_corners "
                  "False, no antialias); native Phi4MultimodalImageProcessor compared in native_processor",
        files=("preprocess/<stem>.safetensors: attention_mask u8 [crops,32,32] (global first), image_size i64 [2] "
               "(hd h, w), num_image_tokens i64 [1], global_crop_rows f32 [3,6,448] (rows 0,1,100,223,224,447 of "
               "the global crop), global_crop_sum f64 [3]; pixel_values f16 [crops,3,448,448] (global first) only "
               "for the images with full_pixel_values. preprocess/<stem>.hd.png: the resized+padded HD canvas "
               "(uint8, lossless): sub-crop k (row-major) is canvas[:, 448r:448(r+1), 448c:448(c+1)]/255*2-1."),
        token_formula="256 + 1 + sum(sub mask[0::2,0::2] tiled) + rows(tiled mask[:,0]) + 16",
        cases=cases)
    (out / "preprocess.json").write_text(json.dumps(doc, indent=1) + "\n")


def record_audio(out: Path):
    fe = Phi4MultimodalFeatureExtractor()
    mel_diff = float(np.abs(fe.mel_filters - MEL).max())
    (out / "audio").mkdir(parents=True, exist_ok=True)
    cases = []
    for name in AUDIO_FILES:
        x, fs = read_wav(AUDIO / name)
        feats, n_tok, notes = hub_audio_features(x, fs)
        entry = dict(audio=f"tests/fixtures/audio/{name}", sample_rate=fs,
                     channels=1 if x.ndim == 1 else x.shape[1], samples=int(x.shape[0]),
                     frames=int(feats.shape[0]), num_audio_tokens=int(n_tok), reference_notes=notes)
        if fs == 16000 and x.ndim == 1:
            nat = fe(x, sampling_rate=16000, return_tensors="pt")
            nf = nat["audio_input_features"][0].numpy()
            entry["native_extractor"] = dict(frames=int(nf.shape[0]), num_audio_tokens=int(nat["audio_embed_sizes"][0]),
                                             max_abs_diff=float(np.abs(nf - feats).max()))
        else:
            entry["native_extractor"] = "not applicable: the native Phi4MultimodalFeatureExtractor raises for any " \
                                        "sampling rate other than 16000 (and for stereo input it would mean the " \
                                        "last axis); the Hub remote-code path is recorded"
        save_file({"features": torch.from_numpy(feats).contiguous(),
                   "num_audio_tokens": torch.tensor([n_tok], dtype=torch.int64)},
                  str(out / "audio" / f"{name[:-4]}.safetensors"))
        cases.append(entry)
        print(f"  {name}: fs {fs} frames {feats.shape[0]} tokens {n_tok} native {entry['native_extractor']}")
    doc = dict(
        generator="tools/phi4mm/reference.py", transformers=transformers.__version__,
        reference="Hub processing_phi4mm.py Phi4MMAudioFeatureExtractor._extract_spectrogram/_extract_features: "
                  "frames = (len - win)//hop + 1; per-frame pre-emphasis y[t] = x[t] - 0.97 x[t-1] with x[-1] = x[0], "
                  "x 32768; symmetric Hamming (np.hamming); rfft (16 kHz: n_fft 512, win 400, hop 160; 8 kHz: n_fft 256, "
                  "win 200, hop 80 and bins [0:128] + 129 zeros); |S| as complex64/float32; power; SpeechLib mel "
                  "(80 bins, 1127 ln(1+f/700), fmax 7690, 16 kHz/512 grid); log(max(., 1))",
        wav_decode="16-bit PCM / 32768 (soundfile float convention); stereo -> mean of channels",
        token_formula="ceil(ceil(frames * audio_feat_stride / 8) / 1)",
        mel_filter_max_abs_diff_vs_native=mel_diff,
        files="audio/<stem>.safetensors: features f32 [T,80], num_audio_tokens i64 [1]",
        cases=cases)
    (out / "audio.json").write_text(json.dumps(doc, indent=1) + "\n")


CASES = [
    dict(name="text", messages=[{"role": "user", "content": "Describe a sunset over the ocean in two sentences."}],
         images=[], audios=[]),
    dict(name="one_image", messages=[{"role": "user", "content": "<|image_1|>What is shown in this image?"}],
         images=["odd_333x777.png"], audios=[]),
    dict(name="two_images", messages=[{"role": "system", "content": "You are a helpful assistant."},
                                      {"role": "user", "content": "<|image_1|><|image_2|>Compare these two pictures."}],
         images=["gradient_336x336.png", "banner_1600x120.png"], audios=[]),
    dict(name="one_audio", messages=[{"role": "user", "content": "<|audio_1|>Transcribe the audio clip into text."}],
         images=[], audios=["tone_16k.wav"]),
    dict(name="image_and_audio", messages=[{"role": "user", "content": "<|image_1|><|audio_1|>Answer the question in the audio about the image."}],
         images=["gray_400x300.png"], audios=["speechlike_8k.wav"]),
]


def route(case):
    if case["images"]:
        return "vision", "vision"
    if case["audios"]:
        return "speech", "speech"
    return "none", "speech"


def case_inputs(case, tokenizer: Tokenizer, tok_cfg):
    """A golden case's model inputs: expanded input ids, the media keyword arguments of the native
    forward (pixel values / audio features, batched and padded), and the per-item token counts."""
    prompt = render(tok_cfg, case["messages"])
    kw, img_counts, aud_counts = {}, [], []
    if case["images"]:
        pre = [hub_image_preprocess(Image.open(IMAGES / n)) for n in case["images"]]
        img_counts = [p["num_tokens"] for p in pre]
        maxc = max(p["pixel_values"].shape[0] for p in pre)
        pv = torch.stack([torch.cat([p["pixel_values"], torch.zeros(maxc - p["pixel_values"].shape[0], 3, 448, 448)])
                          for p in pre])
        am = torch.stack([torch.cat([p["attention_mask"], torch.ones(maxc - p["attention_mask"].shape[0], 32, 32)])
                          for p in pre])
        kw.update(image_pixel_values=pv, image_attention_mask=am,
                  image_sizes=torch.tensor([p["image_size"] for p in pre], dtype=torch.long))
    if case["audios"]:
        feats = []
        for n in case["audios"]:
            x, fs = read_wav(AUDIO / n)
            f, nt, _ = hub_audio_features(x, fs)
            feats.append(torch.from_numpy(f))
            aud_counts.append(nt)
        maxt = max(f.shape[0] for f in feats)
        af = torch.stack([torch.cat([f, torch.zeros(maxt - f.shape[0], 80)]) for f in feats])
        kw.update(audio_input_features=af, audio_embed_sizes=torch.tensor(aud_counts, dtype=torch.long))
        if len(feats) > 1:
            kw["audio_attention_mask"] = torch.stack([torch.arange(maxt) < f.shape[0] for f in feats])
    ids = build_input_ids(tokenizer, prompt, img_counts, aud_counts)
    return ids, kw, img_counts, aud_counts


def record_generation(out: Path, model_dir: Path):
    model, hub, lora = load_model(model_dir)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    tensors, docs = {}, []
    min_gap_all = float("inf")

    # capture projected media features
    captured = {}
    emb = model.model.embed_tokens_extend
    emb.image_embed.img_projection_down.register_forward_hook(lambda m, i, o: captured.setdefault("image", []).append(o))
    for mode, mod in (("speech", emb.audio_embed.down_proj_for_speech),
                      ("vision", emb.audio_embed.down_proj_for_vision_speech)):
        mod.register_forward_hook(lambda m, i, o, mode=mode: captured.setdefault("audio", []).append((mode, o)))

    def prefill_and_greedy(ids, kw, adapter):
        lora.active = None if adapter == "none" else adapter
        input_ids = torch.tensor([ids], dtype=torch.long)
        outp = model(input_ids=input_ids, use_cache=True, **kw)
        logits = outp.logits[0].float()
        past = outp.past_key_values
        greedy, gaps = [], []
        step_logits = logits[-1]
        for step in range(16):
            top2 = torch.topk(step_logits, 2)
            gaps.append(float(top2.values[0] - top2.values[1]))
            nxt = int(top2.indices[0])
            greedy.append(nxt)
            if step == 15:
                break
            o = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = o.past_key_values
            step_logits = o.logits[0, -1].float()
        lora.active = None
        return logits, greedy, gaps

    for case in CASES:
        captured.clear()
        adapter, proj_mode = route(case)
        prompt = render(tok_cfg, case["messages"])
        ids, kw, img_counts, aud_counts = case_inputs(case, tokenizer, tok_cfg)
        # logits positions: 0, the last token of each media item's placeholder run, last
        pos = [0]
        counts = {IMAGE_TOKEN_ID: list(img_counts), AUDIO_TOKEN_ID: list(aud_counts)}
        i = 0
        while i < len(ids):
            if ids[i] in counts:
                n = counts[ids[i]].pop(0)
                assert all(t == ids[i] for t in ids[i:i + n])
                pos.append(i + n - 1)
                i += n
            else:
                i += 1
        pos.append(len(ids) - 1)
        pos = sorted(set(pos))
        logits, greedy, gaps = prefill_and_greedy(ids, kw, adapter)
        name = case["name"]
        lp = logits[pos]
        tensors[f"{name}.logits_last"] = logits[-1].contiguous()
        tv, ti = torch.topk(lp, TOP_K, dim=-1)
        tensors[f"{name}.topk_values"] = tv.contiguous()
        tensors[f"{name}.topk_ids"] = ti.to(torch.int64).contiguous()
        tensors[f"{name}.logsumexp"] = torch.logsumexp(lp, dim=-1).contiguous()
        tensors[f"{name}.input_ids"] = torch.tensor(ids, dtype=torch.int64)
        tensors[f"{name}.greedy_tokens"] = torch.tensor(greedy, dtype=torch.int64)
        if "image" in captured:
            tensors[f"{name}.image_embeds"] = torch.cat([t.reshape(-1, t.shape[-1]) for t in captured["image"]]).contiguous()
        if "audio" in captured:
            modes = {m for m, _ in captured["audio"]}
            assert modes == {proj_mode}, (modes, proj_mode)
            a = torch.cat([o[b, :aud_counts[b]] for _, o in captured["audio"] for b in range(o.shape[0])])
            tensors[f"{name}.audio_embeds"] = a.contiguous()
        min_gap_all = min(min_gap_all, min(gaps))
        doc = dict(name=name, messages=case["messages"], prompt=prompt,
                   images=[f"tests/fixtures/images/{n}" for n in case["images"]],
                   audios=[f"tests/fixtures/audio/{n}" for n in case["audios"]],
                   input_ids=ids, num_tokens=len(ids), num_image_tokens=img_counts, num_audio_tokens=aud_counts,
                   adapter=adapter, audio_projection_mode=proj_mode, logits_positions=pos,
                   greedy_tokens=greedy, greedy_text=tokenizer.decode(greedy, skip_special_tokens=False),
                   top2_gaps=gaps, min_top2_gap=min(gaps))
        print(f"  {name}: {len(ids)} tokens adapter {adapter} proj {proj_mode} pos {pos} min gap {min(gaps):.4f}")
        docs.append(doc)
        if name == "text":
            for ad in ("vision", "speech"):
                lg, gr, gp = prefill_and_greedy(ids, {}, ad)
                tensors[f"text.logits_last_{ad}"] = lg[-1].contiguous()
                tv, ti = torch.topk(lg[pos], TOP_K, dim=-1)
                tensors[f"text.topk_values_{ad}"] = tv.contiguous()
                tensors[f"text.topk_ids_{ad}"] = ti.to(torch.int64).contiguous()
                doc[f"greedy_tokens_{ad}"] = gr
                doc[f"max_abs_logit_diff_vs_none_{ad}"] = float((lg[-1] - logits[-1]).abs().max())
                print(f"    text under {ad}: max |dlogit| {doc[f'max_abs_logit_diff_vs_none_{ad}']:.3f}")
    save_file(tensors, str(out / "generation.safetensors"))
    meta = dict(
        model="tests/fixtures/phi4mm-tiny", generator="tools/phi4mm/reference.py",
        transformers=transformers.__version__, torch=torch.__version__,
        dtype="float32 compute, bf16 weights upcast", attn_implementation="eager (LM, SigLIP, conformer)",
        lora="unmerged, y = W x + (alpha/r) B(A x) via forward hooks (PEFT-equivalent at eval)",
        routing="text: no adapter + audio projection speech; any image: vision adapter + projection vision; "
                "audio only: speech adapter + projection speech (Hub modeling_phi4mm.py input_mode)",
        tensors=("<case>.logits_last f32 [200064] (prefill logits at the last prompt position); "
                 "<case>.topk_values f32 / topk_ids i64 [len(logits_positions), 64] and <case>.logsumexp f32 "
                 "[len(logits_positions)] at every logits position (full rows are not stored for every position "
                 "to keep the fixtures small); <case>.input_ids, <case>.greedy_tokens i64; <case>.image_embeds / "
                 "<case>.audio_embeds f32 [n, 64] (projected features, in sequence order); "
                 "text.logits_last_{vision,speech} and text.topk_{values,ids}_{vision,speech}: the text prompt "
                 "under each adapter, to prove routing"),
        notes="greedy_tokens: 16 argmax steps (prefill + 15 cached decode steps with the same adapter), not "
              "stopped at eos; logits_positions: 0, the last placeholder token of each media item (image and audio runs, in order), last",
        min_top2_gap=min_gap_all, cases=docs)
    (out / "generation.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    print(f"  min top-2 gap over all cases: {min_gap_all:.5f}")
    return min_gap_all


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "tests" / "fixtures" / "phi4mm-tiny"))
    ap.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "goldens" / "phi4mm"))
    ap.add_argument("--only", default="preprocess,audio,generation")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.only.split(",")
    if "preprocess" in steps:
        print("preprocess")
        record_preprocess(out)
    if "audio" in steps:
        print("audio")
        record_audio(out)
    if "generation" in steps:
        print("generation")
        record_generation(out, Path(args.model))


if __name__ == "__main__":
    main()
