#!/usr/bin/env python3
"""Train the tiny Phi-4-multimodal fixture's language model to answer each golden case confidently.

Why: with random weights the greedy steps of tests/fixtures/phi4mm-tiny are near ties (top-2 gaps of
0.07..0.5 logits), so any legitimate rounding difference (Q8_0 weights, another summation order)
flips a token and a greedy-token test passes or fails by luck. This script teaches the decoder a
fixed English answer per case in tools/phi4mm/reference.py's CASES until every teacher-forced step's
target beats the runner-up by MARGIN logits with bf16-rounded weights, then writes the weights back
into the checkpoint (see tools/fixture_training.py).

Only the LM decoder's base weights train (per layer qkv/o/gate_up/down and both RMSNorms, plus the
final norm): not the tied embedding / lm_head, the SigLIP and conformer towers, the projections or
the LoRA adapters. Each lesson runs exactly reference.py's `prefill_and_greedy`, teacher-forced: the
case's adapter (`route`), a cached prefill of the prompt, then one cached decode step per target
token. The media embeddings do not depend on trained weights, so they are computed once per case
(what the native forward computes from input_ids + media before its decoder layers).

Run after make_fixtures.py and before reference.py (which records the goldens from these weights):
  tools/.venv-phi4mm/bin/python tools/phi4mm/train_fixture.py [--model tests/fixtures/phi4mm-tiny]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tools/, for fixture_training
from fixture_training import Lesson, answer_tokens, margins, teach, write_back  # noqa: E402
from reference import CASES, REPO, case_inputs, load_model, map_key, route  # noqa: E402

STEPS = 16  # greedy tokens recorded per case by reference.py
MARGIN = 4.0
ANSWERS = {
    "text": "The sun sinks slowly into the calm sea, painting the sky orange and pink while the waves glow.",
    "one_image": "The image shows a tall narrow picture with colourful stripes and a few dark marks near the top.",
    "two_images": "The first picture is a smooth colour gradient, while the second one is a long thin banner.",
    "one_audio": "The clip contains a single steady tone and no spoken words, so there is nothing to transcribe.",
    "image_and_audio": "The recording asks what the grey picture shows: it is a plain flat square without any objects.",
}


def trainable(model) -> dict[str, torch.Tensor]:
    """The LM decoder's weights by native name (decoder layers and the final norm). Everything else is
    frozen, so backward skips the 200064-row tied embedding."""
    for p in model.parameters():
        p.requires_grad_(False)
    return {n: p for n, p in model.named_parameters() if n.startswith("model.layers.") or n == "model.norm.weight"}


def make_lesson(model, lora, case, tokenizer, tok_cfg):
    """The case's Lesson (cached, as reference.py decodes) and the same logits from one causal forward
    over prompt + targets[:-1] (used only to check that gradients flow through the cache)."""
    ids, kw, _, _ = case_inputs(case, tokenizer, tok_cfg)
    # LongRoPE switches factors past original_max_position_embeddings; the whole answer stays below.
    assert len(ids) + STEPS <= model.config.rope_parameters["original_max_position_embeddings"], len(ids)
    adapter, _ = route(case)
    active = None if adapter == "none" else adapter
    targets = answer_tokens(lambda s: tokenizer.encode(s, add_special_tokens=False).ids, ANSWERS[case["name"]], STEPS)
    input_ids = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():  # frozen: the native forward's embedding step, done once
        embeds = model.model.embed_tokens_extend(input_ids, model.model.embed_tokens(input_ids), **kw)

    def forward() -> torch.Tensor:
        lora.active = active
        out = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        rows, past = [out.logits[0, -1]], out.past_key_values
        for t in targets[:-1]:
            out = model(input_ids=t.view(1, 1), past_key_values=past, use_cache=True)
            rows.append(out.logits[0, -1])
            past = out.past_key_values
        lora.active = None
        return torch.stack(rows).float()

    def one_forward() -> torch.Tensor:
        lora.active = active
        full = torch.cat([embeds, model.model.embed_tokens(targets[None, :-1])], dim=1)
        logits = model(inputs_embeds=full, use_cache=False, logits_to_keep=STEPS).logits[0]
        lora.active = None
        return logits.float()

    return Lesson(case["name"], forward, targets), one_forward


def check_cache_gradients(lesson: Lesson, one_forward, params: list[torch.Tensor]):
    """Autograd must flow through the DynamicCache: the cached lesson and one causal forward give the
    same logits and the same gradients."""
    def run(fn):
        for p in params:
            p.grad = None
        logits = fn()
        F.cross_entropy(logits, lesson.targets).backward()
        return logits.detach(), torch.cat([p.grad.flatten() for p in params])

    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        (la, ga), (lb, gb) = run(lesson.forward), run(one_forward)
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    dl, dg = float((la - lb).abs().max()), float((ga - gb).norm() / gb.norm())
    print(f"  {lesson.name}: cached vs one forward: max |dlogit| {dl:.2e}, relative |dgrad| {dg:.2e}")
    assert dl < 1e-3 and dg < 1e-4, (dl, dg)


def adapter_spread(model, lora, tokenizer, tok_cfg) -> float:
    """The smallest max |logit difference| between the text prompt's last-position logits under the
    three adapters (phi4mm_model.rs' routing test needs > 1: each adapter must really change them)."""
    ids, _, _, _ = case_inputs(CASES[0], tokenizer, tok_cfg)
    rows = []
    for active in (None, "vision", "speech"):
        lora.active = active
        rows.append(model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1])
    lora.active = None
    return min(float((rows[a] - rows[b]).abs().max()) for a, b in ((0, 1), (0, 2), (1, 2)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "tests" / "fixtures" / "phi4mm-tiny"))
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-iters", type=int, default=600)
    args = ap.parse_args()
    model_dir = Path(args.model)
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())

    def lessons_for(model, lora):
        return [make_lesson(model, lora, case, tokenizer, tok_cfg) for case in CASES]

    def report(lessons, when):
        with torch.no_grad():
            worst = {l.name: float(margins(l.forward(), l.targets).min()) for l in lessons}
        print(f"{when}: worst margin per case " + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()), flush=True)
        return worst

    model, _, lora = load_model(model_dir)
    print(f"before: adapters change the text logits by at least {adapter_spread(model, lora, tokenizer, tok_cfg):.2f}")
    pairs = lessons_for(model, lora)
    lessons = [l for l, _ in pairs]
    params = trainable(model)
    for lesson, one_forward in pairs:
        check_cache_gradients(lesson, one_forward, list(params.values()))
    report(lessons, "before")
    t0 = time.time()
    teach(list(params.values()), lessons, margin=MARGIN, lr=args.lr, max_iters=args.max_iters)
    print(f"trained in {time.time() - t0:.0f} s")

    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    updated = {k: params[map_key(k)] for k in index["weight_map"] if map_key(k) in params}
    assert sorted(map_key(k) for k in updated) == sorted(params), "every trained tensor maps to one Hub name"
    write_back(model_dir, updated)

    model, _, lora = load_model(model_dir)
    after = report([l for l, _ in lessons_for(model, lora)], "after reload")
    assert min(after.values()) >= MARGIN, after
    spread = adapter_spread(model, lora, tokenizer, tok_cfg)
    print(f"text prompt under none/vision/speech adapters: logits differ by at least {spread:.2f}")
    assert spread > 1.0, spread
    print("answers: " + " | ".join(tokenizer.decode(l.targets.tolist()) for l in lessons))


if __name__ == "__main__":
    main()
