"""`edgetl train DATA_DIR --out RUN_DIR`: fine-tune a new head on a pretrained MobileNet.

Stage 1 trains the head on cached backbone embeddings (edgetl.embeddings) unless per-epoch
augmentation needs real forward passes; stage 2 (optional) unfreezes the top of the backbone
at a low learning rate with BatchNormalization kept in inference mode.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetl.errors import UserError
from edgetl.probes import MIN_OUTPUT_SPREAD

METRICS_FILE = "metrics.json"


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the run stops and writes no model."""


CURVES_PNG = "training_curves.png"
CONFUSION_PNG = "confusion_matrix.png"


@dataclass
class TrainConfig:
    backbone: str = "mobilenet_v2"
    alpha: float | None = None
    size: int | None = None
    weights: str | None = "imagenet"
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    val_split: float = 0.2
    seed: int = 0
    hidden_units: int = 128
    dropout: float = 0.2
    label_smoothing: float = 0.0
    class_weights: bool = True
    patience: int = 5
    augment: bool = False
    # Stage 1 without the embedding cache: model.fit through the frozen base every epoch (the
    # seed posts' recipe). Only for comparison (bench, tests); --augment implies it.
    full_forward: bool = False
    fine_tune_layers: float = 0  # N top layers (>= 1) or a fraction of the base (< 1); 0 = off
    fine_tune_epochs: int = 5
    fine_tune_learning_rate: float = 1e-5
    cache_dir: str | None = None  # None: default cache; "" disables the embedding cache
    embedding_runtime: str = "auto"  # auto (onnxruntime, else keras) | onnxruntime | keras


@dataclass
class TrainResult:
    run_dir: Path
    labels: list[str]
    history: dict[str, list[float]]
    metrics: dict
    timings: dict[str, float] = field(default_factory=dict)
    embedding_stats: dict = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def make_augmenter(seed: int):
    """Flips, small rotations, zoom and contrast (the seed posts' ImageDataGenerator set),
    applied to 0..255 batches outside the model so nothing of it is exported."""
    import keras

    aug = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomContrast(0.1, value_range=(0, 255), seed=seed + 3),
        ],
        name="augment",
    )
    return lambda x: np.clip(np.asarray(aug(x, training=True)), 0, 255).astype(np.float32)


def one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[labels]


def balanced_class_weights(labels: np.ndarray, n: int) -> np.ndarray:
    """n_samples / (n_classes * count): the usual 'balanced' weights for imbalanced folders."""
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    w = len(labels) / (n * np.maximum(counts, 1))
    return w.astype(np.float32)


def fit(
    model,
    train: tuple,
    val: tuple | None,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    patience: int,
    sample_weights: np.ndarray,
    learning_rate: float,
    label_smoothing: float = 0.0,
    transform=None,
    desc: str = "",
) -> dict:
    """Adam on the model's trainable variables with seeded per-epoch shuffling, class weights as
    sample weights, label smoothing, and early stopping on validation loss (best weights kept).

    A small compiled loop rather than `model.fit`: on cached embeddings Keras' fit spends ~1 s
    of its ~2 s per 10 epochs in set-up (measured), more than the training itself. The same
    loop serves every path, so the cached and the full-forward runs see identical batches."""
    import keras
    import tensorflow as tf

    x, y = train
    rng = np.random.default_rng(seed)
    optimizer = keras.optimizers.Adam(learning_rate)
    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def train_step(xb, yb, wb):
        with tf.GradientTape() as tape:
            p = model(xb, training=True)
            loss = loss_fn(yb, p, sample_weight=wb)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss, p

    @tf.function(reduce_retracing=True)
    def infer(xb):
        return model(xb, training=False)

    def evaluate_split(xs, ys) -> tuple[float, float]:
        p = np.concatenate([infer(xs[i : i + 256]).numpy() for i in range(0, len(xs), 256)])
        return float(loss_fn(ys, p)), float((p.argmax(1) == ys.argmax(1)).mean())

    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    if val is not None:
        history["val_loss"], history["val_accuracy"] = [], []
    best, best_weights, waited = np.inf, None, 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        total_loss = correct = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            xb = x[idx] if transform is None else transform(x[idx])
            loss, p = train_step(xb, y[idx], sample_weights[idx])
            total_loss += float(loss) * len(idx)
            correct += float((p.numpy().argmax(1) == y[idx].argmax(1)).sum())
        history["loss"].append(total_loss / len(x))
        history["accuracy"].append(correct / len(x))
        if not np.isfinite(history["loss"][-1]):
            raise TrainingDiverged(
                f"training diverged: the {desc or 'training'} loss is {history['loss'][-1]} at "
                f"epoch {epoch + 1} (learning rate {learning_rate:g}); nothing was written. "
                "Try a lower learning rate (--lr, --fine-tune-lr)."
            )
        line = f"loss {history['loss'][-1]:.4f}, accuracy {history['accuracy'][-1]:.4f}"
        if val is not None:
            vl, va = evaluate_split(*val)
            history["val_loss"].append(vl)
            history["val_accuracy"].append(va)
            line += f", val_loss {vl:.4f}, val_accuracy {va:.4f}"
        print(f"  {desc} epoch {epoch + 1}/{epochs}: {line}", flush=True)
        if val is not None and patience > 0:
            if history["val_loss"][-1] < best:
                best, waited = history["val_loss"][-1], 0
                best_weights = [v.numpy() for v in variables]
            else:
                waited += 1
                if waited >= patience:
                    print(f"  {desc}: early stop, best val_loss {best:.4f} restored", flush=True)
                    break
    if best_weights is not None:
        for v, w in zip(variables, best_weights, strict=True):
            v.assign(w)
    return history


def set_fine_tune(base, top: float) -> int:
    """Unfreeze the top layers of the nested backbone (BatchNormalization stays frozen, so it
    runs in inference mode); returns how many layers were unfrozen."""
    import keras

    n = len(base.layers)
    k = round(top * n) if 0 < top < 1 else int(top)
    k = max(0, min(k, n))
    base.trainable = True
    for i, layer in enumerate(base.layers):
        unfreeze = i >= n - k and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = unfreeze
    return k


def evaluate(probabilities: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    n = len(classes)
    pred = probabilities.argmax(axis=1)
    cm = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(labels, pred, strict=True):
        cm[t, p] += 1
    per_class = {}
    for i, c in enumerate(classes):
        tp = cm[i, i]
        prec = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        rec = tp / cm[i].sum() if cm[i].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[c] = {
            "precision": float(prec),
            "recall": float(rec),
            "f1": float(f1),
            "support": int(cm[i].sum()),
        }
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "count": len(labels),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "classes": classes,
    }


def train(
    data_dir: str | Path,
    run_dir: str | Path,
    config: TrainConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """The whole job: scan, split, embed (cached), train head, optional fine-tune, write RUN_DIR.

    RUN_DIR follows edgetl's one output rule (edgetl.outdir): refused if it exists and is not
    empty unless `overwrite`, never inside the data folder, and written complete or not at all."""
    config = config or TrainConfig()
    import keras

    from edgetl.classifier import (
        HeadConfig,
        build_classifier,
        build_head_model,
        copy_head_weights,
        embedding_model,
        find_base,
    )
    from edgetl.contract import CONTRACT_FILE, LABELS_FILE, InputContract, save_labels
    from edgetl.data import load_images, scan_image_folder, stratified_split
    from edgetl.embeddings import EmbeddingCache, default_cache_dir
    from edgetl.modelio import MODEL_FILE, TRAIN_INFO_FILE
    from edgetl.models.base import BackboneConfigError, build_backbone, resolve
    from edgetl.outdir import Staging, check_out_dir
    from edgetl.weightsfile import check_weights_file, explain_weights_error

    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    bb, alpha, size = resolve(config.backbone, config.alpha, config.size)  # refuse early
    run_dir = Path(run_dir)
    check_out_dir(run_dir, force=overwrite, data_dirs={"data folder": Path(data_dir)})
    check_weights_file(config.weights, bb.name, alpha)
    folder = scan_image_folder(data_dir)
    for path, why in folder.skipped:
        print(f"  skipped {path}: {why}")
    classes, labels = folder.classes, folder.labels
    n = len(classes)
    print(
        f"{len(folder.files)} images in {n} classes: "
        + ", ".join(f"{c} ({k})" for c, k in folder.counts().items())
    )
    train_idx, val_idx = stratified_split(labels, config.val_split, config.seed)
    has_val = len(val_idx) > 0

    keras.utils.set_random_seed(config.seed)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            features = build_backbone(bb.name, alpha, size, config.weights)
        partial = [w for w in caught if "freshly-initialized" in str(w.message)]
        for w in caught:
            if w not in partial:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if partial:  # Keras loaded only some layers: the rest would stay random, silently
            raise ValueError(f"{len(partial)} layer group(s) found no weights in the file")
    except (UserError, BackboneConfigError):
        raise
    except Exception as e:
        raise UserError(explain_weights_error(config.weights, bb.name, alpha, e)) from None
    head_cfg = HeadConfig(config.hidden_units, config.dropout, config.seed)
    model = build_classifier(features, n, head_cfg)
    base = find_base(model)
    if base is not None:
        base.trainable = False

    y = one_hot(labels, n)
    cw = (
        balanced_class_weights(labels[train_idx], n)
        if config.class_weights
        else np.ones(n, np.float32)
    )
    sw = cw[labels].astype(np.float32)
    history: dict[str, list[float]] = {}

    def run_stage(m, x, *, epochs, seed, learning_rate, transform=None, desc=""):
        """One fit on the seeded split, shared by the cached, full-forward and fine-tune stages."""
        val = (x[val_idx], y[val_idx]) if has_val else None
        return fit(
            m,
            (x[train_idx], y[train_idx]),
            val,
            epochs=epochs,
            batch_size=config.batch_size,
            seed=seed,
            patience=config.patience,
            sample_weights=sw[train_idx],
            learning_rate=learning_rate,
            label_smoothing=config.label_smoothing,
            transform=transform,
            desc=desc,
        )

    emb_stats = {}
    images = emb = None

    if not (config.augment or config.full_forward):
        t = time.perf_counter()
        cache_dir = (
            None if config.cache_dir == "" else Path(config.cache_dir or default_cache_dir())
        )
        cache = EmbeddingCache(embedding_model(model), cache_dir, runtime=config.embedding_runtime)
        emb = cache.embed_files(folder.files, progress=progress)
        timings["embeddings_s"] = time.perf_counter() - t
        emb_stats = asdict(cache.stats)
        print(
            f"  embeddings: {cache.stats.computed} computed with {cache.stats.runtime or 'cache'}"
            f", {cache.stats.from_cache} from cache ({timings['embeddings_s']:.1f} s)"
        )
        t = time.perf_counter()
        keras.utils.set_random_seed(config.seed)
        head = build_head_model(emb.shape[1], n, head_cfg)
        h1 = run_stage(
            head,
            emb,
            epochs=config.epochs,
            seed=config.seed,
            learning_rate=config.learning_rate,
            desc="head",
        )
        copy_head_weights(head, model)
        timings["stage1_head_s"] = time.perf_counter() - t
        timings["stage1_s"] = timings["embeddings_s"] + timings["stage1_head_s"]
    else:
        t = time.perf_counter()
        images = load_images(folder.files, size, size, progress=progress)
        timings["decode_s"] = time.perf_counter() - t
        t = time.perf_counter()
        keras.utils.set_random_seed(config.seed)
        h1 = run_stage(
            model,
            images,
            epochs=config.epochs,
            seed=config.seed,
            learning_rate=config.learning_rate,
            transform=make_augmenter(config.seed) if config.augment else None,
            desc="head (augmented)" if config.augment else "head (full forward)",
        )
        timings["stage1_full_forward_s"] = time.perf_counter() - t
        timings["stage1_s"] = timings["decode_s"] + timings["stage1_full_forward_s"]
    for k, v in h1.items():
        history[f"stage1_{k}"] = v

    if config.fine_tune_layers and base is not None:
        t = time.perf_counter()
        if images is None:
            images = load_images(folder.files, size, size, progress=progress)
        k = set_fine_tune(base, config.fine_tune_layers)
        print(
            f"  stage 2: unfroze the top {k} of {len(base.layers)} backbone layers "
            "(BatchNormalization kept frozen)"
        )
        h2 = run_stage(
            model,
            images,
            epochs=config.fine_tune_epochs,
            seed=config.seed + 1,
            learning_rate=config.fine_tune_learning_rate,
            transform=make_augmenter(config.seed) if config.augment else None,
            desc="fine-tune",
        )
        for key, v in h2.items():
            history[f"stage2_{key}"] = v
        timings["stage2_s"] = time.perf_counter() - t
        base.trainable = False  # saved frozen: a later load trains the head only by default

    # Final metrics on the held-out images (train set if none). While the backbone is the
    # frozen one the embeddings came from, head(embedding) is the model's output (to ~1e-5);
    # after stage 2 or with augmentation the full Keras model runs on the images.
    eval_idx = val_idx if has_val else train_idx
    if emb is not None and "stage2_s" not in timings:
        probs = np.asarray(head.predict(emb[eval_idx], batch_size=256, verbose=0))
    else:
        if images is None:
            eval_images = load_images([folder.files[i] for i in eval_idx], size, size)
        else:
            eval_images = images[eval_idx]
        probs = np.asarray(model.predict(eval_images, batch_size=32, verbose=0))
    metrics = evaluate(probs, labels[eval_idx], classes)
    metrics["split"] = "validation" if has_val else "train (no validation split)"
    metrics["train_count"], metrics["val_count"] = len(train_idx), len(val_idx)
    metrics["history"] = history
    # A model whose outputs do not depend on its input (a dead backbone: `--weights none` and a
    # short run) trains "fine" and exports fine, but no parity check can see anything in it.
    spread = float(probs.std(axis=0).max()) if len(probs) > 1 else 0.0
    metrics["output_spread"] = spread
    if spread < MIN_OUTPUT_SPREAD:
        print(
            f"warning: the model's outputs barely depend on its input (largest spread across "
            f"{len(probs)} images {spread:.2g}): the backbone gives no usable features. Use "
            "pretrained --weights (imagenet or a file); verify cannot prove parity on it.",
            file=sys.stderr,
        )
    timings["total_s"] = time.perf_counter() - t_all
    metrics["timings"] = timings

    if not all(np.all(np.isfinite(w)) for w in model.get_weights()):
        raise TrainingDiverged(
            "training produced NaN/Inf weights; nothing was written. Try a lower learning rate."
        )
    staging = Staging(run_dir)
    with staging as tmp:
        model.save(tmp / MODEL_FILE)
        save_labels(tmp / LABELS_FILE, classes)
        InputContract(
            height=size, width=size, internal_preprocessing=bb.internal_preprocessing
        ).save(tmp / CONTRACT_FILE)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        info = {
            "data_dir": str(Path(data_dir).resolve()),
            "backbone": bb.name,
            "alpha": alpha,
            "size": size,
            "config": asdict(config),
            "embeddings": emb_stats,
            "skipped": [[str(p), why] for p, why in folder.skipped],
        }
        (tmp / TRAIN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        plot_curves(history, tmp / CURVES_PNG)
        plot_confusion(metrics, tmp / CONFUSION_PNG)
        staging.commit()
    return TrainResult(
        run_dir=run_dir,
        labels=classes,
        history=history,
        metrics=metrics,
        timings=timings,
        embedding_stats=emb_stats,
        skipped=[(str(p), w) for p, w in folder.skipped],
    )


def plot_curves(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        offset = 0
        for stage in ("stage1", "stage2"):
            for split in ("", "val_"):
                vals = history.get(f"{stage}_{split}{metric}")
                if vals:
                    xs = np.arange(offset + 1, offset + len(vals) + 1)
                    ax.plot(xs, vals, marker=".", label=f"{stage} {split or 'train_'}{metric}")
            offset += len(history.get(f"{stage}_{metric}", []))
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion_matrix"])
    classes = metrics["classes"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    ax.set_title(f"{metrics['split']}: accuracy {metrics['accuracy']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgetl.argtypes import add_number

    d = TrainConfig()
    p.add_argument("data_dir", type=Path, help="folder with one sub-folder of images per class")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="run directory to write (refused if it exists and is not empty, unless --force; "
        "never inside the data folder)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace an existing, non-empty run directory"
    )
    p.add_argument(
        "--backbone",
        default=d.backbone,
        help="mobilenet_v1, mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large",
    )
    add_number(
        p,
        "--alpha",
        kind=float,
        lo=0,
        lo_open=True,
        help="width multiplier (default: the backbone's)",
    )
    add_number(p, "--size", kind=int, lo=1, help="input size in pixels (default: the backbone's)")
    p.add_argument(
        "--weights",
        default=d.weights,
        help="'imagenet' (Keras download/cache), a local weights file, or 'none'",
    )
    add_number(p, "--epochs", kind=int, lo=1, hi=100_000, default=d.epochs)
    add_number(p, "--batch-size", kind=int, lo=1, hi=65_536, default=d.batch_size)
    add_number(
        p,
        "--lr",
        kind=float,
        lo=0,
        hi=10,
        lo_open=True,
        default=d.learning_rate,
        dest="learning_rate",
        help="learning rate of stage 1",
    )
    add_number(
        p,
        "--val-split",
        kind=float,
        lo=0,
        hi=1,
        hi_open=True,
        default=d.val_split,
        help="fraction of each class held out for validation",
    )
    add_number(p, "--seed", kind=int, lo=0, hi=2**32 - 1, default=d.seed)
    add_number(p, "--hidden-units", kind=int, lo=1, hi=65_536, default=d.hidden_units)
    add_number(p, "--dropout", kind=float, lo=0, hi=1, hi_open=True, default=d.dropout)
    add_number(
        p, "--label-smoothing", kind=float, lo=0, hi=1, hi_open=True, default=d.label_smoothing
    )
    p.add_argument(
        "--no-class-weights",
        action="store_false",
        dest="class_weights",
        help="do not weight classes by inverse frequency",
    )
    add_number(
        p,
        "--patience",
        kind=int,
        lo=0,
        hi=100_000,
        default=d.patience,
        help="early stopping patience on validation loss (0: off)",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="per-epoch augmentation (flip, rotation, zoom, contrast); needs full "
        "forward passes, so the embedding cache is not used",
    )
    add_number(
        p,
        "--fine-tune-layers",
        kind=float,
        lo=0,
        default=0,
        help="stage 2: unfreeze the top N backbone layers (or a fraction < 1; 0: no stage 2)",
    )
    add_number(p, "--fine-tune-epochs", kind=int, lo=1, hi=100_000, default=d.fine_tune_epochs)
    add_number(
        p,
        "--fine-tune-lr",
        kind=float,
        lo=0,
        hi=10,
        lo_open=True,
        default=d.fine_tune_learning_rate,
        dest="fine_tune_learning_rate",
    )
    p.add_argument(
        "--cache-dir",
        help="embedding cache folder (default ~/.cache/edgetl or $EDGETL_CACHE; '' disables)",
    )
    p.add_argument(
        "--full-forward",
        action="store_true",
        help="stage 1 without the embedding cache (slow; for comparison)",
    )
    p.add_argument("--embedding-runtime", default="auto", choices=["auto", "onnxruntime", "keras"])


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.epochs < 1:
        raise UserError("--epochs must be at least 1")
    if not 0 <= args.val_split < 1:
        raise UserError("--val-split must be in [0, 1)")
    if not 0 <= args.label_smoothing < 1:
        raise UserError("--label-smoothing must be in [0, 1)")
    if args.fine_tune_layers < 0:
        raise UserError("--fine-tune-layers must be >= 0")
    keys = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in keys})


def run(args: argparse.Namespace) -> int:
    from edgetl.models.base import resolve
    from edgetl.outdir import check_out_dir
    from edgetl.weightsfile import check_weights_file

    config = config_from_args(args)
    bb, alpha, _ = resolve(config.backbone, config.alpha, config.size)
    # The cheap refusals first, before TensorFlow is imported.
    if not args.data_dir.is_dir():
        raise UserError(f"data folder {str(args.data_dir)!r} does not exist or is not a folder")
    check_out_dir(args.out, force=args.force, data_dirs={"data folder": args.data_dir})
    check_weights_file(config.weights, bb.name, alpha)
    result = train(args.data_dir, args.out, config, progress=True, overwrite=args.force)
    m = result.metrics
    print(f"\n{m['split']} accuracy: {m['accuracy']:.3f} on {m['count']} images")
    for c, s in m["per_class"].items():
        print(
            f"  {c:<20} precision {s['precision']:.3f}  recall {s['recall']:.3f}  n={s['support']}"
        )
    print(
        f"run written to {result.run_dir}: model.keras, labels.json, contract.json, "
        f"{METRICS_FILE}, {CURVES_PNG}, {CONFUSION_PNG}"
    )
    return 0
