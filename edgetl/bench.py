"""Benchmarks: `python -m edgetl.bench [train|export|verify|all]` prints side-by-side tables.

Speed targets live here, never in timed unit tests. Every comparison runs both sides in one
process on the same data, and prints the ratio.

* train:  10 epochs of stage 1 on 160 images, MobileNetV2 1.0/224: the seed posts' recipe
          (model.fit through the frozen base every epoch) against edgetl's embedding cache,
          cold (fresh cache: converts the backbone to ONNX, embeds every image) and warm (a
          second run with other head settings), with final validation accuracy beside each.
* export: per backbone and artifact, file size, batch-1 latency in its own runtime, and the
          largest error against Keras on the golden probes.
* verify: wall time of `edgetl verify` on a MobileNetV2 1.0/224 bundle with every format.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH_BACKBONE = ("mobilenet_v2", 1.0, 224)
ALL_224 = [
    ("mobilenet_v1", 1.0, 224),
    BENCH_BACKBONE,
    ("mobilenet_v3_small", 1.0, 224),
    ("mobilenet_v3_large", 1.0, 224),
]


def _weights_for(
    name: str, alpha: float, size: int, images: np.ndarray, work: Path
) -> tuple[str, str]:
    """ImageNet weights when Keras has them; else locally made ones (said in the table)."""
    from edgetl.models.base import BackboneConfigError, build_backbone, make_local_weights

    try:
        build_backbone(name, alpha, size, "imagenet")
        return "imagenet", "imagenet"
    except BackboneConfigError:
        path = work / f"{name}_{alpha}_{size}.weights.h5"
        if not path.exists():
            make_local_weights(name, alpha, size, images, path)
        return str(path), "local (ImageNet unavailable offline)"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def seed_recipe(
    data: Path, name: str, alpha: float, size: int, weights: str, epochs: int, seed: int = 0
) -> tuple[float, float]:
    """The seed posts' recipe, literally: decode every image, freeze the base, `model.fit` on
    images for every epoch. Returns (stage-1 seconds: decoding + fit, final val accuracy);
    same split, head and batch size as edgetl's."""
    import keras

    from edgetl.classifier import build_classifier, find_base
    from edgetl.data import load_images, scan_image_folder, stratified_split
    from edgetl.models.base import build_backbone
    from edgetl.train import one_hot

    folder = scan_image_folder(data)
    tr, va = stratified_split(folder.labels, 0.2, seed)
    keras.utils.set_random_seed(seed)
    model = build_classifier(build_backbone(name, alpha, size, weights), len(folder.classes))
    find_base(model).trainable = False
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    y = one_hot(folder.labels, len(folder.classes))
    t = time.perf_counter()
    x = load_images(folder.files, size, size)
    h = model.fit(
        x[tr], y[tr], validation_data=(x[va], y[va]), epochs=epochs, batch_size=32, verbose=0
    )
    return time.perf_counter() - t, float(h.history["val_accuracy"][-1])


def bench_train(work: Path, images_per_class: int = 54, epochs: int = 10) -> str:
    from edgetl.data import load_images, scan_image_folder
    from edgetl.sample_data import make_sample_dataset
    from edgetl.train import TrainConfig, train

    name, alpha, size = BENCH_BACKBONE
    data = make_sample_dataset(work / "data", per_class=images_per_class, size=size)
    folder = scan_image_folder(data)
    weights, weights_note = _weights_for(
        name, alpha, size, load_images(folder.files[::4], size, size), work
    )
    seed_s, seed_acc = seed_recipe(data, name, alpha, size, weights, epochs)
    rows = [
        [
            "seed recipe: model.fit through the frozen base",
            f"{seed_s:.2f} s",
            "1.0x",
            "-",
            f"{seed_acc:.3f}",
            "keras",
        ]
    ]
    common = dict(
        backbone=name, alpha=alpha, size=size, weights=weights, epochs=epochs, patience=0, seed=0
    )
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    runs = [
        ("edgetl loop, no cache (full forward)", TrainConfig(**common, full_forward=True)),
        ("edgetl, cold cache (ONNX convert + embed)", TrainConfig(**common, cache_dir=str(cache))),
        ("edgetl, warm cache (same settings)", TrainConfig(**common, cache_dir=str(cache))),
        (
            "edgetl, warm cache (other head settings)",
            TrainConfig(**common, cache_dir=str(cache), hidden_units=64, dropout=0.3),
        ),
    ]
    for label, cfg in runs:
        t = time.perf_counter()
        r = train(data, work / f"run_{len(rows)}", cfg, progress=False)
        dt = time.perf_counter() - t
        s1 = r.timings["stage1_s"]
        rows.append(
            [
                label,
                f"{s1:.2f} s",
                f"{seed_s / s1:.1f}x",
                f"{dt:.1f} s",
                f"{r.metrics['accuracy']:.3f}",
                r.embedding_stats.get("runtime", "keras"),
            ]
        )
    n = len(folder.files)
    return (
        f"Stage 1, {epochs} epochs, {n} images, {name} {alpha}/{size}, weights: {weights_note}\n"
        "stage 1 = image decoding + backbone passes + 10 epochs of head training (speed-up "
        "against the seed recipe); whole run adds model building, metrics, saving and plots\n"
        + _table(
            rows, ["recipe", "stage 1", "speed-up", "whole run", "val acc", "backbone runtime"]
        )
    )


def _latency(fn, warmup: int = 10, runs: int = 50) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def artifact_latency_ms(bundle: Path, record, image: np.ndarray) -> tuple[float, str]:
    """Batch-1 median latency (ms) of one artifact in its own runtime, with the runtime's name.
    Sessions are created once through the runtime modules' own helpers, then timed."""
    from edgetl.runtimes.base import RUNTIMES, Artifact, load_runtimes

    load_runtimes()
    artifact = Artifact(record, bundle)
    x = np.ascontiguousarray(image[:1], dtype=np.float32)
    if record.format == "onnx":
        from edgetl.runtimes.onnxruntime_runtime import run_session, to_layout

        sess = RUNTIMES.get("onnxruntime-cpu").session(str(artifact.path))
        x = to_layout(x, record.layout)
        return _latency(lambda: run_session(sess, x)), "onnxruntime-cpu"
    if record.format == "tflite":
        from edgetl.runtimes.litert_runtime import invoke, make_interpreter

        interp = make_interpreter(str(artifact.path))
        invoke(interp, x)
        return _latency(interp.invoke), "litert (XNNPACK)"
    if record.format in ("tfjs_layers", "tfjs_graph"):
        for name in ("tfjs-browser-wasm", "tfjs-node-wasm"):
            rt = RUNTIMES.get(name) if name in RUNTIMES else None
            if rt is not None and rt.unavailable_reason() is None and hasattr(rt, "benchmark"):
                kw = {"num_threads": os.cpu_count()} if name.startswith("tfjs-browser") else {}
                info = rt.benchmark(artifact, runs=30, warmup=5, **kw)
                return float(info["median_ms"]), name
    return float("nan"), "-"


def export_bench_bundle(work: Path, name: str, alpha: float, size: int) -> Path:
    """A bundle with every format and variant for one backbone (local weights offline)."""
    from edgetl.bundle import export_bundle
    from edgetl.classifier import build_classifier
    from edgetl.contract import InputContract
    from edgetl.data import load_images, scan_image_folder
    from edgetl.models.base import build_backbone
    from edgetl.sample_data import make_sample_dataset

    data = work / f"data{size}"
    if not data.is_dir():
        make_sample_dataset(data, per_class=20, size=size)
    folder = scan_image_folder(data)
    images = load_images(folder.files, size, size)
    weights, _ = _weights_for(name, alpha, size, images[::2], work)
    model = build_classifier(build_backbone(name, alpha, size, weights), 3)
    bundle = work / f"bundle_{name}_{alpha}_{size}"
    shutil.rmtree(bundle, ignore_errors=True)
    export_bundle(
        model,
        bundle,
        labels=list(folder.classes),
        contract=InputContract(size, size),
        quantizations=["float16", "dynamic", "int8"],
        calibration_images=images,
        probe_images=images[::3],
        probe_labels=folder.labels[::3],
        log=lambda *_: None,
    )
    return bundle


def bench_export(work: Path, backbones: list[tuple[str, float, int]]) -> tuple[str, dict]:
    from edgetl.manifest import Manifest, read_probes
    from edgetl.verifier import verify

    rows, bundles = [], {}
    for name, alpha, size in backbones:
        bundle = export_bench_bundle(work, name, alpha, size)
        bundles[(name, alpha, size)] = bundle
        manifest = Manifest.load(bundle)
        probes = read_probes(bundle, manifest)
        check = verify(
            bundle,
            runtimes=["onnxruntime-cpu", "litert", "tfjs-node-wasm"],
            localize_failures=False,
        )
        err = {p.artifact: p.stats.max_abs for p in check.pairs if p.stats is not None}
        top1 = {p.artifact: p.stats.top1_agreement for p in check.pairs if p.stats is not None}
        lat = {}
        for rec in manifest.artifacts:
            lat[rec.id] = artifact_latency_ms(bundle, rec, probes.inputs[:1])
        fastest = min((v[0] for k, v in lat.items() if k.startswith(("onnx", "tflite"))))
        f32 = manifest.artifact("tflite_float32").size
        for rec in manifest.artifacts:
            ms, rt = lat[rec.id]
            rows.append(
                [
                    f"{name} {alpha}/{size}",
                    rec.id,
                    f"{rec.size / 1e6:.2f} MB",
                    f"{rec.size / f32:.0%}",
                    f"{ms:.2f} ms" if ms == ms else "n/a",
                    "<- fastest" if ms == fastest else "",
                    rt,
                    f"{err[rec.id]:.1e}" if rec.id in err else "-",
                    f"{top1[rec.id]:.0%}" if rec.id in top1 else "-",
                ]
            )
    table = _table(
        rows,
        [
            "backbone",
            "artifact",
            "size",
            "vs f32 tflite",
            "batch-1",
            "",
            "runtime",
            "max |err| vs Keras",
            "top-1 agree",
        ],
    )
    return (
        "Artifacts: size, batch-1 median latency in their own runtime, largest error vs "
        "the Keras golden probes\n" + table
    ), bundles


def bench_verify(bundle: Path) -> str:
    """`edgetl verify` wall time on one bundle, every CPU runtime (Chromium included)."""
    import subprocess
    import sys

    t = time.perf_counter()
    cmd = [sys.executable, "-m", "edgetl.cli", "verify", str(bundle)]
    # Not check=True: a failing verify is a result to print (its exit code is shown), not a
    # crash of the benchmark.
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    return (
        f"edgetl verify {bundle.name}: exit {proc.returncode}, wall {wall:.1f} s (fresh "
        f"process: imports, Node and Chromium start-up included)\n{proc.stdout}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m edgetl.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", nargs="?", default="all", choices=["train", "export", "verify", "all"])
    p.add_argument("--work", type=Path, help="scratch folder (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="export: MobileNetV2 1.0/224 only")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = args.work or Path(tempfile.mkdtemp(prefix="edgetl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.what in ("train", "all"):
        print(bench_train(work / "train"), flush=True)
    bundles = {}
    if args.what in ("export", "all"):
        backbones = [BENCH_BACKBONE] if args.quick else ALL_224
        text, bundles = bench_export(work / "export", backbones)
        print(text, flush=True)
    if args.what in ("verify", "all"):
        bundle = bundles.get(BENCH_BACKBONE) or export_bench_bundle(
            work / "export", *BENCH_BACKBONE
        )
        print(bench_verify(bundle), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
