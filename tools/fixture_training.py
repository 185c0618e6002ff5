"""Teach a tiny random-weight checkpoint one confident answer per golden prompt.

Why: random weights give near-uniform next-token logits. The top-2 gap of a greedy step is often a
tenth of a logit, so any legitimate rounding (Q8_0 weights, another summation order) flips a token
and a greedy comparison tests luck, not correctness. A trained model is confident at most steps.
Training the language model's decoder weights to produce a fixed answer for each golden case gives
every greedy step a wide margin, while the logits, feature and preprocessing goldens still test the
exact reference computation (the weights are just other weights).

Used by tools/train_fixture.py (Phi-3.5-vision) and tools/phi4mm/train_fixture.py (Phi-4-mm); needs
only torch and safetensors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


@dataclass
class Lesson:
    """One golden case: `forward()` returns teacher-forced logits [len(targets), vocab], row i being
    the prediction of targets[i] (prefill's last position first, then one cached step per target)."""

    name: str
    forward: Callable[[], torch.Tensor]
    targets: torch.Tensor


def margins(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row: target logit minus the best other logit (negative where the target is not argmax)."""
    target = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], float("-inf")).max(dim=1).values
    return target - others


def worst_margin(lessons: list[Lesson]) -> float:
    with torch.no_grad():
        return min(float(margins(l.forward(), l.targets).min()) for l in lessons)


def round_to_bf16_(params: list[torch.Tensor]):
    """The fixtures store bf16 weights: train in f32, then keep only what bf16 can hold."""
    with torch.no_grad():
        for p in params:
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def teach(params: list[torch.Tensor], lessons: list[Lesson], margin: float, lr: float = 3e-3,
          max_iters: int = 600) -> float:
    """Adam on the summed cross-entropy until, with bf16-rounded weights, every target beats the
    runner-up by `margin` logits. Returns the worst margin reached."""
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    for it in range(max_iters):
        opt.zero_grad()
        worst, loss_sum = float("inf"), 0.0
        with torch.enable_grad():
            for lesson in lessons:
                logits = lesson.forward()
                loss = F.cross_entropy(logits, lesson.targets)
                loss.backward()
                loss_sum += float(loss.detach())
                worst = min(worst, float(margins(logits.detach(), lesson.targets).min()))
        if it % 10 == 0:
            print(f"  iter {it:4d}: loss {loss_sum:.4f} worst margin {worst:.3f}", flush=True)
        # Aim above the bar so bf16 rounding cannot take the margin back under it.
        if worst >= 1.5 * margin:
            break
        opt.step()
    for p in params:
        p.requires_grad_(False)
    round_to_bf16_(params)
    reached = worst_margin(lessons)
    print(f"  after {it} iterations and bf16 rounding: worst margin {reached:.3f}", flush=True)
    if reached < margin:
        raise RuntimeError(f"worst margin {reached:.3f} < {margin}: raise max_iters or lr")
    return reached


def answer_tokens(encode: Callable[[str], list[int]], text: str, n: int) -> torch.Tensor:
    """The first n token ids of `text`: the answer a lesson teaches (cut wherever n falls)."""
    ids = encode(text)
    if len(ids) < n:
        raise ValueError(f"answer {text!r} has {len(ids)} tokens, fewer than {n}")
    return torch.tensor(ids[:n], dtype=torch.long)


def write_back(model_dir: Path, updated: dict[str, torch.Tensor]):
    """Rewrite the checkpoint's shards with `updated` (Hub tensor names) stored as bf16, keeping every
    other tensor byte for byte."""
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    missing = set(updated) - set(index["weight_map"])
    if missing:
        raise KeyError(f"not in the checkpoint: {sorted(missing)}")
    for shard in sorted(set(index["weight_map"].values())):
        path = model_dir / shard
        tensors = load_file(str(path))
        touched = [k for k in tensors if k in updated]
        if not touched:
            continue
        for k in touched:
            assert tensors[k].shape == updated[k].shape, (k, tensors[k].shape, updated[k].shape)
            tensors[k] = updated[k].detach().to(torch.bfloat16).contiguous()
        save_file(tensors, str(path), metadata={"format": "pt"})
        print(f"  {shard}: {len(touched)} tensors rewritten")
