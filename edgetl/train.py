"""`edgetl train DATA_DIR --out RUN_DIR`: fine-tune a new head on a pretrained MobileNet.

Stage 1 trains the head on cached backbone embeddings (edgetl.embeddings) unless per-epoch
augmentation needs real forward passes; stage 2 (optional) unfreezes the top of the backbone
at a low learning rate with BatchNormalization kept in inference mode, keeping its best epoch.
Every choice (early stopping, stage 2's epoch) and the reported metrics use validation images
no weight of the model has trained on; the refit (a new head on train + val for the epoch
counts chosen, then stage 2 again) comes last, after the metrics. One function per step:
prepare -> build_model -> stage1_* -> stage2_fine_tune -> final_metrics ->
refit_on_train_and_val -> write_run_dir; metrics and plots live in edgetl.metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetl.embeddings import check_cache_dir
from edgetl.errors import UserError
from edgetl.metrics import CONFUSION_PNG, CURVES_PNG
from edgetl.outdir import OutputClaim
from edgetl.probes import MIN_OUTPUT_SPREAD

METRICS_FILE = "metrics.json"
TRAIN_SPLIT = "training images (no validation split)"
EVAL_BATCH_VECTORS = 256  # validation batch on cached embeddings (5 KB a row)
EVAL_BATCH_IMAGES = 32  # on streamed images (110 KB a row at 96 px, 0.6 MB at 224 px)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the run stops and writes no model."""


@dataclass
class TrainConfig:
    backbone: str = "mobilenet_v2"
    alpha: float | None = None
    size: int | None = None
    weights: str | None = "imagenet"
    # Defaults from `python -m edgetl.bench accuracy` (README "Accuracy from few labels"):
    # 100 epochs with patience 10 (stage 1 on embeddings costs ~ms an epoch), label smoothing
    # 0.1 and the refit on train + val each won points there; the rest stayed as they were.
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    val_split: float = 0.2
    seed: int = 0
    hidden_units: int = 128
    dropout: float = 0.2
    label_smoothing: float = 0.1
    class_weights: bool = True
    patience: int = 10
    augment: bool = False
    # Stage 1 without the embedding cache: model.fit through the frozen base every epoch (the
    # seed posts' recipe). Only for comparison (bench, tests); --augment implies it.
    full_forward: bool = False
    fine_tune_layers: float = 0  # N top layers (>= 1) or a fraction of the base (< 1); 0 = off
    fine_tune_epochs: int = 5
    fine_tune_learning_rate: float = 1e-5
    schedule: str = "constant"  # constant | cosine (decay to 0 over the epochs of stage 1)
    mixup: float = 0.0  # stage 1 on embeddings: mixup Beta(a, a) within each batch; 0 = off
    # Last, after the metrics: a new head on train + val for the stage-1 epochs validation chose,
    # then stage 2 again for its kept epochs (bench honesty: +2.8 / +1.4 points at 30 / 100
    # per class with stage 2 against no refit; the model it writes has no held-out score).
    refit: bool = True
    cache_dir: str | None = None  # None: default cache; "" disables the embedding cache
    embedding_runtime: str = "auto"  # auto (onnxruntime, else keras) | onnxruntime | keras
    cluster: str | None = None  # None: $EDGETL_CLUSTER; "ray" / "ray://..." (edgetl.distribute)


@dataclass
class TrainResult:
    run_dir: Path
    labels: list[str]
    history: dict[str, list[float]]
    metrics: dict
    timings: dict[str, float] = field(default_factory=dict)
    embedding_stats: dict = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # stage -> the image files in its training batches (Job.trained_on)
    trained_on: dict[str, list[Path]] = field(default_factory=dict)


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


class _BestEpoch:
    """Early stopping on validation loss; keeps the best epoch's weights (epoch 0: the weights
    the fit started from, so a stage that only makes things worse changes nothing)."""

    def __init__(self, variables, patience: int) -> None:
        self.variables, self.patience = variables, patience
        self.loss, self.epoch, self.weights, self.waited = np.inf, 0, None, 0

    def update(self, loss: float, epoch: int) -> bool:
        """Record one epoch's validation loss; True when patience has run out."""
        if loss < self.loss:
            self.loss, self.epoch, self.waited = loss, epoch, 0
            self.weights = [v.numpy() for v in self.variables]
            return False
        self.waited += 1
        return self.waited >= self.patience

    def restore(self) -> None:
        if self.weights is not None:
            for v, w in zip(self.variables, self.weights, strict=True):
                v.assign(w)


def _mix(rng, xb, yb, wb, alpha: float):
    """Mixup (Zhang et al. 2018) inside one batch: cheap augmentation of cached embeddings."""
    lam = rng.beta(alpha, alpha, size=(len(xb), 1)).astype(np.float32)
    perm = rng.permutation(len(xb))
    w = lam[:, 0] * wb + (1 - lam[:, 0]) * wb[perm]
    return lam * xb + (1 - lam) * xb[perm], lam * yb + (1 - lam) * yb[perm], w


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
    schedule: str = "constant",
    mixup: float = 0.0,
    from_start: bool = False,
    strategy=None,
    trained_rows: list | None = None,
) -> tuple[dict, int]:
    """Adam on the model's trainable variables with seeded per-epoch shuffling, class weights as
    sample weights, label smoothing, optional cosine decay and mixup, and early stopping on
    validation loss (best epoch kept; `from_start`: the starting weights count as epoch 0).
    Returns (history, best epoch: the one whose weights the model holds, `epochs` if none).
    `trained_rows`, when given, gets the row indices of `train` in each training batch: what
    the weights saw, recorded where the batches are made (Job.trained_on).
    `x` is an array or edgetl.pipeline.ImageFiles (streamed from disk, bounded memory); under
    a tf.distribute `strategy` each replica takes its slice of the same global batch.

    A small compiled loop rather than `model.fit`: on cached embeddings Keras' fit spends ~1 s
    of its ~2 s per 10 epochs in set-up (measured), more than the training itself. The same
    loop serves every path, so the cached and the full-forward runs see identical batches."""
    import keras

    from edgetl.pipeline import iter_batches

    x, y = train
    rng, mix_rng = np.random.default_rng(seed), np.random.default_rng(seed + 7)
    lr = learning_rate
    if schedule == "cosine":
        steps = epochs * -(-len(x) // batch_size)
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    train_step, evaluate_split = _compiled_steps(model, lr, loss_fn, strategy)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    if val is not None:
        history["val_loss"], history["val_accuracy"] = [], []
    best = _BestEpoch(model.trainable_variables, patience)
    if val is not None and patience > 0 and from_start:
        best.update(evaluate_split(*val)[0], 0)
    for epoch in range(1, epochs + 1):
        total_loss = correct = 0.0
        order = rng.permutation(len(x))
        starts = range(0, len(x), batch_size)
        for i, xb in zip(starts, iter_batches(x, batch_size, order), strict=True):
            idx = order[i : i + batch_size]
            if trained_rows is not None:
                trained_rows.append(idx)
            xb, yb, wb = (xb if transform is None else transform(xb), y[idx], sample_weights[idx])
            if mixup > 0:
                xb, yb, wb = _mix(mix_rng, xb, yb, wb, mixup)
            loss, right = train_step(xb, yb, wb)
            total_loss += loss * len(idx)
            correct += right
        history["loss"].append(total_loss / len(x))
        history["accuracy"].append(correct / len(x))
        _check_finite(history["loss"][-1], epoch, learning_rate, desc)
        line = f"loss {history['loss'][-1]:.4f}, accuracy {history['accuracy'][-1]:.4f}"
        if val is not None:
            vl, va = evaluate_split(*val)
            history["val_loss"].append(vl)
            history["val_accuracy"].append(va)
            line += f", val_loss {vl:.4f}, val_accuracy {va:.4f}"
        print(f"  {desc} epoch {epoch}/{epochs}: {line}", flush=True)
        if val is not None and patience > 0 and best.update(history["val_loss"][-1], epoch):
            print(f"  {desc}: early stop, best val_loss {best.loss:.4f} restored", flush=True)
            break
    best.restore()
    return history, best.epoch if best.weights is not None else epochs


def _compiled_steps(model, learning_rate, loss_fn, strategy=None):
    """(train_step(x, y, w) -> (mean loss, correct count), evaluate_split(x, y) -> (loss,
    accuracy)). One code path for one process and for tf.distribute: each replica computes
    sum(w * loss) / global batch size on its slice, the optimizer sums the gradients across
    replicas, so the update is the single-process one."""
    import keras
    import tensorflow as tf

    from edgetl.pipeline import ImageFiles, iter_batches

    variables = model.trainable_variables
    strategy = strategy or tf.distribute.get_strategy()
    if not all(strategy.extended.variable_created_in_scope(v.value) for v in variables):
        # A model built outside the strategy (the stage-1 head on cached embeddings): cheap,
        # so every worker trains it alike in its own process.
        strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        optimizer = keras.optimizers.Adam(learning_rate)
        optimizer.build(variables)

    def step(xb, yb, wb, n):
        with tf.GradientTape() as tape:
            p = model(xb, training=True)
            loss = tf.reduce_sum(loss_fn.call(yb, p) * wb) / n  # unreduced loss per image
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        right = tf.reduce_sum(tf.cast(tf.argmax(p, 1) == tf.argmax(yb, 1), tf.float32))
        return loss, right

    @tf.function(reduce_retracing=True)
    def distributed_step(xb, yb, wb, n):
        loss, right = strategy.run(step, args=(xb, yb, wb, n))
        total = tf.distribute.ReduceOp.SUM
        return strategy.reduce(total, loss, axis=None), strategy.reduce(total, right, axis=None)

    def train_step(xb, yb, wb) -> tuple[float, float]:
        # float32 throughout: the model's dtype, whatever the caller's arrays are (mixup and
        # class weights may come as float64)
        xb, yb, wb = (
            np.asarray(a, np.float32) if isinstance(a, np.ndarray) else a for a in (xb, yb, wb)
        )
        n = tf.constant(float(len(xb)))
        if replicas == 1:
            args = (xb, yb, wb)
        else:  # the same global batch on every worker; replica r takes slice r
            parts = [np.array_split(a, replicas) for a in (xb, yb, wb)]
            args = tuple(
                strategy.experimental_distribute_values_from_function(
                    lambda ctx, p=p: p[ctx.replica_id_in_sync_group]
                )
                for p in parts
            )
        loss, right = distributed_step(*args, n)
        return float(loss), float(right)

    @tf.function(reduce_retracing=True)
    def infer(xb):
        return model(xb, training=False)

    def evaluate_split(xs, ys) -> tuple[float, float]:
        # Images in training-size batches: a 256-image batch of decoded images, prefetched
        # twice, plus its activations, is what grew stage 2 with the validation split.
        size = EVAL_BATCH_IMAGES if isinstance(xs, ImageFiles) else EVAL_BATCH_VECTORS
        p = np.concatenate([infer(b).numpy() for b in iter_batches(xs, size)])
        return float(loss_fn(ys, p)), float((p.argmax(1) == ys.argmax(1)).mean())

    return train_step, evaluate_split


def _check_finite(loss: float, epoch: int, learning_rate: float, desc: str) -> None:
    if not np.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged: the {desc or 'training'} loss is {loss} at epoch {epoch} "
            f"(learning rate {learning_rate:g}); nothing was written. "
            "Try a lower learning rate (--lr, --fine-tune-lr)."
        )


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


@dataclass
class Job:
    """What every stage of one run shares: the scanned folder, the seeded split, targets and
    sample weights, and the resolved backbone."""

    config: TrainConfig
    folder: object  # edgetl.data.ImageFolder
    backbone: object  # edgetl.models.base.Backbone
    alpha: float
    size: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    y: np.ndarray
    sample_weights: np.ndarray
    progress: bool = True
    strategy: object = None  # tf.distribute strategy (edgetl.distribute.choose_strategy)
    cache: object = None  # edgetl.embeddings.CacheAccess, checked in prepare()
    timings: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    emb_stats: dict = field(default_factory=dict)
    # stage -> the folder indices in its training batches, recorded by fit as it makes them
    trained_on: dict[str, np.ndarray] = field(default_factory=dict)
    # the stages whose training the classifier's weights carry now, in order; what the final
    # metrics check against trained_on (a head trained elsewhere brings its own stages)
    model_stages: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    @property
    def has_val(self) -> bool:
        return len(self.val_idx) > 0

    def fit(self, m, x, *, stage: str, idx=None, val=True, **kw) -> tuple[dict, int]:
        """One fit on the seeded split (or on `idx`), shared by every stage; records the images
        of its training batches in trained_on[stage]."""
        from edgetl.pipeline import rows

        c = self.config
        idx = self.train_idx if idx is None else idx
        val_xy = (rows(x, self.val_idx), self.y[self.val_idx]) if val and self.has_val else None
        kw = {"seed": c.seed, "learning_rate": c.learning_rate, "epochs": c.epochs, **kw}
        batches: list[np.ndarray] = []
        history, best = fit(
            m,
            (rows(x, idx), self.y[idx]),
            val_xy,
            batch_size=c.batch_size,
            patience=c.patience,
            sample_weights=self.sample_weights[idx],
            label_smoothing=c.label_smoothing,
            strategy=self.strategy,
            trained_rows=batches,
            **kw,
        )
        seen = idx[np.unique(np.concatenate(batches))] if batches else idx[:0]
        self.trained_on[stage] = np.asarray(seen, dtype=np.int64)
        for k, v in history.items():
            self.history[f"{stage}_{k}"] = v
        return history, best

    def seen_by(self, stages: list[str], idx: np.ndarray) -> int:
        """How many of the images `idx` were in a training batch of any of `stages`."""
        seen = [self.trained_on[s] for s in stages if s in self.trained_on]
        return int(np.isin(idx, np.concatenate(seen)).sum()) if seen else 0


# A class needs one image to train on and one to validate with; fewer is refused. Fewer than
# MIN_VAL_IMAGES validation images make that class's accuracy (and, when classes are unequal,
# the overall one) noise: a warning says so. A class of 1 image beside 10,000 once trained
# silently and reported "validation accuracy 1.000", that class absent from validation.
MIN_CLASS_IMAGES = 2
MIN_VAL_IMAGES = 5


def check_class_sizes(classes: list[str], labels: np.ndarray, val_split: float) -> None:
    """Refuse classes too small to train on and judge (MIN_CLASS_IMAGES)."""
    counts = np.bincount(labels, minlength=len(classes))
    small = [f"{c} ({k})" for c, k in zip(classes, counts, strict=True) if k < MIN_CLASS_IMAGES]
    if small:
        raise UserError(
            f"class(es) with fewer than {MIN_CLASS_IMAGES} images: {', '.join(small)}. Each "
            "class needs one image to train on and one to validate with; add images to it (a "
            f"few dozen for a fair accuracy) or remove its folder"
        )


def warn_small_validation(classes: list[str], val_labels: np.ndarray, labels: np.ndarray) -> None:
    """One line when some class has too few validation images for its accuracy to mean much."""
    if len(val_labels) == 0:
        return
    val = np.bincount(val_labels, minlength=len(classes))
    small = [f"{c} ({k})" for c, k in zip(classes, val, strict=True) if k < MIN_VAL_IMAGES]
    if not small:
        return
    counts = np.bincount(labels, minlength=len(classes))
    imbalance = (
        f"; the classes range from {counts.min()} to {counts.max()} images, so the overall "
        "accuracy mostly reflects the large ones: read the per-class recall"
        if counts.max() >= 10 * counts.min()
        else ""
    )
    print(
        f"warning: fewer than {MIN_VAL_IMAGES} validation images in {', '.join(small[:8])}"
        f"{', ...' if len(small) > 8 else ''}: their accuracy is noise{imbalance}",
        file=sys.stderr,
    )


def prepare(data_dir: Path, run_dir: Path, config: TrainConfig, overwrite: bool, progress: bool):
    """The cheap refusals, the folder scan and the seeded stratified split."""
    from edgetl.data import scan_image_folder, stratified_split
    from edgetl.models.base import resolve
    from edgetl.outdir import check_out_dir
    from edgetl.weightsfile import check_weights_file

    bb, alpha, size = resolve(config.backbone, config.alpha, config.size)  # refuse early
    check_out_dir(run_dir, force=overwrite, data_dirs={"data folder": Path(data_dir)})
    check_weights_file(config.weights, bb.name, alpha)
    folder = scan_image_folder(data_dir)
    for path, why in folder.skipped:
        print(f"  skipped {path}: {why}")
    n = len(folder.classes)
    print(
        f"{len(folder.files)} images in {n} classes: "
        + ", ".join(f"{c} ({k})" for c, k in folder.counts().items())
    )
    check_class_sizes(folder.classes, folder.labels, config.val_split)
    train_idx, val_idx = stratified_split(folder.labels, config.val_split, config.seed)
    warn_small_validation(folder.classes, folder.labels[val_idx], folder.labels)
    cache = None
    if not (config.augment or config.full_forward):
        cache = check_cache_dir(config.cache_dir)  # before any work, a one-line note if not
        if cache.note:
            print(cache.note, file=sys.stderr)
    cw = np.ones(n, np.float32)
    if config.class_weights:
        cw = balanced_class_weights(folder.labels[train_idx], n)
    return Job(
        config,
        folder,
        bb,
        alpha,
        size,
        train_idx,
        val_idx,
        one_hot(folder.labels, n),
        cw[folder.labels].astype(np.float32),
        progress,
        cache=cache,
    )


def build_model(job: Job):
    """The classifier on the requested backbone weights; a file that fills only part of the
    network is refused rather than leaving layers random."""
    import keras

    from edgetl.classifier import HeadConfig, build_classifier, find_base
    from edgetl.models.base import BackboneConfigError, build_backbone
    from edgetl.weightsfile import explain_weights_error

    c, name = job.config, job.backbone.name
    keras.utils.set_random_seed(c.seed)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            features = build_backbone(name, job.alpha, job.size, c.weights)
        partial = [w for w in caught if "freshly-initialized" in str(w.message)]
        for w in caught:
            if w not in partial:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if partial:  # Keras loaded only some layers: the rest would stay random, silently
            raise ValueError(f"{len(partial)} layer group(s) found no weights in the file")
    except (UserError, BackboneConfigError):
        raise
    except Exception as e:
        raise UserError(explain_weights_error(c.weights, name, job.alpha, e)) from None
    head_cfg = HeadConfig(c.hidden_units, c.dropout, c.seed)
    model = build_classifier(features, len(job.classes), head_cfg)
    base = find_base(model)
    if base is not None:
        base.trainable = False
    return model, base, head_cfg


def stage1_cached(job: Job, model, head_cfg):
    """Stage 1 on cached embeddings; the head early stopping chose on validation goes into the
    model. Returns (that head, the embeddings, its epoch count: what a refit repeats)."""
    import keras

    from edgetl.classifier import build_head_model, copy_head_weights, embedding_model
    from edgetl.embeddings import EmbeddingCache, check_cache_dir
    from edgetl.pipeline import VectorFile

    c = job.config
    t = time.perf_counter()
    access = job.cache or check_cache_dir(c.cache_dir)
    cache_dir = access.folder
    cache = EmbeddingCache(
        embedding_model(model),
        cache_dir,
        runtime=c.embedding_runtime,
        cluster=c.cluster,
        writable=access.writable,
    )
    # The rows stay on disk (a temporary file beside the cache), read batch by batch: the
    # matrix (5 KB per image for a 1280-wide MobileNetV2) no longer grows the process.
    emb = VectorFile(
        len(job.folder.files), cache.dim, folder=cache_dir if access.writable else None
    )
    cache.embed_files(job.folder.files, progress=job.progress, out=emb)
    job.timings["embeddings_s"] = time.perf_counter() - t
    job.emb_stats = asdict(cache.stats)
    print(
        f"  embeddings: {cache.stats.computed} computed with {cache.stats.runtime or 'cache'}"
        f", {cache.stats.from_cache} from cache ({job.timings['embeddings_s']:.1f} s)"
    )
    t = time.perf_counter()
    n = len(job.classes)
    keras.utils.set_random_seed(c.seed)
    head = build_head_model(emb.shape[1], n, head_cfg)
    mix = {"schedule": c.schedule, "mixup": c.mixup}
    _, best_epoch = job.fit(head, emb, stage="stage1", desc="head", **mix)
    copy_head_weights(head, model)
    job.model_stages = ["stage1"]
    job.timings["stage1_head_s"] = time.perf_counter() - t
    job.timings["stage1_s"] = job.timings["embeddings_s"] + job.timings["stage1_head_s"]
    return head, emb, best_epoch


def stage1_full_forward(job: Job, model):
    """Stage 1 through the frozen backbone every epoch (needed by --augment), images streamed
    from disk; returns them (edgetl.pipeline.ImageFiles)."""
    import keras

    from edgetl.pipeline import ImageFiles

    c = job.config
    images = ImageFiles(job.folder.files, job.size, job.size)
    t = time.perf_counter()
    keras.utils.set_random_seed(c.seed)
    job.fit(
        model,
        images,
        stage="stage1",
        schedule=c.schedule,
        transform=make_augmenter(c.seed) if c.augment else None,
        desc="head (augmented)" if c.augment else "head (full forward)",
    )
    job.model_stages = ["stage1"]
    job.timings["stage1_full_forward_s"] = time.perf_counter() - t
    job.timings["stage1_s"] = job.timings["stage1_full_forward_s"]
    return images


def stage2_fine_tune(job: Job, model, base, images):
    """Unfreeze the top of the backbone at a low learning rate; the best epoch is kept, and
    the stage-1 weights count as epoch 0. It starts from the head chosen on validation (never
    from a refit head, which has trained on the validation images its selection would use).
    Returns (the images, streamed from disk; the kept epoch, 0 for the stage-1 weights)."""
    from edgetl.pipeline import ImageFiles

    c = job.config
    t = time.perf_counter()
    if images is None:
        images = ImageFiles(job.folder.files, job.size, job.size)
    k = set_fine_tune(base, c.fine_tune_layers)
    print(
        f"  stage 2: unfroze the top {k} of {len(base.layers)} backbone layers "
        "(BatchNormalization kept frozen)"
    )
    _, best = job.fit(
        model,
        images,
        stage="stage2",
        epochs=c.fine_tune_epochs,
        seed=c.seed + 1,
        learning_rate=c.fine_tune_learning_rate,
        transform=make_augmenter(c.seed) if c.augment else None,
        desc="fine-tune",
        from_start=True,
    )
    if best > 0:
        job.model_stages.append("stage2")
    job.timings["stage2_s"] = time.perf_counter() - t
    base.trainable = False  # saved frozen: a later load trains the head only by default
    return images, best


def refit_on_train_and_val(
    job: Job, model, base, head_cfg, emb, images, stage1_epochs: int, stage2_epochs: int, pretrained
) -> None:
    """`--refit`, after the metrics: the same training again on train + val, for the epoch
    counts validation chose (a new head on the cached embeddings; then, when stage 2 kept an
    epoch, stage 2 again from the pretrained backbone `pretrained`). Nothing is chosen or scored
    on these images: the metrics describe the model chosen on validation before this."""
    import keras

    from edgetl.classifier import build_head_model, copy_head_weights

    c = job.config
    t = time.perf_counter()
    everything = np.concatenate([job.train_idx, job.val_idx])
    print(f"  refit: a new head on train + val ({len(everything)} images), {stage1_epochs} epochs")
    mix = {"schedule": c.schedule, "mixup": c.mixup}
    keras.utils.set_random_seed(c.seed)
    head = build_head_model(emb.shape[1], len(job.classes), head_cfg)
    job.fit(head, emb, stage="refit", idx=everything, val=False, epochs=stage1_epochs, **mix)
    if pretrained is not None:
        base.set_weights(pretrained)  # the backbone stage 2 started from
    copy_head_weights(head, model)
    job.model_stages = ["refit"]
    if pretrained is not None and stage2_epochs > 0:
        k = set_fine_tune(base, c.fine_tune_layers)
        print(f"  refit: stage 2 on train + val, top {k} layers, {stage2_epochs} epochs")
        job.fit(
            model,
            images,
            stage="refit_stage2",
            idx=everything,
            val=False,
            epochs=stage2_epochs,
            seed=c.seed + 1,
            learning_rate=c.fine_tune_learning_rate,
            transform=make_augmenter(c.seed) if c.augment else None,
            desc="fine-tune (refit)",
        )
        base.trainable = False
        job.model_stages.append("refit_stage2")
    job.timings["refit_s"] = time.perf_counter() - t


def final_metrics(job: Job, model, head, emb, images) -> dict:
    """Metrics on the held-out images (train set if none), of the model chosen on validation,
    taken before any refit. While the backbone is the frozen one the embeddings came from,
    head(embedding) is the model's output (to ~1e-5); after stage 2 or with augmentation the
    full Keras model runs on the images. Records which images the number comes from and how
    many of them were in a training batch of a stage whose weights the model holds."""
    from edgetl.metrics import evaluate
    from edgetl.pipeline import ImageFiles, predict, rows

    eval_idx = job.val_idx if job.has_val else job.train_idx
    if emb is not None and "stage2_s" not in job.timings:
        probs = predict(head, rows(emb, eval_idx), batch_size=256)
    else:
        images = images if images is not None else ImageFiles(job.folder.files, job.size, job.size)
        probs = predict(model, images[eval_idx], batch_size=32)
    metrics = evaluate(probs, job.folder.labels[eval_idx], job.classes)
    metrics["split"] = "validation" if job.has_val else TRAIN_SPLIT
    metrics["train_count"], metrics["val_count"] = len(job.train_idx), len(job.val_idx)
    seen = job.seen_by(job.model_stages, eval_idx)
    metrics["seen_by_weights"] = seen > 0
    metrics["seen_count"] = seen
    metrics["scored_stages"] = list(job.model_stages)
    metrics["history"] = job.history
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
    return metrics


def write_run_dir(
    run_dir: Path, job: Job, model, metrics: dict, data_dir: Path, overwrite: bool = False
) -> None:
    """RUN_DIR, staged and swapped in whole (edgetl.outdir): model, labels, contract, metrics,
    train info and the two plots."""
    from edgetl.contract import CONTRACT_FILE, LABELS_FILE, InputContract, save_labels
    from edgetl.metrics import CONFUSION_PNG, CURVES_PNG, plot_confusion, plot_curves
    from edgetl.modelio import MODEL_FILE, TRAIN_INFO_FILE
    from edgetl.outdir import Staging

    if not all(np.all(np.isfinite(w)) for w in model.get_weights()):
        raise TrainingDiverged(
            "training produced NaN/Inf weights; nothing was written. Try a lower learning rate."
        )
    staging = Staging(run_dir, replace=overwrite)
    with staging as tmp:
        model.save(tmp / MODEL_FILE)
        save_labels(tmp / LABELS_FILE, job.classes)
        InputContract(
            height=job.size,
            width=job.size,
            internal_preprocessing=job.backbone.internal_preprocessing,
        ).save(tmp / CONTRACT_FILE)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        info = {
            "data_dir": str(Path(data_dir).resolve()),
            "backbone": job.backbone.name,
            "alpha": job.alpha,
            "size": job.size,
            "config": asdict(job.config),
            "embeddings": job.emb_stats,
            "skipped": [[str(p), why] for p, why in job.folder.skipped],
        }
        (tmp / TRAIN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        plot_curves(job.history, tmp / CURVES_PNG)
        plot_confusion(metrics, tmp / CONFUSION_PNG)
        staging.commit()


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
    from edgetl.distribute import choose_strategy, describe

    config = config or TrainConfig()
    t_all = time.perf_counter()
    run_dir = Path(run_dir)
    job = prepare(Path(data_dir), run_dir, config, overwrite, progress)
    # One writer per run directory from here to the rename: a second `train --out` for the
    # same folder is refused now, not after its training (edgetl.outdir.OutputClaim).
    with OutputClaim(run_dir, replace=overwrite):
        if config.augment or config.full_forward or config.fine_tune_layers:
            job.strategy = choose_strategy()  # tf.distribute: one process, unless a cluster
            print(f"  training on {describe(job.strategy)}")
        with job.strategy.scope() if job.strategy is not None else nullcontext():
            model, base, head_cfg = build_model(job)
        head = emb = images = pretrained = None
        stage1_epochs = stage2_epochs = 0
        if config.augment or config.full_forward:
            images = stage1_full_forward(job, model)
        else:
            head, emb, stage1_epochs = stage1_cached(job, model, head_cfg)
        refit = config.refit and job.has_val and emb is not None  # the refit needs the cache
        if config.fine_tune_layers and base is not None:
            if refit:
                pretrained = base.get_weights()
            images, stage2_epochs = stage2_fine_tune(job, model, base, images)
        # Scored here, before a refit trains on the validation images.
        metrics = final_metrics(job, model, head, emb, images)
        if refit:
            refit_on_train_and_val(
                job, model, base, head_cfg, emb, images, stage1_epochs, stage2_epochs, pretrained
            )
        metrics["written_model_stages"] = list(job.model_stages)
        metrics["written_model_scored"] = job.model_stages == metrics["scored_stages"]
        metrics["trained_on"] = {s: len(i) for s, i in job.trained_on.items()}
        job.timings["total_s"] = time.perf_counter() - t_all
        metrics["timings"] = job.timings
        write_run_dir(run_dir, job, model, metrics, Path(data_dir), overwrite)
    return TrainResult(
        run_dir=run_dir,
        labels=job.classes,
        history=job.history,
        metrics=metrics,
        timings=job.timings,
        embedding_stats=job.emb_stats,
        skipped=[(str(p), w) for p, w in job.folder.skipped],
        trained_on={s: [job.folder.files[i] for i in idx] for s, idx in job.trained_on.items()},
    )


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
    add_number(
        p,
        "--epochs",
        kind=int,
        lo=1,
        hi=100_000,
        default=d.epochs,
        help="most epochs of stage 1 (early stopping ends it sooner); 100 with patience 10 "
        "against 20 with 5 (bench: +1.2 at 10, +1.5 at 30, +0.4 at 100 labels/class points against v0.1)",
    )
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
        help="fraction of each class held out for validation (0.1: bench: +3.1 at 10, +0.7 at 30, +0.1 at 100 labels/class; 0.3: "
        "bench: -3.6 at 10, -0.4 at 30, -0.3 at 100 labels/class, points against v0.1's 0.2)",
    )
    add_number(p, "--seed", kind=int, lo=0, hi=2**32 - 1, default=d.seed)
    add_number(
        p,
        "--hidden-units",
        kind=int,
        lo=0,
        hi=65_536,
        default=d.hidden_units,
        help="units of the head's hidden layer (0: none, dropout then the softmax layer; "
        "bench: -3.1 at 10, -1.3 at 30, -1.2 at 100 labels/class points against v0.1)",
    )
    add_number(p, "--dropout", kind=float, lo=0, hi=1, hi_open=True, default=d.dropout)
    add_number(
        p,
        "--label-smoothing",
        kind=float,
        lo=0,
        hi=1,
        hi_open=True,
        default=d.label_smoothing,
        help="(bench: +0.4 at 10, +0.6 at 30, +0.5 at 100 labels/class points against v0.1's 0)",
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
        help="early stopping patience on validation loss (0: off; off in v0.1: bench: +0.0 at 10, +0.4 at 30, -0.1 at 100 labels/class "
        "points)",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="per-epoch augmentation (flip, rotation, zoom, contrast); needs full "
        "forward passes, so the embedding cache is not used (bench: -2.0 at 10, -3.2 at 30 labels/class, +298 s points, seed 0)",
    )
    p.add_argument(
        "--schedule",
        default=d.schedule,
        choices=["constant", "cosine"],
        help="stage 1 learning rate: constant, or cosine decay to 0 over the epochs (cosine: "
        "bench: -3.1 at 10, -1.4 at 30, -0.3 at 100 labels/class points against v0.1)",
    )
    add_number(
        p,
        "--mixup",
        kind=float,
        lo=0,
        hi=100,
        default=d.mixup,
        help="stage 1 on cached embeddings: mixup with Beta(a, a) weights (0: off; 0.2: "
        "bench: -0.6 at 10, +0.7 at 30, -0.2 at 100 labels/class points against v0.1)",
    )
    p.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=d.refit,
        help="after the metrics are taken, train again on train + val for the epoch counts "
        "validation chose: a new head (cached stage 1 only), then with --fine-tune-layers stage 2 "
        "again from the pretrained backbone (about twice stage 2's time); metrics.json scores the "
        "model chosen on validation, before the refit (bench: +0.7 at 10, +1.7 at 30, +0.4 at 100 "
        "labels/class points against v0.1; with stage 2: +2.8 at 30, +1.4 at 100 labels/class "
        "against --no-refit, seed 0)",
    )
    add_number(
        p,
        "--fine-tune-layers",
        kind=float,
        lo=0,
        default=d.fine_tune_layers,
        help="stage 2: unfreeze the top N backbone layers (or a fraction < 1; 0: no stage 2; "
        "30: bench: +1.0 at 10, +2.0 at 30 labels/class, +100 s points, seed 0)",
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
    p.add_argument(
        "--cluster",
        help="embedding extraction on Ray: 'ray' (a local Ray, or the cluster at $RAY_ADDRESS) "
        "or 'ray://HOST:PORT'; needs a --cache-dir the workers share (default: "
        "$EDGETL_CLUSTER, else one process). Multi-worker training is set by TF_CONFIG",
    )


def accuracy_line(m: dict) -> str:
    """The printed result: which images the number comes from, whether the scored weights had
    trained on them, and whether the written model is the scored one."""
    line = f"{m['split']} accuracy: {m['accuracy']:.3f} on {m['count']} images"
    if m["seen_by_weights"]:
        line += f", {m['seen_count']} of them seen by the weights in training"
        if m["split"] == TRAIN_SPLIT:
            line += " (not an estimate for new images; use --val-split > 0 for one)"
    else:
        line += ", none seen by the weights in training"
    if not m["written_model_scored"]:
        line += (
            "\n  (the model chosen on validation; the written model is then refit on train + "
            f"val ({', '.join(m['written_model_stages'])}) and has no held-out score)"
        )
    return line


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
    from edgetl.distribute import cluster_setting, tf_config_workers
    from edgetl.models.base import resolve
    from edgetl.outdir import check_out_dir
    from edgetl.weightsfile import check_weights_file

    config = config_from_args(args)
    cluster_setting(config.cluster)  # refuse a bad setting before TensorFlow is imported
    tf_config_workers()  # and a malformed $TF_CONFIG
    bb, alpha, _ = resolve(config.backbone, config.alpha, config.size)
    # The cheap refusals first, before TensorFlow is imported.
    if not args.data_dir.is_dir():
        raise UserError(f"data folder {str(args.data_dir)!r} does not exist or is not a folder")
    check_out_dir(args.out, force=args.force, data_dirs={"data folder": args.data_dir})
    check_weights_file(config.weights, bb.name, alpha)
    result = train(args.data_dir, args.out, config, progress=True, overwrite=args.force)
    m = result.metrics
    print("\n" + accuracy_line(m))
    for c, s in m["per_class"].items():
        print(
            f"  {c:<20} precision {s['precision']:.3f}  recall {s['recall']:.3f}  n={s['support']}"
        )
    print(
        f"run written to {result.run_dir}: model.keras, labels.json, contract.json, "
        f"{METRICS_FILE}, {CURVES_PNG}, {CONFUSION_PNG}"
    )
    return 0
