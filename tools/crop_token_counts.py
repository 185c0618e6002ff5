"""Image-token counts of both Hub processors for several crop limits: writes
tests/fixtures/goldens/crop_limits.json, checked by crates/phive/tests/crop_limits.rs.

The count depends only on the image size and the crop limit, so this needs no torch: the size
arithmetic below is copied line for line from the Hub's remote code (the same lines
tools/reference_phi3v.py and tools/phi4mm/reference.py follow), in plain CPython, so Phi-4's
tie-breaking sees the real `sorted(set(...))` order. Before writing, every count at the
checkpoints' own settings (num_crops 4, dynamic_hd 36) is checked against the committed
goldens of those torch references.

Run: python3 tools/crop_token_counts.py   (Python 3, standard library only; deterministic)
"""
from __future__ import annotations

import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDENS = ROOT / "tests/fixtures/goldens"

NUM_CROPS = [1, 2, 4, 5, 8, 9, 16, 32]
DYNAMIC_HD = [1, 2, 3, 4, 9, 12, 16, 36, 64]
# The fixture images' sizes, plus larger photos and extreme strips.
EXTRA_SIZES = [(1920, 1080), (4032, 3024), (3000, 3000), (448, 4480), (5000, 60), (900, 1350)]


def phi3v_tokens(width: int, height: int, hd_num: int) -> int:
    # image_processing_phi3_v.py: HD_transform (sizes only) and the num_img_tokens formula of
    # Phi3VImageProcessor.preprocess.
    if width < height:
        width, height, trans = height, width, True
    else:
        trans = False
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= hd_num:
        scale += 1
    scale -= 1
    new_w = int(scale * 336)
    new_h = int(new_w / ratio)
    # padding_336: the height up to a multiple of 336
    tar = int(math.ceil(new_h / 336) * 336)
    h, w = (new_w, tar) if trans else (tar, new_w)
    return int((h // 336 * w // 336 + 1) * 144 + 1 + (h // 336 + 1) * 12)


def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    # processing_phi4mm.py: Phi4MMImageProcessor.find_closest_aspect_ratio
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def phi4mm_tokens(orig_width: int, orig_height: int, max_num: int, min_num=1, image_size=448,
                  mask_size=32) -> int | None:
    # processing_phi4mm.py: dynamic_preprocess (sizes and mask only) and the token formula of
    # Phi4MMImageProcessor.preprocess; None where the Hub code raises (extreme aspect ratio).
    w_crop_num = math.ceil(orig_width / float(image_size))
    h_crop_num = math.ceil(orig_height / float(image_size))
    if w_crop_num * h_crop_num > max_num:
        aspect_ratio = orig_width / orig_height
        target_ratios = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
                            for j in range(1, n + 1) if i * j <= max_num and i * j >= min_num)
        target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
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
    rows, cols = mask_size * target_aspect_ratio[1], mask_size * target_aspect_ratio[0]
    mask = [[1] * cols for _ in range(rows)]
    if padding_width >= 14:
        for row in mask:
            row[cols - math.floor(padding_width / 14):] = [0] * math.floor(padding_width / 14)
    if padding_height >= 14:
        for r in range(rows - math.floor(padding_height / 14), rows):
            mask[r] = [0] * cols
    if min(new_size[1], target_height) < 10 or min(new_size[0], target_width) < 10:
        return None
    # preprocess: each 32x32 crop mask subsampled [0::2, 0::2] and tiled back; crops start at
    # even rows and columns, so that is the whole mask's [0::2, 0::2].
    down = [row[0::2] for row in mask[0::2]]
    return 256 + 1 + sum(map(sum, down)) + sum(row[0] for row in down) + 16


def main() -> None:
    phi3v_ref = json.loads((GOLDENS / "phi3v/preprocess.json").read_text())
    phi4mm_ref = json.loads((GOLDENS / "phi4mm/preprocess.json").read_text())["cases"]
    for case in phi3v_ref:
        assert phi3v_tokens(*case["orig_size"], 4) == case["num_image_tokens"], case["image"]
    for case in phi4mm_ref:
        assert phi4mm_tokens(*case["original_size"], 36) == case["num_image_tokens"], case["image"]
    sizes = sorted({tuple(c["orig_size"]) for c in phi3v_ref} | {tuple(c["original_size"]) for c in phi4mm_ref}
                   | set(EXTRA_SIZES))
    out = {
        "generator": "tools/crop_token_counts.py",
        "reference": "size arithmetic of the Hub's image_processing_phi3_v.py (HD_transform, num_img_tokens) and "
                     "processing_phi4mm.py (dynamic_preprocess, num_img_tokens); checked against "
                     "goldens/phi3v/preprocess.json at num_crops 4 and goldens/phi4mm/preprocess.json at dynamic_hd 36",
        "phi3v": [{"size": list(s), "num_crops": n, "num_image_tokens": phi3v_tokens(*s, n)}
                  for s in sizes for n in NUM_CROPS],
        "phi4mm": [{"size": list(s), "dynamic_hd": n, "num_image_tokens": phi4mm_tokens(*s, n)}
                   for s in sizes for n in DYNAMIC_HD],
    }
    path = GOLDENS / "crop_limits.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}: {len(out['phi3v'])} + {len(out['phi4mm'])} cases")


if __name__ == "__main__":
    main()
