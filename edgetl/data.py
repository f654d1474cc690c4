"""Image folders (one sub-folder per class): scanning, checking, decoding and resizing, and
sample_images(), the images export uses as probes and int8 calibration and verify --data reads.

Resizing is bilinear with half-pixel centers and no antialiasing, written in numpy so that it
is bit-for-bit the math of `tf.image.resize(method="bilinear")` and TF.js
`tf.image.resizeBilinear(x, size, alignCorners=false, halfPixelCenters=true)`: Python, Node and
the browser feed the model the same pixels.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.contract import InputContract
from edgetl.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageFolder:
    root: Path
    classes: list[str]  # sorted, deterministic: index = label
    files: list[Path]
    labels: np.ndarray  # int64 class index per file
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, why)

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}


def _class_sort_key(name: str) -> str:
    # NFC so that the same visible name sorts the same on macOS (NFD) and Linux.
    return unicodedata.normalize("NFC", name)


def scan_image_folder(
    root: str | Path,
    *,
    check_decodable: bool = True,
    min_classes: int = 2,
    allow_flat: bool = False,
) -> ImageFolder:
    """List images per class; refuse empty classes and single-class folders with a clear message.

    Non-image files and images that do not decode (corrupt, truncated) are skipped and listed.
    Only regular files are read (a FIFO or device named x.png would block or never end), and
    symbolic links are not followed, in either direction: a link out of the folder reads
    what the user did not give, a link back into it duplicates images or whole classes. Both are
    skipped and listed. allow_flat: a folder of images without sub-folders is one class ("").
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"data folder {str(root)!r} does not exist or is not a folder")
    skipped: list[tuple[Path, str]] = []
    class_dirs = _class_dirs(root, skipped)
    flat = False
    if not class_dirs and allow_flat:
        class_dirs, flat = [root], True
    if len(class_dirs) < min_classes:
        found = ", ".join(p.name for p in class_dirs) or "none"
        raise UserError(
            f"{root} needs one sub-folder per class and at least {min_classes} classes; "
            f"found {len(class_dirs)} ({found})"
        )
    files: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for idx, d in enumerate(class_dirs):
        images = _class_images(d, skipped, recursive=not flat, check_decodable=check_decodable)
        files += images
        labels += [idx] * len(images)
        if not images:
            empty.append(d.name)
    if empty:
        raise UserError(
            f"class folder(s) with no usable images in {root}: {', '.join(empty)}. "
            "Add images or remove the folder." + _skipped_hint(skipped)
        )
    return ImageFolder(
        root,
        [""] if flat else [_class_sort_key(d.name) for d in class_dirs],
        files,
        np.asarray(labels, dtype=np.int64),
        skipped,
    )


def _class_dirs(root: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """The class sub-folders of `root`, sorted; linked folders are skipped and listed."""
    try:
        entries = sorted(root.iterdir(), key=lambda p: _class_sort_key(p.name))
    except OSError as e:
        raise UserError(f"cannot read data folder {root}: {e.strerror or e}") from None
    class_dirs = []
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_symlink():
            if p.is_dir():
                skipped.append((p, "symbolic link to a folder (not followed)"))
            continue  # linked files at the top level are neither classes nor images of one
        if p.is_dir():
            class_dirs.append(p)
    return class_dirs


def _class_images(
    folder: Path, skipped: list[tuple[Path, str]], *, recursive: bool, check_decodable: bool
) -> list[Path]:
    """The usable images of one class folder; non-images and undecodable files are listed."""
    images = []
    for p in _walk_files(folder, skipped, recursive=recursive):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((p, "not an image file"))
            continue
        why = _decode_problem(p) if check_decodable else None
        if why:
            skipped.append((p, why))
            continue
        images.append(p)
    return images


def _walk_files(top: Path, skipped: list[tuple[Path, str]], recursive: bool = True) -> list[Path]:
    """Regular files under `top` (sorted, hidden names left out), without following links."""
    out: list[Path] = []
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            skipped.append((d, f"unreadable folder ({e.strerror or e})"))
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            p = Path(e.path)
            if e.is_symlink():
                skipped.append((p, "symbolic link (not followed)"))
            elif e.is_dir(follow_symlinks=False):
                if recursive:
                    stack.append(p)
            elif e.is_file(follow_symlinks=False):
                out.append(p)
            else:
                skipped.append((p, "not a regular file (FIFO, socket or device)"))
    return sorted(out, key=lambda p: str(p))


def _skipped_hint(skipped: list[tuple[Path, str]]) -> str:
    if not skipped:
        return ""
    return f" ({len(skipped)} file(s) skipped, e.g. {skipped[0][0].name}: {skipped[0][1]})"


def _decode_problem(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # full decode: catches truncated files that verify() lets through
    except Exception as e:  # PIL raises many types for bad files
        return f"unreadable image ({type(e).__name__}: {e})"
    return None


def read_rgb(path: Path) -> np.ndarray:
    """Decode any image (grayscale, RGBA, palette, 16-bit) to uint8 RGB (H, W, 3).

    16-bit and 32-bit images are scaled to 0..255 (65535 -> 255), not clipped: PIL's own
    convert("RGB") clips an I;16 image, which turns most 16-bit photos almost white."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I") or im.mode == "F":
            return _high_depth_to_rgb(im)
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            # Composite on white: transparent pixels have arbitrary RGB otherwise.
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _high_depth_to_rgb(im) -> np.ndarray:
    """Grayscale I;16 / I (32-bit int) / F (float) -> uint8 RGB, scaled by the format's range."""
    a = np.asarray(im)
    if a.dtype.kind == "f":
        a = a.astype(np.float64)
        finite = a[np.isfinite(a)]
        peak = float(finite.max()) if finite.size else 0.0
        # Float images are 0..1 by convention; larger values are taken as 0..255 or 0..65535.
        scale = 255.0 if peak <= 1.0 else (1.0 if peak <= 255.0 else 255.0 / 65535.0)
        a = np.nan_to_num(a) * scale
    elif im.mode.startswith("I;16") or a.dtype.itemsize == 2:
        a = a.astype(np.float64) * (255.0 / 65535.0)
    else:  # "I": 32-bit container; PNG/TIFF 16-bit data when values exceed 8 bits
        a = a.astype(np.float64)
        a = a * (255.0 / 65535.0) if a.max(initial=0) > 255 else a
    g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1) if g.ndim == 2 else g[..., :3]


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, half-pixel centers, no antialias: (H, W, C) -> (height, width, C) float32."""
    src = image.astype(np.float32)
    in_h, in_w = src.shape[:2]
    if (in_h, in_w) == (height, width):
        return src

    def axis(n_out: int, n_in: int):
        scale = n_in / n_out
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
        x = np.clip(x, 0, None)
        lo = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = (x - lo).astype(np.float32)
        return lo, hi, frac

    y0, y1, fy = axis(height, in_h)
    x0, x1, fx = axis(width, in_w)
    top = src[y0][:, x0] + (src[y0][:, x1] - src[y0][:, x0]) * fx[None, :, None]
    bot = src[y1][:, x0] + (src[y1][:, x1] - src[y1][:, x0]) * fx[None, :, None]
    return (top + (bot - top) * fy[:, None, None]).astype(np.float32)


def load_image(path: Path, height: int, width: int) -> np.ndarray:
    """The model input for one file: float32 (height, width, 3), RGB 0..255."""
    return resize_bilinear(read_rgb(path), height, width)


def load_images(paths: list[Path], height: int, width: int, progress: bool = False) -> np.ndarray:
    it = paths
    if progress and len(paths) > 50 and show_progress():
        from tqdm import tqdm

        it = tqdm(paths, desc="decoding images", unit="img", leave=False)
    out = np.empty((len(paths), height, width, 3), dtype=np.float32)
    for i, p in enumerate(it):
        out[i] = load_image(p, height, width)
    return out


STDERR_IS_TTY: bool | None = None  # set by the CLI before it routes stderr through a filter


def show_progress() -> bool:
    """Progress bars only on a terminal: in a log file they are hundreds of \\r frames."""
    import sys

    if STDERR_IS_TTY is not None:
        return STDERR_IS_TTY
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping class proportions; every class with >= 2 images gets >= 1 val image."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"validation fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction) if val_fraction > 0 else 0
        if val_fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])
    return np.sort(np.asarray(train_idx, dtype=np.int64)), np.sort(
        np.asarray(val_idx, dtype=np.int64)
    )


def interleave_by_class(labels: np.ndarray, limit: int) -> list[int]:
    """Indices of at most `limit` items taken round-robin across classes (file order kept within
    each), so any prefix covers every class: calibration/probe images and --data samples."""
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    limit = min(int(limit), len(labels))
    picked: list[int] = []
    depth = 0  # one pass per round: linear, for --data over a 50k-image folder too
    while len(picked) < limit:
        for idx in by_class:
            if depth < len(idx) and len(picked) < limit:
                picked.append(int(idx[depth]))
        depth += 1
    return picked


# Images sampled from a folder at export: int8 calibrates on them (300 measured better than 100,
# converters/tflite.py) and the probes are picked among them.
SAMPLE_LIMIT = 300


def to_channels(images: np.ndarray, contract: InputContract) -> np.ndarray:
    """RGB (..., 3) -> the contract's channels: itself, or (..., 1) gray by its gray_weights."""
    if contract.channels == 3:
        return images
    weights = np.asarray(contract.gray_weights, np.float32)
    return (np.asarray(images, np.float32) @ weights)[..., None].astype(np.float32)


def images_in_range(images: np.ndarray, contract: InputContract) -> np.ndarray:
    """RGB 0..255 pixels -> what the model takes: the contract's channels (gray: BT.601 luma),
    then its value range (identity for edgetl's own models)."""
    images = to_channels(images, contract)
    lo, hi = contract.value_range
    if (lo, hi) == (0.0, 255.0):
        return images
    return (images / 255.0 * (hi - lo) + lo).astype(np.float32)


def sample_images(
    data_dir: Path,
    contract: InputContract,
    model_labels: list[str],
    limit: int = SAMPLE_LIMIT,
):
    """Up to `limit` images from a class folder, interleaved across classes (so the first few,
    used as probes, cover every class); labels mapped to the model's when names match (None
    where they do not). A folder of images without sub-folders counts as one class."""
    folder = scan_image_folder(data_dir, min_classes=1, allow_flat=True)
    picked = interleave_by_class(folder.labels, limit)
    paths = [folder.files[i] for i in picked]
    images = images_in_range(
        load_images(paths, contract.height, contract.width, progress=True), contract
    )
    index = {name: i for i, name in enumerate(model_labels)}
    labels = [index.get(folder.classes[folder.labels[i]]) for i in picked]
    names = [f"image:{Path(p).relative_to(folder.root).as_posix()}" for p in paths]
    return images, labels, names
