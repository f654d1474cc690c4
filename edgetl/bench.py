"""Benchmarks: `python -m edgetl.bench [train|export|verify|parity|accuracy|int8|all]`.

Speed targets live here, never in timed unit tests. Every comparison runs both sides in one
process on the same data, and prints the ratio.

* train:  10 epochs of stage 1 on 160 images, MobileNetV2 1.0/224: the seed posts' recipe
          (model.fit through the frozen base every epoch) against edgetl's embedding cache,
          cold (fresh cache: converts the backbone to ONNX, embeds every image) and warm (a
          second run with other head settings), with final validation accuracy beside each.
* export: per backbone and artifact, file size, batch-1 latency in its own runtime, and the
          largest error against Keras on the golden probes.
* verify: wall time of `edgetl verify` on a MobileNetV2 1.0/224 bundle with every format.
* accuracy: test accuracy and wall time of every training option on real digits with a real
          pretrained backbone, beside the stock Keras recipe (edgetl.bench_accuracy); int8:
          the same data's TFLite float32 / dynamic / int8 accuracy through verify --data.
* parity: detection power and false alarms of `edgetl verify`. Every corruption of
          edgetl.corrupt applied to every artifact it applies to (each re-hashed), verified on
          the real runtimes: caught or MISSED, with the error seen and the limit. Then honest
          bundles under what other machines vary (threads, graph optimizations, XNNPACK,
          oneDNN, batch size, seeds, sizes, random vs data-fitted weights, all 4 backbones):
          the worst honest error per format and the false alarms (target 0).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import time
from functools import partial
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
    name: str, alpha: float, size: int, images: np.ndarray, work: Path, seed: int = 0
) -> tuple[str, str]:
    """ImageNet weights when Keras has them; else locally made ones (said in the table)."""
    import contextlib
    import io

    from edgetl.models.base import BackboneConfigError, build_backbone, make_local_weights

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # keras' "Downloading data from ..."
            build_backbone(name, alpha, size, "imagenet")
        return "imagenet", "imagenet"
    except BackboneConfigError:
        suffix = f"_seed{seed}" if seed else ""
        path = work / f"{name}_{alpha}_{size}{suffix}.weights.h5"
        if not path.exists():
            make_local_weights(name, alpha, size, images, path, seed=seed)
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
    _, seconds, val_acc = fit_seed_recipe(data, name, alpha, size, weights, epochs, seed)
    return seconds, val_acc


def fit_seed_recipe(
    data: Path, name: str, alpha: float, size: int, weights: str, epochs: int, seed: int = 0
):
    """seed_recipe's work; returns (the trained model, stage-1 seconds, final val accuracy)."""
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
    return model, time.perf_counter() - t, float(h.history["val_accuracy"][-1])


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


# ---------------------------------------------------------------- parity: detection power

PARITY_RUNTIMES = ["onnxruntime-cpu", "litert", "tfjs-node-wasm"]
BROWSER_RUNTIMES = ["tfjs-browser-wasm"]
# Tiny sizes for speed: the smallest alpha of each backbone at its smallest size.
SMALLEST = {
    "mobilenet_v1": (0.25, 128),
    "mobilenet_v2": (0.35, 96),
    "mobilenet_v3_small": (0.75, 96),
    "mobilenet_v3_large": (0.75, 96),
}
DETECTION_QUICK = [("mobilenet_v2", "fitted")]
# random = untrained backbone (BN statistics at init): its features vanish and the outputs barely
# depend on the input, the "dead backbone"; shown apart, not in the headline figure.
DETECTION_FULL = [
    ("mobilenet_v2", "fitted"),
    ("mobilenet_v3_small", "fitted"),
    ("mobilenet_v2", "random"),
]
FLOAT32_IDS = ("onnx", "tflite_float32", "tfjs_layers", "tfjs_graph")


def parity_bundle(
    work: Path,
    name: str,
    alpha: float,
    size: int,
    *,
    weights: str = "fitted",
    seed: int = 0,
    quantizations: tuple[str, ...] = ("float16", "int8"),
) -> tuple[Path, Path]:
    """An honest bundle for the parity bench: locally made (data-fitted) or random backbone
    weights, a head fitted on the sample data's embeddings, probes and calibration from sample
    images drawn at twice the model size (so a resize fault has something to shrink).
    Returns (bundle, data_dir)."""
    import keras

    from edgetl.bundle import export_bundle, sample_images
    from edgetl.classifier import (
        HeadConfig,
        build_classifier,
        build_head_model,
        copy_head_weights,
        embedding_model,
    )
    from edgetl.contract import InputContract
    from edgetl.models.base import build_backbone
    from edgetl.sample_data import SAMPLE_CLASSES, make_sample_dataset

    data = work / f"data{2 * size}"
    if not data.is_dir():
        make_sample_dataset(data, per_class=16, size=2 * size)
    contract = InputContract(size, size)
    classes = sorted(SAMPLE_CLASSES)
    images, labels, names = sample_images(data, contract, classes, limit=48)
    w = None
    if weights == "fitted":
        w, _ = _weights_for(name, alpha, size, images[::2], work, seed=seed)
    keras.utils.set_random_seed(seed)
    head = HeadConfig(seed=seed)
    model = build_classifier(build_backbone(name, alpha, size, w), len(classes), head)
    emb = embedding_model(model).predict(images, batch_size=16, verbose=0)
    head_model = build_head_model(emb.shape[1], len(classes), head)
    head_model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    head_model.fit(emb, np.asarray(labels), epochs=60, batch_size=16, verbose=0)
    copy_head_weights(head_model, model)
    bundle = work / f"bundle_{name}_{alpha}_{size}_{weights}_s{seed}"
    shutil.rmtree(bundle, ignore_errors=True)
    export_bundle(
        model,
        bundle,
        labels=classes,
        contract=contract,
        quantizations=list(quantizations),
        calibration_images=images,
        probe_images=images,
        probe_labels=labels,
        probe_names=names,
        model_name=f"{name}_{alpha}_{size}_{weights}_s{seed}",
        log=lambda *_: None,
    )
    return bundle, data


def _cell(pair) -> str:
    if pair is None:
        return "-"
    if pair.status not in ("pass", "fail"):
        return "ERROR (listed below)"
    err = pair.stats.max_abs if pair.stats is not None else float("nan")
    top1 = pair.stats.top1_agreement if pair.stats is not None else float("nan")
    return f"{'pass' if pair.passed else 'FAIL'} {err:.1e} t1 {top1:.0%}"


def detection_table(
    work: Path, configs: list[tuple[str, str]], runtimes: list[str]
) -> tuple[str, dict[str, tuple[int, int]], list[str]]:
    """Every corruption on every artifact it applies to, for each (backbone, weights) config.
    Returns (table, weights kind -> (caught, counted), missed descriptions)."""
    import keras

    from edgetl import corrupt
    from edgetl.verifier import verify

    rows: list[list[str]] = []
    score: dict[str, list[int]] = {}
    missed: list[str] = []
    errors: list[str] = []
    header: list[str] = []
    for name, weights in configs:
        alpha, size = SMALLEST[name]
        bundle, data = parity_bundle(work, name, alpha, size, weights=weights)
        honest = verify(bundle, runtimes=runtimes, localize_failures=False)
        keys = [(p.artifact, p.runtime) for p in honest.pairs if p.artifact != "source_model"]
        header = ["backbone", "corruption", *[f"{a}@{r}" for a, r in keys]]
        label = f"{name} {alpha}/{size} {weights}"
        rows.append([label, "limit", *[p.tolerance.describe() for p in honest.pairs]])
        honest_by = {(p.artifact, p.runtime): p for p in honest.pairs}
        rows.append(
            [label, "honest (no fault)"]
            + [_cell(honest_by[k]).replace("FAIL", "FALSE ALARM") for k in keys]
        )
        model = keras.models.load_model(bundle / "source" / "model.keras", compile=False)
        for c in corrupt.CORRUPTIONS:
            copy = work / f"corrupt_{c.name}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(bundle, copy)
            try:
                details = corrupt.apply(c.name, copy, data_dir=data, model=model)
            except corrupt.NotApplicable as e:
                rows.append([label, c.name, f"n/a: {e}"] + [""] * (len(keys) - 1))
                continue
            result = verify(
                copy, runtimes=runtimes, artifacts=list(details), localize_failures=False
            )
            by = {(p.artifact, p.runtime): p for p in result.pairs}
            down = {st.name: st.reason for st in result.runtimes if not st.available}
            cells = []
            for k in keys:
                p = by.get(k)
                cell = _cell(p).replace("FAIL", "caught").replace("pass", "MISSED")
                cells.append(cell)
                if k[0] not in details:
                    continue  # the corruption does not apply to this artifact
                if p is None or p.status not in ("pass", "fail"):
                    # No verdict from parity (runtime error or unavailable): not a detection.
                    why = "; ".join(p.reasons) if p is not None else down.get(k[1], "no result")
                    errors.append(f"{label}: {c.name} on {k[0]}@{k[1]}: {why[:300]}")
                    continue
                if not c.counted or k[0] not in FLOAT32_IDS:
                    continue
                tally = score.setdefault(weights, [0, 0])
                tally[1] += 1
                if not p.passed:
                    tally[0] += 1
                else:
                    err = p.stats.max_abs if p.stats else float("nan")
                    missed.append(
                        f"{label}: {c.name} on {k[0]}@{k[1]}: max |err| {err:.1e} "
                        f"vs {p.tolerance.describe()}"
                    )
            rows.append([label, c.name, *cells])
            shutil.rmtree(copy, ignore_errors=True)
    text = (
        "Detection: corruption x artifact@runtime -> caught / MISSED, max |error| vs the golden "
        "outputs, top-1 agreement (t1)\n"
        + _table([r + [""] * (len(header) - len(r)) for r in rows], header)
    )
    if errors:
        text += "\n\nNo verdict (runtime error or unavailable; not counted):\n  " + "\n  ".join(
            errors
        )
    return text, {w: (c, n) for w, (c, n) in score.items()}, missed


# ---------------------------------------------------------------- parity: false alarms

_KERAS_REFERENCE = """
import os, sys, numpy as np, keras
from edgetl.manifest import Manifest, read_probes
out = {}
for b in sys.argv[2:]:
    m = Manifest.load(b)
    x = read_probes(b, m).inputs
    model = keras.models.load_model(os.path.join(b, m.source_model["file"]), compile=False)
    out[b + "|N"] = model.predict(x, batch_size=16, verbose=0)
    out[b + "|1"] = np.concatenate([model.predict(x[i:i + 1], verbose=0) for i in range(len(x))])
np.savez(sys.argv[1], **{str(i): v for i, v in enumerate(out.values())}, keys=np.array(list(out)))
"""


def keras_references(bundles: list[Path], work: Path) -> dict[tuple[str, str], np.ndarray]:
    """The source models re-run in fresh processes with TF_ENABLE_ONEDNN_OPTS=0 and =1, at batch
    16 and batch 1: (bundle, "onednn=0 batch N") -> outputs. What the golden outputs would have
    been had the bundle been exported on a machine with (or without) oneDNN's kernels."""
    import subprocess
    import sys

    refs = {}
    for onednn in ("0", "1"):
        out = work / f"keras_ref_onednn{onednn}.npz"
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "3"}
        cmd = [sys.executable, "-c", _KERAS_REFERENCE, str(out), *map(str, bundles)]
        proc = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"Keras reference (oneDNN={onednn}) failed:\n{proc.stderr[-2000:]}")
        data = np.load(out)
        for i, key in enumerate(data["keys"]):
            b, batch = str(key).rsplit("|", 1)
            refs[(b, f"keras onednn={onednn} batch {batch}")] = data[str(i)]
    return refs


def _batched(fn, x: np.ndarray, batch: int) -> np.ndarray:
    if batch >= len(x):
        return fn(x)
    return np.concatenate([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def ort_outputs(path: Path, layout: str, x: np.ndarray, threads: int, optimize: bool) -> np.ndarray:
    """onnxruntime CPU with a chosen intra-op thread count and graph optimization level.
    edgetl's onnxruntime runtime has no knob for either (note for the runtime owner), so the
    session is built here the same way otherwise."""
    import onnxruntime as ort

    from edgetl.runtimes.onnxruntime_runtime import run_session, to_layout

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return run_session(sess, to_layout(x, layout))["probabilities"]


def litert_outputs(path: Path, x: np.ndarray, threads: int, xnnpack: bool) -> np.ndarray:
    """LiteRT with a chosen thread count, with XNNPACK or the builtin reference-style kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgetl.runtimes.litert_runtime import dequantize, invoke

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(
        model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver
    )
    invoke(interp, np.asarray(x, np.float32))
    d = interp.get_output_details()[0]
    return dequantize(interp.get_tensor(d["index"]), d)


def _judge(record, runtime: str, reference: np.ndarray, y: np.ndarray, noise: dict | None):
    """The verdict verify would give this output against `reference` (default tolerance, scaled
    by the bundle's recorded noise floors)."""
    from edgetl.compare import compare
    from edgetl.tolerances import default_tolerance

    tol = default_tolerance(record, noise=noise)
    return compare(reference, y, tol, artifact=record.id, runtime=runtime)


def sweep_bundle(bundle: Path, refs: dict, runtimes: list[str]) -> list[tuple[str, str, object]]:
    """Every (artifact, condition, verdict) for one honest bundle: verify itself, then each
    artifact under the varied runtime settings against the golden outputs, then the default
    outputs against the Keras re-runs (oneDNN on/off, batch 1/N)."""
    from edgetl.manifest import Manifest, read_probes
    from edgetl.verifier import verify

    out = []
    result = verify(bundle, runtimes=[*runtimes, "keras"], localize_failures=False)
    default = {}
    for p in result.pairs:
        out.append((p.artifact, f"verify {p.runtime}", p))
    manifest = Manifest.load(bundle)
    noise = manifest.probes.get("noise")
    probes = read_probes(bundle, manifest)
    x, golden = probes.inputs, probes.expected
    for rec in manifest.artifacts:
        path = bundle / rec.path
        if rec.format == "onnx":
            for threads, opt, batch in itertools.product((1, 2), (True, False), (len(x), 1)):
                run = partial(ort_outputs, path, rec.layout, threads=threads, optimize=opt)
                y = _batched(run, x, batch)
                cond = f"ort threads={threads} opt={'all' if opt else 'off'} batch={batch}"
                out.append((rec.id, cond, _judge(rec, "onnxruntime-cpu", golden, y, noise)))
                if (threads, opt, batch) == (2, True, len(x)):
                    default[rec.id] = (y, "onnxruntime-cpu")
        elif rec.format == "tflite":
            for threads, xnn, batch in itertools.product((1, 2), (True, False), (len(x), 1)):
                run = partial(litert_outputs, path, threads=threads, xnnpack=xnn)
                y = _batched(run, x, batch)
                cond = f"litert threads={threads} xnnpack={'on' if xnn else 'off'} batch={batch}"
                out.append((rec.id, cond, _judge(rec, "litert", golden, y, noise)))
                if (threads, xnn, batch) == (2, True, len(x)):
                    default[rec.id] = (y, "litert")
        elif rec.format == "tfjs_layers" and "tfjs-node-wasm" in runtimes:
            from edgetl.runtimes.base import RUNTIMES, Artifact

            rt = RUNTIMES.get("tfjs-node-wasm")
            if rt.unavailable_reason() is None:
                y = rt.run(Artifact(rec, bundle), x)["probabilities"]
                default[rec.id] = (y, "tfjs-node-wasm")
    for (b, cond), ref in refs.items():
        if b != str(bundle):
            continue
        for rec in manifest.artifacts:
            if rec.id in default:
                y, rt = default[rec.id]
                out.append((rec.id, f"vs {cond}", _judge(rec, rt, ref, y, noise)))
    return out


SWEEP_QUICK = [
    ("mobilenet_v2", 0.35, 96, "fitted", 0),
    ("mobilenet_v2", 0.35, 96, "random", 0),
    ("mobilenet_v3_small", 0.75, 96, "fitted", 0),
]
SWEEP_FULL = [
    *[(n, a, s, "fitted", 0) for n, (a, s) in SMALLEST.items()],
    *[(n, a, 224, "fitted", 0) for n, (a, _) in SMALLEST.items()],
    ("mobilenet_v2", 0.35, 96, "fitted", 1),
    ("mobilenet_v2", 0.35, 96, "fitted", 2),
    ("mobilenet_v2", 0.35, 96, "random", 0),
    ("mobilenet_v2", 0.35, 96, "random", 1),
    ("mobilenet_v3_small", 0.75, 96, "random", 0),
    ("mobilenet_v3_large", 0.75, 96, "random", 0),
]
SWEEP_ARTIFACTS = ("onnx", "tflite_float32", "tfjs_layers", "tflite_float16", "source_model")


def false_alarm_table(
    work: Path, configs: list[tuple], runtimes: list[str]
) -> tuple[str, int, int]:
    """Honest bundles under varied conditions: worst error per artifact and false alarms."""
    from edgetl.manifest import Manifest, read_probes

    bundles = []
    for name, alpha, size, weights, seed in configs:
        b, _ = parity_bundle(
            work, name, alpha, size, weights=weights, seed=seed, quantizations=("float16",)
        )
        bundles.append(((name, alpha, size, weights, seed), b))
    refs = keras_references([b for _, b in bundles], work)
    rows, alarms, judged = [], [], 0
    worst: dict[str, tuple[float, str, str, object]] = {}
    tightest: dict[str, float] = {}  # smallest limit / error over every verdict
    for (name, alpha, size, weights, seed), b in bundles:
        verdicts = sweep_bundle(b, refs, [*runtimes, "tfjs-node-cpu"])
        per: dict[str, float] = {}
        n_alarm = 0
        for art, cond, p in verdicts:
            judged += 1
            err = p.stats.max_abs if p.stats is not None else float("inf")
            label = f"{name} {alpha}/{size} {weights} seed {seed}"
            if err > per.get(art, -1):
                per[art] = err
            if err > worst.get(art, (-1.0, "", "", None))[0]:
                worst[art] = (err, label, cond, p.tolerance)
            if p.tolerance.max_abs and err > 0:
                ratio = p.tolerance.max_abs / err
                tightest[art] = min(tightest.get(art, float("inf")), ratio)
            if not p.passed:
                n_alarm += 1
                alarms.append(
                    f"{label}: {art} {cond}: max |err| {err:.1e} vs {p.tolerance.describe()}"
                )
        golden = read_probes(b, Manifest.load(b)).expected
        spread = float((golden.max(axis=0) - golden.min(axis=0)).max())
        rows.append(
            [f"{name} {alpha}/{size}", weights, str(seed), f"{spread:.1e}"]
            + [f"{per[a]:.1e}" if a in per else "-" for a in SWEEP_ARTIFACTS]
            + [f"{n_alarm}/{len(verdicts)}"]
        )
    worst_rows = [
        [a, f"{worst[a][0]:.1e}", worst[a][3].describe(),
         f"{tightest[a]:.1f}x" if a in tightest else "-",
         f"{worst[a][1]}, {worst[a][2]}"]
        for a in SWEEP_ARTIFACTS if a in worst
    ]  # fmt: skip
    text = (
        "False-alarm sweep: honest bundles; worst max |error| per artifact over every condition "
        "(verify on onnxruntime-cpu, litert, tfjs-node-wasm/cpu, keras; onnxruntime intra-op "
        "threads 1/2 x graph optimizations all/off x batch N/1; LiteRT threads 1/2 x XNNPACK "
        "on/off x batch N/1; default outputs vs Keras re-run with TF_ENABLE_ONEDNN_OPTS=0/1 at "
        "batch N/1)\n"
        + "probe spread = largest range of one output across the probes (~0: the outputs do "
        "not depend on the input, nothing can be proven on them)\n"
        + _table(
            rows, ["backbone", "weights", "seed", "probe spread", *SWEEP_ARTIFACTS, "false alarms"]
        )
        + "\n\nWorst honest error per artifact with its limit there; headroom = the smallest "
        + "limit / error over every verdict (limits scale with each bundle's noise floor)\n"
        + _table(worst_rows, ["artifact", "worst", "limit", "headroom", "where"])
    )
    if alarms:
        text += "\n\nFalse alarms:\n  " + "\n  ".join(alarms)
    return text, len(alarms), judged


def bench_parity(work: Path, quick: bool, browser: bool = False) -> str:
    runtimes = PARITY_RUNTIMES + (BROWSER_RUNTIMES if browser else [])
    t = time.perf_counter()
    det, score, missed = detection_table(
        work, DETECTION_QUICK if quick else DETECTION_FULL, runtimes
    )
    t_det = time.perf_counter() - t
    sweep, alarms, judged = false_alarm_table(work, SWEEP_QUICK if quick else SWEEP_FULL, runtimes)
    t_all = time.perf_counter() - t
    caught, counted = score.get("fitted", (0, 0))
    lines = [
        det,
        "",
        f"caught {caught} of {counted} float32 corruptions >= 1% in one layer "
        "(onnx, tflite_float32, tfjs_layers; input faults included; data-fitted weights)",
    ]
    if "random" in score:
        lines.append(
            "dead backbone (random weights, outputs independent of the input): caught "
            f"{score['random'][0]} of {score['random'][1]}: its probes cannot show a fault"
        )
    if missed:
        lines += ["missed:", *[f"  {m}" for m in missed]]
    lines += [
        "",
        sweep,
        "",
        f"false alarms: {alarms} of {judged} honest verdicts",
        f"wall: detection {t_det:.0f} s, total {t_all:.0f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m edgetl.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["train", "export", "verify", "parity", "accuracy", "int8", "all"],
    )
    p.add_argument("--work", type=Path, help="scratch folder (default: a temp dir)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="export: MobileNetV2 1.0/224 only; parity: MobileNetV2 corruptions, 3-bundle sweep; "
        "accuracy: seed 0, fewer rows, full-forward rows at 10/class only",
    )
    p.add_argument(
        "--browser", action="store_true", help="parity: also verify in Chromium (tfjs-browser-wasm)"
    )
    p.add_argument(
        "--seeds", help="accuracy: comma-separated training seeds (default 0,1,2; --quick: 0)"
    )
    p.add_argument(
        "--budgets", help="accuracy: comma-separated labels per class (default 10,30,100)"
    )
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
    if args.what == "parity":  # not part of "all": it exports many bundles
        print(bench_parity(work / "parity", args.quick, args.browser), flush=True)
    if args.what in ("accuracy", "int8"):  # not part of "all": needs the [bench] extra
        from edgetl import bench_accuracy

        if args.what == "int8":
            print(bench_accuracy.int8_table(work / "accuracy"), flush=True)
        else:
            seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
            budgets = tuple(int(x) for x in (args.budgets or "10,30,100").split(","))
            text = bench_accuracy.bench_accuracy(work / "accuracy", args.quick, seeds, budgets)
            print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
