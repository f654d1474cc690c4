"""Scale: the streamed input pipeline, Ray-sharded embeddings and multi-worker training, each
against the single-process result on real runtimes (tf.data, onnxruntime, Ray, gRPC
collectives over localhost)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY


def test_pipeline_gives_the_pixels_of_load_images(sample_data):
    """tf.data decoding (parallel map, batching, any order) is bit-for-bit load_images."""
    from edgetl.data import load_images, scan_image_folder
    from edgetl.pipeline import ImageFiles

    files = scan_image_folder(sample_data).files[:20]
    # 80 px: a real resize of the 96 px sample images, plus PNG and JPEG files.
    expected = load_images(files, 80, 80)
    order = np.random.default_rng(0).permutation(len(files))
    got = np.concatenate(list(ImageFiles(files, 80, 80).batches(7, order)))
    assert got.dtype == np.float32 and got.shape == expected[order].shape
    assert np.array_equal(got, expected[order])


def test_rows_batch_like_the_indexed_array_without_copying_it():
    from edgetl.pipeline import iter_batches, rows

    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    idx, order = np.array([3, 5, 7, 11, 13, 17]), np.array([5, 0, 2, 4, 1, 3])
    sub = rows(x, idx)
    assert len(sub) == 6 and sub.data is x
    got = list(iter_batches(sub, 4, order))
    want = list(iter_batches(x[idx], 4, order))
    assert [g.tolist() for g in got] == [w.tolist() for w in want]
    assert np.array_equal(np.concatenate(list(iter_batches(sub[[1, 2]], 8))), x[[5, 7]])


def test_vector_file_reads_rows_like_the_array(tmp_path):
    from edgetl.pipeline import VectorFile

    x = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
    vf = VectorFile(len(x), 7, folder=tmp_path)
    for i in np.random.default_rng(1).permutation(len(x)):  # written out of order, as a cache
        vf[i] = x[i]
    assert vf.shape == x.shape and len(vf) == 50 and not list(tmp_path.iterdir())  # unlinked
    idx = np.array([3, 4, 5, 49, 0, 4, -1, 10, 11])
    assert np.array_equal(vf[idx], x[idx]) and np.array_equal(vf[7], x[7])
    assert vf[np.array([], np.int64)].shape == (0, 7)
    with pytest.raises(IndexError):
        vf[np.array([50])]
    with pytest.raises(ValueError):
        vf[0] = np.zeros(6)


def test_head_trained_from_a_vector_file_equals_the_in_memory_head(tmp_path):
    """Stage 1 reads its embeddings from disk batch by batch (edgetl.pipeline.VectorFile):
    same seeded batches, same float32 values, so the head, its history and its early-stopping
    epoch are bit for bit those of the in-memory matrix, mixup and validation included."""
    import keras

    from edgetl.classifier import HeadConfig, build_head_model
    from edgetl.pipeline import VectorFile, rows
    from edgetl.train import fit

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=150)
    x = (rng.normal(size=(3, 32))[labels] + rng.normal(size=(150, 32))).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[labels]
    vf = VectorFile(len(x), 32, folder=tmp_path)
    for i, v in enumerate(x):
        vf[i] = v
    tr = rng.permutation(150)[:110]
    va = np.setdiff1d(np.arange(150), tr)
    runs = []
    for data in (x, vf):
        keras.utils.set_random_seed(0)
        head = build_head_model(32, 3, HeadConfig(16, 0.2, 0))
        history, best = fit(
            head,
            (rows(data, tr), y[tr]),
            (rows(data, va), y[va]),
            epochs=6,
            batch_size=16,
            seed=0,
            patience=2,
            sample_weights=np.ones(150, np.float32)[tr],
            learning_rate=0.01,
            mixup=0.2,
        )
        runs.append((history, best, [w.copy() for w in head.get_weights()]))
    (h1, b1, w1), (h2, b2, w2) = runs
    assert h1 == h2 and b1 == b2
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_array_equal(a, b)


def _embedding_model(local_weights):
    from edgetl.models.base import build_backbone

    from edgetl.classifier import HeadConfig, build_classifier, embedding_model

    name, alpha, size = TINY
    features = build_backbone(name, alpha, size, str(local_weights(name)))
    return embedding_model(build_classifier(features, 3, HeadConfig()))


@pytest.mark.slow
def test_ray_embeddings_equal_single_process_bit_for_bit(tmp_path, sample_data, local_weights):
    """2 local Ray workers fill a fresh shared cache; every vector equals the one-process run
    bit for bit, and a second pass reads them all from that cache."""
    ray = pytest.importorskip("ray")
    from edgetl.data import scan_image_folder
    from edgetl.embeddings import EmbeddingCache

    files = scan_image_folder(sample_data).files
    model = _embedding_model(local_weights)
    one = EmbeddingCache(model, tmp_path / "one", runtime="onnxruntime", batch_size=8)
    single = one.embed_files(files, progress=False)
    assert one.stats.computed == len(files) and one.stats.workers == "this process"

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        shared = EmbeddingCache(
            model, tmp_path / "shared", runtime="onnxruntime", batch_size=8, cluster="ray"
        )
        sharded = shared.embed_files(files, progress=False)
        assert shared.stats.workers == "ray: 2 CPUs" and shared.stats.computed == len(files)
    finally:
        ray.shutdown()
    assert sharded.tobytes() == single.tobytes()
    again = EmbeddingCache(model, tmp_path / "shared", runtime="onnxruntime", batch_size=8)
    assert again.embed_files(files, progress=False).tobytes() == single.tobytes()
    assert again.stats.from_cache == len(files) and again.stats.computed == 0


@pytest.mark.slow
def test_ray_verify_data_matches_one_process(tiny_bundle, sample_data, monkeypatch):
    """verify --data on 2 local Ray workers, in 6 shards of 8 images: every artifact's accuracy
    on every image equals the one-process run's, and the report says where the images ran; a
    bad setting is refused before any work."""
    ray = pytest.importorskip("ray")
    from edgetl import verifier, verify
    from edgetl.errors import UserError

    monkeypatch.setattr(verifier, "DATA_CHUNK", 8)

    runtimes = ["onnxruntime-cpu", "litert", "keras"]
    artifacts = ["onnx", "tflite_float32", "tflite_int8"]
    one = verify(tiny_bundle, runtimes=runtimes, artifacts=artifacts, data=sample_data)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sharded = verify(
            tiny_bundle, runtimes=runtimes, artifacts=artifacts, data=sample_data, cluster="ray"
        )
    finally:
        ray.shutdown()
    assert sharded.data["workers"] == "ray: 2 CPUs" and one.data["workers"] == "this process"
    assert sharded.data["keras_accuracy"] == one.data["keras_accuracy"]
    got = {(p.artifact, p.runtime): (p.images, p.accuracy) for p in sharded.pairs}
    want = {(p.artifact, p.runtime): (p.images, p.accuracy) for p in one.pairs}
    assert got == want and all(n == 48 for n, _ in got.values() if n is not None), got
    with pytest.raises(UserError, match="cluster setting"):
        verify(tiny_bundle, runtimes=runtimes, data=sample_data, cluster="spark")


def test_shards_follow_batch_boundaries():
    from edgetl.cluster import shard_bounds

    assert shard_bounds(20, 8, 4) == [(0, 8), (8, 16), (16, 20)]
    assert shard_bounds(64, 8, 2) == [(0, 32), (32, 64)]
    assert shard_bounds(5, 8, 4) == [(0, 5)]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


TRAIN_SCRIPT = """
import json, sys
import numpy as np
from edgetl.train import TrainConfig, train
cfg = TrainConfig(**json.loads(sys.argv[3]))
train(sys.argv[1], sys.argv[2], cfg, progress=False)
"""


def _head_and_base(run_dir: Path) -> list[np.ndarray]:
    import keras

    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    return [np.asarray(w) for w in model.get_weights()]


@pytest.mark.slow
def test_multi_worker_training_equals_one_process(tmp_path, sample_data, local_weights):
    """Stage 1 (cached embeddings) and stage 2 on 2 MultiWorkerMirroredStrategy workers over
    localhost (TF_CONFIG) give the single-process weights: same global batches, each worker
    half of each; dropout 0 (a dropout mask drawn per replica differs from one drawn for the
    whole batch, a real and expected difference). Measured: weights differ by at most 3e-8 here
    and 7.1e-8 with --full-forward stage 1
    (Intel Xeon, 2 cores; the gradient sum across workers rounds differently), so 1e-6
    leaves 14x."""
    name, alpha, size = TINY
    cfg = dict(
        backbone=name,
        alpha=alpha,
        size=size,
        weights=str(local_weights(name)),
        epochs=2,
        batch_size=8,
        dropout=0.0,
        patience=0,
        fine_tune_layers=10,
        fine_tune_epochs=1,
        fine_tune_learning_rate=1e-4,
        cache_dir=str(tmp_path / "cache"),
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "EDGETL_CLUSTER")}
    run = [sys.executable, "-c", TRAIN_SCRIPT, str(sample_data)]
    subprocess.run([*run, str(tmp_path / "one"), json.dumps(cfg)], env=env, check=True)
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        out = str(tmp_path / f"worker{i}")
        workers.append(
            subprocess.Popen(
                [*run, out, json.dumps(cfg)],
                env={**env, "TF_CONFIG": tf_config},
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for w in workers:
        stdout, _ = w.communicate(timeout=600)
        assert w.returncode == 0
        assert "training on MultiWorkerMirroredStrategy, 2 replicas" in stdout
    single = _head_and_base(tmp_path / "one")
    # The same stage order on workers: scored on validation before the refit, then stage 1
    # and stage 2 again on train + val.
    for run in ("one", "worker0", "worker1"):
        m = json.loads((tmp_path / run / "metrics.json").read_text())
        assert m["seen_by_weights"] is False and m["scored_stages"] == ["stage1", "stage2"], run
        assert m["written_model_stages"] == ["refit", "refit_stage2"], run
    for i in range(2):
        multi = _head_and_base(tmp_path / f"worker{i}")
        diff = max(float(np.abs(a - b).max()) for a, b in zip(single, multi, strict=True))
        print(f"worker {i}: weights differ from the one-process run by at most {diff:.2g}")
        assert diff <= 1e-6, f"worker {i}: weights differ by {diff:.3g}"


def test_bad_cluster_setting_is_refused_before_work(tmp_path, capsys, monkeypatch):
    from edgetl.cli import main

    monkeypatch.setenv("EDGETL_CLUSTER", "spark://x")
    data = tmp_path / "data"
    data.mkdir()
    assert main(["train", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "cluster setting 'spark://x'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tf_config", ["{bad json", '["a list"]', '{"cluster": 3}'])
def test_malformed_tf_config_is_refused_before_work(tmp_path, capsys, monkeypatch, tf_config):
    from edgetl.cli import main

    monkeypatch.setenv("TF_CONFIG", tf_config)
    data = tmp_path / "data"
    data.mkdir()
    assert main(["train", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "$TF_CONFIG is not a TensorFlow cluster description" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
