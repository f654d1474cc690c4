"""The tf.data input pipeline: file list -> parallel decode and resize -> batch -> prefetch.

Training (stage 2, --augment, --full-forward), evaluation and embedding extraction read images
through it instead of decoding a whole folder into one array (0.6 MB per image at 224 px), so
memory stays bounded by a few batches whatever the folder's size. Decoding and resizing call
edgetl.data.load_image, the contract's own code, inside `tf.numpy_function`: the pixels are
bit-for-bit those of `load_images` (tested), and the decoder overlaps the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PREFETCH_BATCHES = 2  # batches decoded ahead of the model: enough to hide the decoder


@dataclass
class ImageFiles:
    """Images on disk at the model's input size: `len()`, `[index array]` (a subset) and
    `batches()` stand in for a decoded (N, H, W, 3) array without holding one."""

    files: list[Path]
    height: int
    width: int

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx) -> ImageFiles:
        return ImageFiles([self.files[int(i)] for i in np.asarray(idx)], self.height, self.width)

    def batches(self, batch_size: int, order=None, threads: int | None = None) -> Iterator:
        """float32 (n, H, W, 3) 0..255 batches in `order` (default: file order)."""
        import tensorflow as tf

        from edgetl.data import load_image

        files = self.files if order is None else [self.files[int(i)] for i in order]
        if not files:
            return iter(())
        h, w = self.height, self.width

        def decode(path):
            return load_image(Path(path.decode()), h, w)

        def load(path):
            x = tf.numpy_function(decode, [path], tf.float32, stateful=False)
            return tf.ensure_shape(x, (h, w, 3))

        ds = tf.data.Dataset.from_tensor_slices([str(p) for p in files])
        parallel = tf.data.AUTOTUNE if threads is None else threads
        ds = ds.map(load, num_parallel_calls=parallel, deterministic=True)
        return ds.batch(batch_size).prefetch(PREFETCH_BATCHES).as_numpy_iterator()


@dataclass
class Rows:
    """Rows `idx` of an in-memory array, not copied: a training subset of a 50k x 1280
    embedding matrix would be another 200 MB."""

    data: np.ndarray
    idx: np.ndarray

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i) -> Rows:
        return Rows(self.data, self.idx[np.asarray(i)])

    def batches(self, batch_size: int, order=None) -> Iterator[np.ndarray]:
        idx = self.idx if order is None else self.idx[np.asarray(order)]
        for i in range(0, len(idx), batch_size):
            yield self.data[idx[i : i + batch_size]]


def rows(x, idx):
    """x[idx] without copying an in-memory array (ImageFiles subsets are lists of paths)."""
    return x[idx] if isinstance(x, ImageFiles | Rows) else Rows(x, np.asarray(idx))


def iter_batches(x, batch_size: int, order=None) -> Iterator[np.ndarray]:
    """Batches of an array, Rows or ImageFiles, in `order` (default: as stored)."""
    if isinstance(x, ImageFiles | Rows):
        yield from x.batches(batch_size, order)
        return
    order = np.arange(len(x)) if order is None else order
    for i in range(0, len(order), batch_size):
        yield x[order[i : i + batch_size]]


def predict(model, x, batch_size: int = 32) -> np.ndarray:
    """The model's outputs on an array or ImageFiles, batch by batch (bounded memory). A plain
    compiled call, not `model.predict`: under tf.distribute predict splits each batch across
    the workers and returns every worker's rows."""
    import tensorflow as tf

    infer = tf.function(lambda b: model(b, training=False), reduce_retracing=True)
    outs = [infer(b).numpy() for b in iter_batches(x, batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, *model.output_shape[1:]), np.float32)
