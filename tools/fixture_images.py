"""The test images of `tests/fixtures/images/` (written by `make_fixtures.py`): gradients, text-like
marks and odd sizes that exercise the image processors' resizing, padding and cropping.
Deterministic: the same bytes on every run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

def _grad(w, h, c0, c1, horizontal=True):
    t = np.linspace(0, 1, w if horizontal else h, dtype=np.float32)
    t = t[None, :, None] if horizontal else t[:, None, None]
    a = np.array(c0, np.float32)[None, None] * (1 - t) + np.array(c1, np.float32)[None, None] * t
    return np.broadcast_to(a, (h, w, 3)).copy()


def _text_marks(d: ImageDraw.ImageDraw, x0, y0, x1, y1, rng, color=(20, 20, 20), size=10):
    """Rows of small blocks that look like lines of text."""
    y = y0
    while y + size <= y1:
        x = x0
        while x + size <= x1:
            wlen = int(rng.integers(2, 7))
            for _ in range(wlen):
                if x + size > x1:
                    break
                hh = int(rng.integers(size // 2, size + 1))
                d.rectangle([x, y + size - hh, x + size * 0.7, y + size], fill=color)
                x += size
            x += size
        y += int(size * 1.8)


def make_images(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    imgs = {}

    a = _grad(336, 336, (255, 0, 0), (0, 0, 255))
    a[:, :, 1] = np.linspace(0, 255, 336)[:, None]
    imgs["gradient_336x336.png"] = Image.fromarray(a.astype(np.uint8))

    im = Image.fromarray(_grad(640, 480, (240, 240, 200), (120, 180, 240)).astype(np.uint8))
    d = ImageDraw.Draw(im)
    d.ellipse([60, 60, 260, 260], fill=(220, 40, 40), outline=(0, 0, 0), width=4)
    d.rectangle([330, 120, 600, 400], fill=(40, 160, 60))
    d.polygon([(100, 440), (300, 300), (420, 460)], fill=(250, 200, 0))
    imgs["shapes_640x480.png"] = im

    im = Image.fromarray(_grad(480, 640, (30, 30, 60), (200, 220, 255), horizontal=False).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for k in range(0, 480, 40):
        d.rectangle([k, 0, k + 18, 200], fill=(255, 255, 255) if (k // 40) % 2 else (255, 120, 0))
    d.ellipse([140, 300, 340, 500], fill=(0, 200, 200))
    _text_marks(d, 30, 540, 450, 630, rng)
    imgs["portrait_480x640.png"] = im

    im = Image.fromarray(_grad(1000, 600, (250, 250, 250), (180, 200, 160)).astype(np.uint8))
    d = ImageDraw.Draw(im)
    d.rectangle([50, 50, 450, 300], fill=(30, 60, 200))
    d.ellipse([550, 80, 900, 430], fill=(230, 90, 20))
    _text_marks(d, 60, 380, 940, 570, rng)
    imgs["wide_1000x600.png"] = im

    im = Image.fromarray(_grad(600, 1000, (255, 230, 230), (40, 0, 80), horizontal=False).astype(np.uint8))
    d = ImageDraw.Draw(im)
    d.rectangle([100, 100, 500, 400], fill=(250, 250, 0), outline=(0, 0, 0), width=6)
    d.ellipse([150, 550, 450, 850], fill=(0, 120, 255))
    imgs["tall_600x1000.png"] = im

    # 5x5-pixel random blocks plus a little noise: busy, yet the upscaled HD canvas stays compressible
    blocks = rng.integers(0, 256, (10, 10, 3)).repeat(5, 0).repeat(5, 1)
    noise = rng.integers(-6, 7, (50, 50, 3))
    imgs["tiny_50x50.png"] = Image.fromarray(np.clip(blocks + noise, 0, 255).astype(np.uint8))

    a = np.zeros((300, 20, 3), np.uint8)
    a[:, :, 0] = (np.arange(300) % 30 < 15)[:, None] * 255
    a[:, :, 2] = np.linspace(0, 255, 20)[None, :]
    imgs["strip_20x300.png"] = Image.fromarray(a)

    im = Image.new("RGB", (1600, 120), (255, 255, 255))
    d = ImageDraw.Draw(im)
    _text_marks(d, 20, 15, 1580, 105, rng, color=(0, 0, 120), size=12)
    d.line([(0, 118), (1600, 118)], fill=(200, 0, 0), width=3)
    imgs["banner_1600x120.png"] = im

    a = _grad(120, 1600, (0, 80, 0), (200, 255, 200), horizontal=False).astype(np.uint8)
    a[(np.arange(1600) // 50) % 2 == 0, :60] = (255, 255, 0)
    imgs["pillar_120x1600.png"] = Image.fromarray(a)

    yy, xx = np.mgrid[0:800, 0:800]
    chk = (((yy // 100) + (xx // 100)) % 2).astype(np.uint8)
    a = np.stack([chk * 230 + 10, (1 - chk) * 200 + 20, np.full_like(chk, 90)], -1).astype(np.uint8)
    imgs["checker_800x800.png"] = Image.fromarray(a)

    im = Image.fromarray(_grad(1280, 720, (10, 10, 40), (10, 90, 160)).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for k in range(8):
        d.ellipse([80 + 140 * k, 200 + 20 * k, 200 + 140 * k, 320 + 20 * k],
                  fill=(255 - 30 * k, 40 + 25 * k, 100))
    _text_marks(d, 100, 560, 1180, 700, rng, color=(250, 250, 250), size=14)
    imgs["hd_1280x720.png"] = im

    im = Image.fromarray(_grad(333, 777, (90, 0, 0), (255, 200, 120), horizontal=False).astype(np.uint8))
    d = ImageDraw.Draw(im)
    d.rectangle([20, 300, 310, 480], fill=(0, 0, 0))
    d.ellipse([60, 40, 270, 250], fill=(255, 255, 255))
    imgs["odd_333x777.png"] = im

    imgs["pixel_1x1.png"] = Image.new("RGB", (1, 1), (200, 30, 120))

    g = Image.fromarray(np.clip(_grad(400, 300, (0, 0, 0), (255, 255, 255))[:, :, 0], 0, 255).astype(np.uint8), "L")
    d = ImageDraw.Draw(g)
    d.ellipse([100, 50, 300, 250], fill=40)
    imgs["gray_400x300.png"] = g

    # RGBA: alpha ramps left->right; the colour under transparent pixels is vivid magenta so that a
    # composite-on-white conversion (which HF's generic convert_to_rgb does NOT do) would be visible.
    a = np.zeros((200, 300, 4), np.uint8)
    a[..., 0] = 255
    a[..., 1] = np.linspace(0, 255, 200).astype(np.uint8)[:, None]
    a[..., 2] = 255
    a[..., 3] = np.linspace(0, 255, 300).astype(np.uint8)[None, :]
    a[60:140, 200:280, :] = (0, 90, 0, 255)
    imgs["rgba_300x200.png"] = Image.fromarray(a, "RGBA")

    for name, im in imgs.items():
        im.save(out / name, format="PNG", optimize=True)
    return sorted(imgs)
