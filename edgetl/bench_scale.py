"""`python -m edgetl.bench scale`: how time and memory grow with the number of images.

Generates sample folders (edgetl.sample_data's textures, 128 px JPEGs, three classes) of 1k,
10k and 50k images under the scratch folder (the smaller ones are hard links to the first files
of the largest), then runs, each in a fresh child process whose peak RSS is read with
getrusage(RUSAGE_CHILDREN) by a wrapper made for that one job:
  * train stage 1: `edgetl train` with a cold embedding cache (decode + onnxruntime + head);
  * train stage 2: `edgetl train --fine-tune-layers 10` (warm cache for stage 1, then the
    top of the backbone trained on images streamed through edgetl.pipeline);
  * verify --data: one ONNX + TFLite bundle checked on onnxruntime, LiteRT and Keras.
Images/s is images / the stage's own time (metrics.json timings); wall time is the whole
command. Then embedding throughput: extraction images/s (decoding overlapped) beside
onnxruntime's own batch throughput on the same extractor, in the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODEL = ("mobilenet_v2", 0.35, 96)  # tiny, so 50k images fit on 2 cores
SIZES_FULL = (1_000, 10_000, 50_000)
SIZES_QUICK = (1_000, 5_000)
IMAGE_PX = 128  # sample images are resized to the model's 96 px, as real photos are

_WRAPPER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
    "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one command run in its own wrapper process."""
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd], check=True, capture_output=True, text=True
    )
    return time.perf_counter() - t, int(out.stdout.strip().splitlines()[-1]) / 1024


CHUNK = 500  # images per generator task (its own seed, so the folder is the same every time)


def _write_chunk(args: tuple[Path, int, int]) -> None:
    from edgetl.sample_data import SAMPLE_CLASSES, draw_texture

    root, chunk, n = args
    rng = np.random.default_rng(chunk)
    for i in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK)):
        c = SAMPLE_CLASSES[i % len(SAMPLE_CLASSES)]
        draw_texture(c, IMAGE_PX, rng).save(root / c / f"{c}_{i:06d}.jpg", quality=90)


def make_folders(root: Path, sizes: tuple[int, ...]) -> dict[int, Path]:
    """One generated folder of the largest size (edgetl.sample_data's textures, in parallel
    chunks); smaller ones hard-link its first files, so every folder is real distinct images."""
    from concurrent.futures import ProcessPoolExecutor

    from edgetl.sample_data import SAMPLE_CLASSES

    n_max = max(sizes)
    full = root / f"n{n_max}"
    if not (full / ".done").exists():
        for c in SAMPLE_CLASSES:
            (full / c).mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(_write_chunk, [(full, j, n_max) for j in range(-(-n_max // CHUNK))]))
        (full / ".done").touch()
    folders = {}
    for n in sizes:
        d = root / f"n{n}"
        if d != full and not (d / ".done").exists():
            for c in SAMPLE_CLASSES:
                (d / c).mkdir(parents=True, exist_ok=True)
                for f in sorted((full / c).iterdir())[: n // len(SAMPLE_CLASSES)]:
                    if not (d / c / f.name).exists():
                        os.link(f, d / c / f.name)
            (d / ".done").touch()
        folders[n] = d
    return folders


def _edgetl(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgetl.cli", *args]


def _mb(x: float) -> str:
    return f"{x:,.0f} MB"


def ort_batch_throughput(extractor: Path, size: int, batch: int = 32, runs: int = 20) -> float:
    """onnxruntime's own images/s on the extractor: the same random batch, run repeatedly."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(extractor), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"image": x})
    t = time.perf_counter()
    for _ in range(runs):
        sess.run(None, {"image": x})
    return batch * runs / (time.perf_counter() - t)


def bench_scale(work: Path, quick: bool = False, log=None, sizes=None) -> str:
    from edgetl.bench import _table
    from edgetl.data import load_images, scan_image_folder
    from edgetl.models.base import make_local_weights

    log = log or (lambda line: print(line, flush=True))  # progress lines in a log file too
    name, alpha, size = MODEL
    sizes = sizes or (SIZES_QUICK if quick else SIZES_FULL)
    t = time.perf_counter()
    folders = make_folders(work / "data", sizes)
    log(f"scale: folders ready ({time.perf_counter() - t:.0f} s)")
    weights = work / "local.weights.h5"
    if not weights.exists():
        some = scan_image_folder(folders[sizes[0]]).files[::10]
        make_local_weights(name, alpha, size, load_images(some, size, size), weights)
    common = ["--backbone", name, "--alpha", str(alpha), "--size", str(size)]
    common += ["--weights", str(weights), "--force"]
    rows, throughput, bundle = [], [], work / "bundle"
    for n in sizes:
        cache, run1, run2 = work / f"cache{n}", work / f"run1_{n}", work / f"run2_{n}"
        wall, rss = measured(
            _edgetl("train", str(folders[n]), "--out", str(run1), *common, "--epochs", "3",
                    "--cache-dir", str(cache))
        )  # fmt: skip
        m = json.loads((run1 / "metrics.json").read_text())
        info = json.loads((run1 / "train.json").read_text())
        s = m["timings"]["stage1_s"]
        rows.append(["train stage 1", n, f"{wall:.0f} s", f"{s:.0f} s", f"{n / s:.0f}", _mb(rss)])
        log(f"scale: {rows[-1]}")
        emb = info["embeddings"]
        extractor = next((cache / "extractors").glob("*.onnx"))
        throughput.append([n, f"{emb['images_per_s']:.0f}", f"{ort_batch_throughput(extractor, size):.0f}"])  # fmt: skip
        wall, rss = measured(
            _edgetl("train", str(folders[n]), "--out", str(run2), *common, "--epochs", "1",
                    "--cache-dir", str(cache), "--fine-tune-layers", "10",
                    "--fine-tune-epochs", "1", "--no-refit")  # one stage-2 pass, as before
        )  # fmt: skip
        m = json.loads((run2 / "metrics.json").read_text())
        s = m["timings"]["stage2_s"]
        rows.append(["train stage 2", n, f"{wall:.0f} s", f"{s:.0f} s", f"{n / s:.0f}", _mb(rss)])
        log(f"scale: {rows[-1]}")
        if not bundle.exists():
            subprocess.run(
                _edgetl("export", str(run1), "--out", str(bundle), "--formats", "onnx,tflite",
                        "--force"),
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        report = work / f"verify{n}.json"
        wall, rss = measured(
            _edgetl("verify", str(bundle), "--data", str(folders[n]), "--runtimes",
                    "onnxruntime-cpu,litert,keras", "--json", str(report))
        )  # fmt: skip
        seen = json.loads(report.read_text()).get("data", {}).get("images", n)
        rows.append(
            ["verify --data", n, f"{wall:.0f} s", "-", f"{seen / wall:.0f} ({seen} seen)", _mb(rss)]
        )
        log(f"scale: {rows[-1]}")
    first = {r[0]: float(r[5].split()[0].replace(",", "")) for r in rows if r[1] == sizes[0]}
    for r in rows:
        r.append(f"{float(r[5].split()[0].replace(',', '')) / first[r[0]]:.2f}x")
    return (
        f"Scale, {name} {alpha}/{size}, {IMAGE_PX} px sample images, locally made weights, "
        f"CPU: {_cpu()} ({os.cpu_count()} cores)\n"
        + _table(rows, ["job", "images", "wall", "stage", "images/s", "peak RSS", "RSS vs first"])
        + "\n\nEmbedding extraction (cold cache, decoding overlapped) beside onnxruntime's own "
        "batch-32 throughput on the same extractor\n"
        + _table(throughput, ["images", "extraction images/s", "onnxruntime batch images/s"])
    )


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"
