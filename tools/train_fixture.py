#!/usr/bin/env python3
"""Train tests/fixtures/phi3v-tiny's language model to answer each golden case confidently.

Run after tools/make_fixtures.py and before tools/reference_phi3v.py (see tools/README.md and
tools/fixture_training.py for why). Only the decoder layers, the final norm and lm_head change; the
embedding, the CLIP tower and the image projection keep their random weights. Each lesson runs the
reference's exact inference path (prefill, then one cached step per answer token, so the long case
crosses position 4096 with LongRoPE's per-call switch just as in generation) with the answer fed
back instead of the argmax.

Usage: tools/.venv/bin/python tools/train_fixture.py [--model tests/fixtures/phi3v-tiny]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from fixture_training import Lesson, answer_tokens, teach, write_back
from reference_phi3v import IMAGES, REPO, Phi3V, case_inputs, golden_cases, load_prompting, preprocess_image

ANSWER_TOKENS = 16
MARGIN = 4.0
ANSWERS = {
    "text": "The sun sinks slowly into the calm ocean, painting the sky orange and pink as the waves glow.",
    "one_image": "The picture shows a wide scene with soft colour gradients and a few dark marks of printed text.",
    "two_images": "The first image is wide and flat, while the second is a tall portrait with other colours.",
    "system_and_turns": "The capital of Italy is Rome, a city famous for its ancient history and its art.",
    "long_text": "The text is a long list of random words about images, rivers, cities, colours and light.",
}


def trainable_names(model: Phi3V) -> list[str]:
    return [k for k in model.w if k.startswith("model.layers.") or k in ("model.norm.weight", "lm_head.weight")]


def lesson(model: Phi3V, name: str, x: torch.Tensor, targets: torch.Tensor) -> Lesson:
    """Teacher-forced generation from the (frozen) prompt embeddings `x` [1, L, H]."""
    n_layers = model.cfg["num_hidden_layers"]
    wte = model.w["model.embed_tokens.weight"]
    length = x.shape[1]

    def forward() -> torch.Tensor:
        cache = [None] * n_layers
        logits, _ = model.decode(x, torch.arange(length)[None], cache)
        rows = [logits[0, -1]]
        for i, token in enumerate(targets[:-1].tolist()):
            step = F.embedding(torch.tensor([[token]]), wte)
            logits, _ = model.decode(step, torch.tensor([[length + i]]), cache)
            rows.append(logits[0, -1])
        return torch.stack(rows)

    return Lesson(name, forward, targets)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "tests" / "fixtures" / "phi3v-tiny"))
    args = ap.parse_args()
    model_dir = Path(args.model)
    torch.manual_seed(0)
    model = Phi3V(model_dir)
    tok, template, special, pcfg = load_prompting(model_dir)
    lessons = []
    for name, messages, images in golden_cases(tok, template, special):
        prs = [preprocess_image(Image.open(IMAGES / i), pcfg["num_crops"], pcfg["image_mean"], pcfg["image_std"])
               for i in images]
        _, ids, pixel_values, image_sizes = case_inputs(tok, template, special, messages, prs)
        x, _ = model.embed(torch.tensor([ids]), pixel_values, image_sizes)
        targets = answer_tokens(lambda s: tok.encode(s, add_special_tokens=False).ids, ANSWERS[name],
                                ANSWER_TOKENS)
        lessons.append(lesson(model, name, x, targets))
    names = trainable_names(model)
    start = time.time()
    teach([model.w[k] for k in names], lessons, MARGIN)
    print(f"  trained {len(names)} tensors in {time.time() - start:.0f} s")
    write_back(model_dir, {k: model.w[k] for k in names})


if __name__ == "__main__":
    main()
