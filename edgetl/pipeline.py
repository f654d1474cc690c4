"""The tf.data input pipeline: file list -> parallel decode and resize -> batch -> prefetch.

Training (stage 2, --augment, --full-forward), evaluation and embedding extraction read images
through it instead of decoding a whole folder into one array (0.6 MB per image at 224 px), so
memory stays bounded by a few batches whatever the folder's size. Decoding and resizing call
edgetl.data.load_image, the contract's own code, inside `tf.numpy_function`: the pixels are
bit-for-bit those of `load_images` (tested), and the decoder overlaps the model.
"""

from __future__ import annotations

import os
import tempfile
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


class VectorFile:
    """An (n, dim) float32 matrix in an unlinked temporary file, rows read and written with
    pread/pwrite: stage 1's embeddings (50k x 1280 is 256 MB) live in the page cache, which
    the kernel may drop, not in the process (an np.memmap's touched pages would count in its
    RSS). `x[i] = v`, `x[idx]` (a copy of those rows), `len(x)` and `x.shape` as an array's."""

    def __init__(self, n: int, dim: int, folder: Path | None = None) -> None:
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(prefix="edgetl-vectors-", dir=folder)  # noqa: SIM115 (lives as long as the object)
        self.n, self.dim = int(n), int(dim)
        self._row = self.dim * 4
        os.ftruncate(self._file.fileno(), self.n * self._row)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.dim)

    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.n

    def __setitem__(self, i: int, vec: np.ndarray) -> None:
        data = np.ascontiguousarray(vec, dtype=np.float32).tobytes()
        if len(data) != self._row:
            raise ValueError(f"a row of {self.dim} float32 values expected, got {len(data)} bytes")
        os.pwrite(self._file.fileno(), data, self._index(i) * self._row)

    def __getitem__(self, idx) -> np.ndarray:
        """The rows `idx` (an int or an index array), each run of consecutive rows read with
        one pread."""
        if np.ndim(idx) == 0:
            return self[np.asarray([idx])][0]
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.dim), np.float32)
        if not len(idx):
            return out
        idx = np.where(idx < 0, idx + self.n, idx)
        if idx.min() < 0 or idx.max() >= self.n:
            raise IndexError(f"row index out of range for {self.n} rows")
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        fd = self._file.fileno()
        for run in np.split(np.arange(len(ordered)), np.flatnonzero(np.diff(ordered) != 1) + 1):
            first, count = int(ordered[run[0]]), len(run)
            block = os.pread(fd, count * self._row, first * self._row)
            out[order[run]] = np.frombuffer(block, np.float32).reshape(count, self.dim)
        return out

    def _index(self, i: int) -> int:
        i = int(i) + (self.n if int(i) < 0 else 0)
        if not 0 <= i < self.n:
            raise IndexError(f"row {i} out of range for {self.n} rows")
        return i

    def close(self) -> None:
        self._file.close()


@dataclass
class Rows:
    """Rows `idx` of an array or a VectorFile, not copied: a training subset of a 50k x 1280
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
    """x[idx] without copying an array or VectorFile (ImageFiles subsets are lists of paths)."""
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
