#!/usr/bin/env python3
"""Optional cross-check of tools/reference_phi3v.py against Hugging Face transformers' own modules
(not needed to regenerate goldens; needs `pip install transformers` in tools/.venv):

  * CLIP tower: transformers.CLIPVisionModel (eager attention) on the tiny vision_config, fed the
    golden preprocessing of wide_1000x600.png; compares hidden_states[layer_idx][:, 1:] with the
    golden `one_image.clip_features`.
  * Language model: transformers.Phi3ForCausalLM (native Phi-3, LongRoPE "longrope") with the tiny
    checkpoint's LM weights; compares prefill logits and the 16 greedy tokens (with its KV cache) of
    the text-only golden cases, including long_text (short->long switch at position 4096).

Prints max abs differences; exits non-zero on a mismatch.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "tests" / "fixtures" / "phi3v-tiny"
GOLD = REPO / "tests" / "fixtures" / "goldens" / "phi3v"
sys.path.insert(0, str(Path(__file__).parent))
import reference_phi3v as ref  # noqa: E402

torch.set_grad_enabled(False)


def main():
    import transformers
    from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM

    cfg = json.loads((MODEL / "config.json").read_text())
    idx = json.loads((MODEL / "model.safetensors.index.json").read_text())
    w = {}
    for f in sorted(set(idx["weight_map"].values())):
        w.update({k: v.float() for k, v in load_file(str(MODEL / f)).items()})
    gold = safe_open(str(GOLD / "generation.safetensors"), "pt")
    gen = json.loads((GOLD / "generation.json").read_text())["cases"]
    ok = True
    print("transformers", transformers.__version__)

    # ---- CLIP
    vc = cfg["vision_config"]
    cc = CLIPVisionConfig(**vc, attn_implementation="eager")
    clip = CLIPVisionModel(cc).eval()
    pre = "model.vision_embed_tokens.img_processor."
    sd = {k[len(pre):]: v for k, v in w.items() if k.startswith(pre)}
    if not any(k.startswith("vision_model.") for k in clip.state_dict()):
        # transformers 5.x flattened CLIPVisionModel (no `vision_model.` level)
        sd = {k[len("vision_model."):]: v for k, v in sd.items()}
    missing, unexpected = clip.load_state_dict(sd, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    assert not missing and not unexpected, (missing, unexpected)
    pcfg = json.loads((MODEL / "preprocessor_config.json").read_text())
    from PIL import Image
    r = ref.preprocess_image(Image.open(REPO / "tests/fixtures/images/wide_1000x600.png"),
                             pcfg["num_crops"], pcfg["image_mean"], pcfg["image_std"])
    hs = clip(r["real_crops"], output_hidden_states=True).hidden_states
    feat = hs[cfg["img_processor"].get("layer_idx", -2)][:, 1:]
    d = (feat - gold.get_tensor("one_image.clip_features")).abs().max().item()
    print(f"CLIP hidden_states[-2][:,1:] max|diff| = {d:.3e}")
    ok &= d < 1e-4

    # ---- LM (native Phi3 with longrope)
    rs = dict(cfg["rope_scaling"])
    rs["type"] = "longrope"
    rs["rope_type"] = "longrope"
    pc = Phi3Config(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                    intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
                    num_attention_heads=cfg["num_attention_heads"],
                    num_key_value_heads=cfg["num_key_value_heads"], rms_norm_eps=cfg["rms_norm_eps"],
                    rope_theta=cfg["rope_theta"], rope_scaling=rs,
                    max_position_embeddings=cfg["max_position_embeddings"],
                    original_max_position_embeddings=cfg["original_max_position_embeddings"],
                    sliding_window=None, tie_word_embeddings=False, pad_token_id=32000,
                    bos_token_id=1, eos_token_id=32000, attn_implementation="eager")
    lm = Phi3ForCausalLM(pc).eval()
    sd = {k: v for k, v in w.items() if not k.startswith("model.vision_embed_tokens.")}
    missing, unexpected = lm.load_state_dict(sd, strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
    for c in gen:
        if c["images"]:
            continue
        ids = torch.tensor([c["input_ids"]])
        out = lm(ids, use_cache=True)
        d = (out.logits[0, c["logits_positions"]] - gold.get_tensor(c["name"] + ".logits")).abs().max().item()
        pkv = out.past_key_values
        toks = []
        nxt = int(out.logits[0, -1].argmax())
        L = ids.shape[1]
        for step in range(16):
            toks.append(nxt)
            if step == 15:
                break
            o = lm(torch.tensor([[nxt]]), past_key_values=pkv, use_cache=True,
                   position_ids=torch.tensor([[L + step]]))
            pkv = o.past_key_values
            nxt = int(o.logits[0, -1].argmax())
        same = toks == c["greedy_tokens"]
        print(f"{c['name']:18s} prefill logits max|diff| = {d:.3e}  greedy equal: {same}")
        ok &= d < 1e-3 and same
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
