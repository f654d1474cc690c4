"""Embedding extraction sharded across Ray workers (the optional `scale` extra: pip install
"edgetl[scale]").

The driver converts the backbone to ONNX once, into the shared cache folder; each Ray task takes
a shard of whole batches, decodes and embeds it with onnxruntime, and writes every vector into
the same content-addressed cache (edgetl.embeddings), so a rerun or another machine reuses it.
Shards follow the single-process batch boundaries, so the vectors are bit-for-bit the ones one
process computes (tested). On a cluster the cache folder must be shared (NFS or similar) and
every node needs edgetl installed; `ray start --head` then EDGETL_CLUSTER=ray RAY_ADDRESS=...
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.errors import UserError

SHARDS_PER_CPU = 2  # a few shards per worker, so a slow node does not hold up the end


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError(
            'EDGETL_CLUSTER=ray needs Ray: pip install "edgetl[scale]" (or unset it to run '
            "in one process)"
        ) from None
    return ray


def connect(address: str, num_cpus: int | None = None):
    """ray.init once per process: 'local' starts a Ray on this machine, else the address."""
    ray = _ray()
    if not ray.is_initialized():
        kw = {"num_cpus": num_cpus} if address == "local" else {"address": address}
        ray.init(**kw, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


def shard_bounds(n: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """(start, stop) ranges of whole batches covering n items, at most `shards` of them."""
    n_batches = -(-n // batch_size)
    groups = np.array_split(np.arange(n_batches), max(1, min(shards, n_batches)))
    return [(int(g[0]) * batch_size, min(n, (int(g[-1]) + 1) * batch_size)) for g in groups]


def embed_shard(extractor, cache_dir, backbone, paths, keys, size, batch_size) -> int:
    """One worker's shard: embed `paths` with the ONNX extractor and store each vector."""
    import onnxruntime as ort

    from edgetl.embeddings import embed_streamed, store_vector

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(extractor), opts, providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {"image": np.asarray(batch, dtype=np.float32)})[0]

    def keep(start: int, vecs: np.ndarray) -> None:
        for j, vec in enumerate(vecs):
            store_vector(Path(cache_dir), backbone, keys[start + j], vec)

    embed_streamed(run, [Path(p) for p in paths], tuple(size), batch_size, keep)
    return len(paths)


def embed_on_ray(
    address: str,
    extractor: Path,
    cache_dir: Path,
    backbone: str,
    paths: list[Path],
    keys: list[str],
    size: tuple[int, int],
    batch_size: int,
) -> int:
    """Embed `paths` on Ray workers into the cache; returns the number of CPUs used."""
    ray = connect(address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    task = ray.remote(num_cpus=1)(embed_shard)
    refs = [
        task.remote(
            str(extractor),
            str(cache_dir),
            backbone,
            [str(p) for p in paths[a:b]],
            keys[a:b],
            size,
            batch_size,
        )
        for a, b in shard_bounds(len(paths), batch_size, cpus * SHARDS_PER_CPU)
    ]
    done = sum(ray.get(refs))
    if done != len(paths):
        raise RuntimeError(f"Ray workers embedded {done} of {len(paths)} images")
    return cpus


def predict_shard(pairs: list[tuple[str, object]], files: list[str], contract) -> list:
    """One worker's shard of verify --data, through verify's own streaming (_stream_data) in
    this process: each (runtime name, Artifact) over `files`; per pair the predicted class per
    image, or the error's text (that artifact fails, the others go on)."""
    from edgetl.results import RuntimeStatus
    from edgetl.runtimes.base import RUNTIMES, RunContext
    from edgetl.verifier import Batch, Job, LabelledData, _load_runtime_modules, _stream_data

    _load_runtime_modules()
    jobs: dict[str, Job] = {}
    for name, artifact in pairs:
        job = jobs.setdefault(name, Job(RuntimeStatus(name, True), RUNTIMES.get(name), []))
        job.artifacts.append(artifact)
    data = LabelledData([Path(f) for f in files], np.zeros(len(files), np.int64), contract)
    with RunContext() as context:
        _stream_data(list(jobs.values()), Batch(None, data), context, lambda _msg: None)
    out = [jobs[name].predicted[artifact.id] for name, artifact in pairs]
    return [f"{type(p).__name__}: {p}" if isinstance(p, Exception) else p for p in out]


def predict_on_ray(
    address: str, pairs: list[tuple[str, object]], files: list[Path], contract, chunk: int
) -> tuple[list, int]:
    """verify --data's predictions sharded over Ray workers (shards of whole chunks; the files
    must be readable on every node): per pair the class per image or a RuntimeError, and the
    number of CPUs used."""
    ray = connect(address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    task = ray.remote(num_cpus=1)(predict_shard)
    bounds = shard_bounds(len(files), chunk, cpus * SHARDS_PER_CPU)
    refs = [task.remote(pairs, [str(f) for f in files[a:b]], contract) for a, b in bounds]
    merged: list = [np.full(len(files), -1, np.int32) for _ in pairs]
    for (a, b), shard in zip(bounds, ray.get(refs), strict=True):
        for k, got in enumerate(shard):
            if isinstance(merged[k], Exception):
                continue
            if isinstance(got, str):
                merged[k] = RuntimeError(f"on a Ray worker (images {a}..{b - 1}): {got}")
            else:
                merged[k][a:b] = got
    return merged, cpus
