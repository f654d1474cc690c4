"""Backbone embeddings for stage 1, computed once and kept on disk.

The frozen backbone gives the same embedding for the same image every epoch, so (like Teachable
Machine) edgetl runs it once per image and trains the head on the cached vectors. The backbone
runs in the fastest runtime at hand: onnxruntime (measured ~11x faster than Keras `predict` at
batch 1 for MobileNetV2 1.0/224 on 2 cores), with Keras as the fallback.

Cache layout (default ~/.cache/edgetl, or $EDGETL_CACHE):
    extractors/<backbone_key>.onnx              the backbone + pooling, converted once
    embeddings/<backbone_key>/<image_sha256>.vec   one float32 vector per image file
Keys are content hashes: the backbone's weights and config, the image file's bytes and the
input size, so renaming a file or changing head settings reuses the cache, and nothing stale
is ever read after weights change.

Each .vec entry carries its length and the sha256 of its bytes (VEC_MAGIC header): an entry
that a crash or a full disk left empty, truncated or garbled is recomputed, with one line
saying so, never read as a vector or raised as an EOFError. A cache folder that cannot be
written is found before any work (check_cache_dir): a read-only one is still read (a shared,
pre-filled cache), one that cannot be read either is left out; each with one line saying what
to set.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.errors import UserError
from edgetl.outdir import atomic_write

EXTRACTOR_OUTPUT = "embedding"
VEC_SUFFIX = ".vec"  # .npy entries of earlier versions carried no checksum; they are not read
VEC_MAGIC = b"EDGETLV1"
_VEC_HEADER = struct.Struct("<8sI32s")  # magic, vector length, sha256 of the float32 bytes


class CorruptEntry(ValueError):
    """A cache entry whose header, length or checksum does not hold."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGETL_CACHE", Path.home() / ".cache" / "edgetl"))


@dataclass
class CacheAccess:
    """What the embedding cache may do here, found before any work."""

    folder: Path | None  # None: no cache this run
    writable: bool
    note: str | None = None  # the one line saying why, when not the full cache


def check_cache_dir(setting: str | None) -> CacheAccess:
    """`--cache-dir` (None: $EDGETL_CACHE or ~/.cache/edgetl; "": off) checked up front.

    A cache only saves time (the vectors are the same either way), so a folder that cannot be
    written does not stop training: if it can be read it is used read-only (a cache shared
    read-only between users or CI jobs still gives its hits), else training runs without one.
    Either way one line says so and what to set."""
    if setting == "":
        return CacheAccess(None, False)
    folder = Path(setting).expanduser() if setting else default_cache_dir()
    flag = "--cache-dir" if setting else "$EDGETL_CACHE"
    fix = f"set {flag} to a writable folder ('' turns the cache off)"
    if folder.exists() and not folder.is_dir():
        return CacheAccess(
            None, False, f"note: embedding cache {folder} is a file; no cache this run ({fix})"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".edgetl-write-test-", dir=folder))
        return CacheAccess(folder, True)
    except OSError as e:
        why = e.strerror or str(e)
    if os.access(folder, os.R_OK | os.X_OK) and folder.is_dir():
        return CacheAccess(
            folder,
            False,
            f"note: embedding cache {folder} cannot be written ({why}): reading the vectors it "
            f"has, computing the rest without storing them ({fix} to keep them)",
        )
    return CacheAccess(
        None,
        False,
        f"note: embedding cache {folder} cannot be used ({why}): no cache this run ({fix})",
    )


def backbone_key(embedding_model) -> str:
    """Hash of the embedding model's structure and weight values. Layer and model names are left
    out: Keras numbers auto-named models per process, and names do not change the output."""
    h = hashlib.sha256()
    h.update(repr(tuple(embedding_model.input_shape)).encode())
    h.update(repr(_structure(embedding_model)).encode())
    for w in embedding_model.weights:
        a = np.ascontiguousarray(w.numpy())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _structure(model) -> list:
    """Layer classes and activations, recursively (e.g. V3 hard_swish vs V2 relu6)."""
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            out.append(_structure(layer))
        else:
            act = getattr(layer, "activation", None)
            out.append((type(layer).__name__, getattr(act, "__name__", None)))
    return out


@dataclass
class EmbeddingStats:
    runtime: str = ""
    computed: int = 0
    from_cache: int = 0
    extractor_from_cache: bool = False
    seconds: float = 0.0
    images_per_s: float = 0.0  # of the images computed (decoding overlapped with the backbone)
    workers: str = "this process"  # or "ray: N CPUs" (edgetl.cluster)
    notes: list[str] = field(default_factory=list)


class EmbeddingCache:
    def __init__(
        self,
        embedding_model,
        cache_dir: Path | None,
        *,
        runtime: str = "auto",
        batch_size: int = 32,
        cluster: str | None = None,
        writable: bool = True,
    ) -> None:
        self.model = embedding_model
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.writable = writable  # False: a read-only cache, read but never written
        self.runtime = runtime
        self.batch_size = batch_size
        self.cluster = cluster  # None: $EDGETL_CLUSTER (edgetl.distribute.cluster_setting)
        self.key = backbone_key(embedding_model)
        _, self.h, self.w, _ = embedding_model.input_shape
        self.dim = int(embedding_model.output_shape[-1])
        self.stats = EmbeddingStats()
        self._session = None

    def embed_files(self, paths: list[Path], progress: bool = True, out=None):
        """Embeddings for image files (decoded and resized exactly as at inference), streamed in
        batches; with a Ray cluster setting, the missing ones are computed by Ray workers.
        `out`: where the rows go (an (n, dim) array or edgetl.pipeline.VectorFile, which keeps
        them on disk); default a new array. Returns `out`."""
        import time

        from edgetl.distribute import cluster_setting, ray_address

        t0 = time.perf_counter()
        if out is None:
            out = np.empty((len(paths), self.dim), dtype=np.float32)
        keys, missing = self._from_cache(paths, out)
        address = ray_address(cluster_setting(self.cluster))
        if missing:
            self._onnx_session()  # the one-off conversion is not extraction throughput
        t1 = time.perf_counter()
        if missing and address is not None:
            self._embed_on_ray(address, paths, keys, missing, out)
        elif missing:
            self._embed_here(paths, keys, missing, out, progress)
        if missing:
            self.stats.computed += len(missing)
            self.stats.images_per_s = len(missing) / max(time.perf_counter() - t1, 1e-9)
        elif not self.stats.runtime:
            self.stats.runtime = "cache"
        self.stats.seconds += time.perf_counter() - t0
        return out

    def _from_cache(self, paths: list[Path], out) -> tuple[list[str], list[int]]:
        """Fill `out` from the cache; returns every image's content key and the rows missing."""
        from edgetl.manifest import sha256_file

        missing: list[int] = []
        keys = []
        bad: list[Path] = []
        for i, p in enumerate(paths):
            k = f"{sha256_file(p)}-{self.h}x{self.w}"
            keys.append(k)
            cached = self._cache_file(k)
            if cached is not None and cached.is_file():
                try:
                    out[i] = load_vector(cached, self.dim)
                    self.stats.from_cache += 1
                    continue
                except (OSError, CorruptEntry):
                    bad.append(cached)  # recomputed below (and stored again, if writable)
            missing.append(i)
        if bad:
            note = (
                f"note: {len(bad)} embedding-cache entr{'y was' if len(bad) == 1 else 'ies were'}"
                f" empty or corrupt (e.g. {bad[0]}, as a crash or a full disk leaves); "
                "recomputing them"
            )
            self.stats.notes.append(note)
            print(note, file=sys.stderr)
        return keys, missing

    def _embed_on_ray(self, address, paths, keys, missing, out) -> None:
        """The missing rows computed by Ray workers into the shared cache, then read back."""
        from edgetl.cluster import embed_on_ray

        if self.cache_dir is None or not self.writable or self._onnx_session() is None:
            raise UserError(
                "Ray embedding needs the onnxruntime extractor and a cache folder the "
                "workers share (--cache-dir or $EDGETL_CACHE)"
            )
        cpus = embed_on_ray(
            address,
            self._extractor_path,
            self.cache_dir,
            self.key,
            [paths[i] for i in missing],
            [keys[i] for i in missing],
            (self.h, self.w),
            self.batch_size,
        )
        self.stats.workers = f"ray: {cpus} CPUs"
        for i in missing:
            out[i] = load_vector(self._cache_file(keys[i]), self.dim)

    def _embed_here(self, paths, keys, missing, out, progress: bool) -> None:
        """The missing rows computed in this process, batch by batch, each stored as it comes."""
        from edgetl.data import show_progress

        bar = None
        if progress and len(missing) > self.batch_size and show_progress():
            from tqdm import tqdm

            bar = tqdm(total=len(missing), desc="embedding images", unit="img", leave=False)

        def keep(start: int, vecs: np.ndarray) -> None:
            for j, i in enumerate(missing[start : start + len(vecs)]):
                out[i] = vecs[j]
                self._store(keys[i], vecs[j])
            if bar is not None:
                bar.update(len(vecs))

        todo = [paths[i] for i in missing]
        embed_streamed(self.embed_arrays, todo, (self.h, self.w), self.batch_size, keep)
        if bar is not None:
            bar.close()

    def embed_arrays(self, images: np.ndarray) -> np.ndarray:
        """Embeddings for a float32 (N, H, W, 3) 0..255 batch, not cached."""
        session = self._onnx_session()
        if session is not None:
            return session.run(None, {"image": np.asarray(images, dtype=np.float32)})[0]
        self.stats.runtime = "keras"
        return np.asarray(
            self.model.predict(images, batch_size=self.batch_size, verbose=0), dtype=np.float32
        )

    def _cache_file(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return cache_file(self.cache_dir, self.key, key)

    def _store(self, key: str, vec: np.ndarray) -> None:
        if self.cache_dir is not None and self.writable:
            store_vector(self.cache_dir, self.key, key, vec)

    def _onnx_session(self):
        """An onnxruntime session for the backbone, converting (and caching) it on first use."""
        if self._session is not None or self.runtime == "keras":
            return self._session
        try:
            import onnxruntime as ort

            from edgetl.converters.onnx import convert_onnx
        except ImportError as e:
            self.stats.notes.append(f"onnxruntime unavailable ({e}); using Keras")
            self.runtime = "keras"
            return None
        tmpdir = None
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / "extractors" / f"{self.key}.onnx"
            if not self.writable and not path.is_file():
                path = None
        if path is None:
            tmpdir = tempfile.TemporaryDirectory(prefix="edgetl-extractor-")
            path = Path(tmpdir.name) / "extractor.onnx"
        try:
            if path.is_file():
                self.stats.extractor_from_cache = True
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                convert_onnx(self.model, tmp, output_name=EXTRACTOR_OUTPUT)
                tmp.replace(path)
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(
                str(path), opts, providers=["CPUExecutionProvider"]
            )
            self._extractor_path = path
        except Exception as e:  # conversion of an exotic backbone: Keras still works
            if self.runtime == "onnxruntime":
                raise
            self.stats.notes.append(f"ONNX extractor failed ({type(e).__name__}: {e}); using Keras")
            self.runtime = "keras"
            return None
        finally:
            if tmpdir is not None:
                self._tmpdir = tmpdir  # keep alive as long as the session
        self.stats.runtime = "onnxruntime"
        return self._session


def cache_file(cache_dir: Path, backbone: str, image_key: str) -> Path:
    """Where one image's vector lives: content-addressed, so any worker may write it."""
    return Path(cache_dir) / "embeddings" / backbone / f"{image_key}{VEC_SUFFIX}"


def encode_vector(vec: np.ndarray) -> bytes:
    """A cache entry: header (magic, length, sha256 of the payload) + float32 little-endian."""
    payload = np.ascontiguousarray(vec, dtype="<f4").reshape(-1).tobytes()
    digest = hashlib.sha256(payload).digest()
    return _VEC_HEADER.pack(VEC_MAGIC, len(payload) // 4, digest) + payload


def load_vector(path: Path, dim: int | None = None) -> np.ndarray:
    """One cache entry, checked: CorruptEntry when its header, length or checksum is wrong."""
    data = Path(path).read_bytes()
    if len(data) < _VEC_HEADER.size:
        raise CorruptEntry(f"{path}: {len(data)} bytes, shorter than the header")
    magic, n, digest = _VEC_HEADER.unpack_from(data)
    payload = data[_VEC_HEADER.size :]
    if magic != VEC_MAGIC or len(payload) != 4 * n or (dim is not None and n != dim):
        raise CorruptEntry(f"{path}: not a {dim}-long edgetl vector")
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptEntry(f"{path}: checksum mismatch")
    return np.frombuffer(payload, dtype="<f4").astype(np.float32)


def store_vector(cache_dir: Path, backbone: str, image_key: str, vec: np.ndarray) -> None:
    path = cache_file(cache_dir, backbone, image_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, encode_vector(vec))


def embed_streamed(run_batch, paths: list[Path], size: tuple[int, int], batch_size: int, keep):
    """Run `run_batch` on `paths` in batches of `batch_size` (fixed boundaries: batch b holds
    paths[b*batch_size:...], so a shard of whole batches gives the same vectors bit for bit),
    decoding through edgetl.pipeline ahead of the model; keep(start, vectors) per batch."""
    from edgetl.pipeline import ImageFiles

    images = ImageFiles(list(paths), *size).batches(batch_size)
    for start, batch in zip(range(0, len(paths), batch_size), images, strict=True):
        keep(start, run_batch(batch))
