"""The bundled sample dataset, generated deterministically (nothing binary in the repo).

Three classes of simple shapes (circle, square, triangle) drawn at random positions, sizes and
colours over noisy backgrounds, saved as JPEG and PNG files in one folder per class: a small
but real image-classification task that any backbone, even randomly initialised, can learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_CLASSES = ("circle", "square", "triangle")


def draw_shape(shape: str, size: int, rng: np.random.Generator):
    from PIL import Image, ImageDraw, ImageFilter

    bg = rng.integers(0, 256, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    base = np.clip(bg + noise + np.linspace(-30, 30, size)[None, :, None], 0, 255)
    img = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.18, 0.34) * size
    cx, cy = rng.uniform(r, size - r, 2)
    color = tuple(int(v) for v in (255 - bg + rng.integers(-40, 40, 3)) % 256)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SAMPLE_CLASSES)}")
    return img.filter(ImageFilter.GaussianBlur(0.6))


def make_sample_dataset(root: str | Path, *, per_class: int = 40, size: int = 128,
                        classes: tuple[str, ...] = SAMPLE_CLASSES, seed: int = 0) -> Path:
    """Write `per_class` images per class under root/<class>/; same bytes for the same args."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for c in classes:
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = draw_shape(c, size, rng)
            if i % 4 == 3:
                img.save(d / f"{c}_{i:03d}.png", optimize=False)
            else:
                img.save(d / f"{c}_{i:03d}.jpg", quality=90)
    return root
