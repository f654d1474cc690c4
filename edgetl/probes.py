"""The golden probes of a bundle: which inputs, the Keras outputs for them, and what they can
prove.

Made once at export, from the Keras model:

* **Choice.** Real images (calibration or training images) picked greedily to switch on as many
  embedding features as possible, then seeded synthetic images (noise at several scales, ramps,
  edges, colours) that fill the gaps images leave, and stand alone when no image is given.
* **Noise floors.** The same probes through a float64 copy of the model, and through the model
  with every weight rounded to float16. max |float32 - float64| is this model's own float32
  rounding noise on these probes; max |float16-weights - float32| is what float16 weights alone
  do to it. verify scales the float32 and float16 tolerances by them (edgetl.tolerances), so an
  ill-conditioned model gets a wider limit and a well-conditioned one a tighter one, on any CPU.
* **Coverage.** The spread of outputs across probes and the share of embedding features (the
  input of the head's first Dense layer) that at least one probe switches on. A model whose
  outputs do not depend on its input (a dead backbone), or probes that leave most features
  dark, cannot tell a broken artifact from a good one: verify says so (and fails under
  --strict-probes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgetl.compare import log_probs, max_log_error
from edgetl.contract import InputContract
from edgetl.manifest import ProbeSet
from edgetl.tolerances import LOG_FLOOR

MAX_REAL_PROBES = 8
SYNTHETIC_PROBES = 8  # always added: they exercise what natural images may not
EXTRA_SYNTHETIC = 8  # more seeded ones, kept only where they switch on new features
PROBE_SEED = 20261122
# Coverage thresholds. A dead backbone gives outputs identical to 1e-7 on every probe
# (measured: `train --weights none --epochs 1`); a trained head on real features spreads its
# probabilities by 0.05-0.4 across probes. A feature is "on" when it exceeds this fraction of
# the largest embedding value on the probes.
MIN_OUTPUT_SPREAD = 1e-3
# ... or of log p (a saturated model's probabilities are ~0 and ~1 on every probe, its log p
# still spread by whole units; a dead model's by < 1e-6 like its probabilities).
MIN_LOG_SPREAD = 1e-2
MIN_FEATURES_ACTIVE = 0.5
FEATURE_ON = 1e-6
# Saturation. A probe is saturated when its top-1 probability is within SATURATED_MASS of 1:
# a change that moves the logits by 0.1 (a 1% change of one conv layer moves them by less)
# then moves every probability by < 0.1 * 1e-4 = 1e-5, the smallest float32 element limit
# (edgetl.tolerances), so only the log-space judgement can see it there. A probe is one-hot
# when every other class is under the log floor too: no output comparison sees anything on it.
SATURATED_MASS = 1e-4


def float64_model(model):
    """A float64 copy of `model` (same config and weights): the reference for rounding noise."""
    cfg = model.get_config()

    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy" and isinstance(node.get("config"), dict):
                node["config"]["name"] = "float64"
            for key, value in node.items():
                if key == "dtype" and value == "float32":
                    node[key] = "float64"
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(cfg)
    clone = model.__class__.from_config(cfg)
    clone.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
    return clone


def noise_floors(model, inputs: np.ndarray, expected: np.ndarray) -> dict:
    """{"float32": max |f32 - f64|, "float16": max |f16 kernels - f32|} on these probes, and
    the same in log-probability space ("float32_log", "float16_log": log max(p, LOG_FLOOR))."""
    out: dict = {"method": "float64 copy; kernels rounded to float16, float32 compute"}
    try:
        y64 = float64_model(model).predict(np.asarray(inputs, np.float64), verbose=0)
        out["float32"] = float(np.abs(np.asarray(y64, np.float64) - expected).max())
        out["float32_log"] = max_log_error(y64, expected, LOG_FLOOR)
    except Exception as e:  # a custom layer without float64 kernels: fixed limits then apply
        out["float32"] = None
        out["float32_error"] = f"{type(e).__name__}: {e}"[:300]
    weights = model.get_weights()
    try:  # kernels only: converters fold BatchNorm into them before storing float16
        model.set_weights(
            [np.asarray(w, np.float16).astype(w.dtype) if w.ndim >= 2 else w for w in weights]
        )
        y16 = model.predict(inputs, batch_size=16, verbose=0)
        out["float16"] = float(np.abs(np.asarray(y16, np.float64) - expected).max())
        out["float16_log"] = max_log_error(expected, y16, LOG_FLOOR)
    finally:
        model.set_weights(weights)
    return out


def embedding_model(model):
    """Image -> the input of the head's first Dense layer: the backbone's pooled features,
    whatever the backbone (MobileNet, Xception, a plain CNN) and however it is nested (a
    Sequential, a functional model wrapping the whole classifier, a head in its own model)."""
    import keras

    try:
        tensor = _features_tensor(model)
        return None if tensor is None else keras.Model(model.inputs, tensor)
    except Exception:  # a layer used twice, or not functional: coverage is then not measured
        return None


def _features_tensor(model):
    """The tensor of `model`'s own graph that feeds its first Dense layer (graph order),
    descending into nested models; None when there is no Dense layer."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            return layer.input
        if isinstance(layer, keras.Model):
            inner = _features_tensor(layer)
            if inner is None:
                continue
            outer = _outer_input(layer)
            if outer is None:
                continue
            if any(inner is t for t in layer.inputs):  # the nested model starts with the Dense
                return outer
            return keras.Model(layer.inputs, inner)(outer)
    return None


def _outer_input(nested):
    """The tensor of the enclosing graph a nested model is called on (its own .input is its
    inner Input); None when it is called more than once, or not on one tensor."""
    own = {id(t) for t in nested.inputs}
    calls = [
        node.input_tensors
        for node in getattr(nested, "_inbound_nodes", [])
        if len(node.input_tensors) == 1 and id(node.input_tensors[0]) not in own
    ]
    return calls[0][0] if len(calls) == 1 else None


def coverage(model, inputs: np.ndarray, expected: np.ndarray, embed=None) -> dict:
    """What these probes can show: output spread and the share of embedding features on."""
    y = np.asarray(expected, np.float64)
    spread = float(y.std(axis=0).max()) if len(y) > 1 else 0.0
    log_spread = float(log_probs(y, LOG_FLOOR).std(axis=0).max()) if len(y) > 1 else 0.0
    out: dict = {"probes": len(inputs), "output_spread": spread, "log_spread": log_spread}
    problems = []
    if spread < MIN_OUTPUT_SPREAD and log_spread < MIN_LOG_SPREAD:
        problems.append(
            f"the model's outputs barely depend on its input (largest spread across "
            f"{len(inputs)} probes {spread:.2g} < {MIN_OUTPUT_SPREAD:g}, of log p "
            f"{log_spread:.2g} < {MIN_LOG_SPREAD:g}): a changed weight cannot show on them; "
            "is the backbone trained?"
        )
    sat = saturation(expected)
    out.update(sat)
    if (why := saturation_problem(sat, len(inputs))) is not None:
        problems.append(why)
    embed = embed if embed is not None else embedding_model(model)
    if embed is not None:
        feats = np.asarray(embed.predict(inputs, batch_size=16, verbose=0), np.float64)
        feats = feats.reshape(len(inputs), -1)
        on = _features_on(feats)
        share = float(on.mean())
        out.update(features=int(on.size), features_active=int(on.sum()), features_share=share)
        if share < MIN_FEATURES_ACTIVE:
            problems.append(
                f"only {on.sum()} of {on.size} embedding features are switched on by any probe "
                f"({share:.0%} < {MIN_FEATURES_ACTIVE:.0%}): weights reading the others are "
                "unchecked"
            )
    out["informative"] = not problems
    out["problems"] = problems
    return out


def saturation(expected: np.ndarray) -> dict:
    """Which probes' reference outputs are saturated (1 - top-1 < SATURATED_MASS) or one-hot
    (every other class under LOG_FLOOR); indices into the probes."""
    y = np.asarray(expected, np.float64)
    if y.ndim != 2 or not len(y):
        return {"saturated": 0, "saturated_probes": [], "one_hot": 0, "one_hot_probes": []}
    top = y.argmax(1)
    rest = y.copy()
    rest[np.arange(len(y)), top] = 0.0
    sat = np.flatnonzero(rest.sum(1) < SATURATED_MASS)
    hot = np.flatnonzero(rest.max(1, initial=0.0) < LOG_FLOOR)
    return {
        "saturated": len(sat),
        "saturated_probes": sat.tolist(),
        "saturated_mass": SATURATED_MASS,
        "one_hot": len(hot),
        "one_hot_probes": hot.tolist(),
        "log_floor": LOG_FLOOR,
    }


def saturation_problem(sat: dict, probes: int) -> str | None:
    """Every probe one-hot: not even log p can show a change (a problem, like a dead model)."""
    if probes and sat.get("one_hot", 0) >= probes:
        return (
            f"every probe's output is one-hot in float32 (all other classes < "
            f"{sat.get('log_floor', LOG_FLOOR):g}): neither probabilities nor their logarithms "
            "can show a changed weight; export the model's logits (before softmax) instead"
        )
    return None


def with_saturation(coverage: dict | None, expected: np.ndarray) -> dict | None:
    """A recorded coverage with the saturation of these golden outputs (bundles exported
    before saturation was recorded get it at verify, from probes/expected.bin)."""
    if coverage is None or "saturated" in coverage:
        return coverage
    out = {**coverage, **saturation(expected)}
    if (why := saturation_problem(out, len(expected))) is not None:
        out["problems"] = [*out.get("problems", []), why]
        out["informative"] = False
    return out


def _features_on(feats: np.ndarray) -> np.ndarray:
    scale = max(float(np.abs(feats).max()), 1e-30)
    return (np.abs(feats) > FEATURE_ON * scale).any(axis=0)


def synthetic_images(
    h: int,
    w: int,
    lo: float,
    hi: float,
    count: int,
    seed: int,
    gray_weights: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Seeded images in the contract's range: noise (fine and coarse), ramps, edges, colours;
    made in RGB, then gray by `gray_weights` for a 1-channel model (as real images are)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fixed = [
        rng.uniform(0, 1, (h, w, 3)),  # noise: exercises every weight
        np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), 1 - xx / max(w - 1, 1)], -1),  # ramps
        ((xx // 8 + yy // 8) % 2)[..., None] * np.ones(3),  # checkerboard: sharp edges
        np.full((h, w, 3), 0.5),  # flat gray
    ]
    made = fixed[:count]
    while len(made) < count:
        kind = len(made) % 3
        if kind == 0:  # coarse noise, upsampled: blob-like structure
            cells = rng.uniform(0, 1, (max(h // 8, 1), max(w // 8, 1), 3))
            img = np.kron(cells, np.ones((8, 8, 1)))[:h, :w]
            img = np.pad(img, ((0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0)), "edge")
        elif kind == 1:  # oriented stripes in a random colour
            angle, period = rng.uniform(0, np.pi), rng.uniform(3, 24)
            phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
            img = (0.5 + 0.5 * np.sin(2 * np.pi * phase))[..., None] * rng.uniform(0, 1, 3)
        else:  # a coloured disc on a coloured background
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(h / 8, h / 2)
            disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)[..., None]
            img = np.where(disc, rng.uniform(0, 1, 3), rng.uniform(0, 1, 3))
        made.append(img)
    rgb = np.stack(made).astype(np.float32)
    if gray_weights is not None:
        rgb = (rgb @ np.asarray(gray_weights, np.float32))[..., None]
    return (rgb * (hi - lo) + lo).astype(np.float32)


def _greedy_by_features(feats: np.ndarray, k: int) -> list[int]:
    """Up to k rows, each adding the most not-yet-seen features (ties: earliest row)."""
    on = np.abs(feats) > FEATURE_ON * max(float(np.abs(feats).max()), 1e-30)
    seen = np.zeros(on.shape[1], bool)
    picked: list[int] = []
    for _ in range(min(k, len(on))):
        gain = (on & ~seen).sum(1).astype(float)
        gain[picked] = -1
        best = int(np.argmax(gain))
        if gain[best] < 0:
            break
        picked.append(best)
        seen |= on[best]
    return picked


def make_probes(
    model,
    contract: InputContract,
    images: np.ndarray | None,
    labels: Sequence[int | None] | None,
    names: Sequence[str] | None,
) -> tuple[ProbeSet, dict, dict]:
    """(probes, noise floors, coverage). `images` are float32 (N, H, W, C) as the contract says
    (channels, range); the probes keep the images that switch on the most embedding features."""
    h, w = contract.height, contract.width
    lo, hi = contract.value_range
    embed = embedding_model(model)
    parts, all_names, all_labels = [], [], []
    if images is not None and len(images):
        images = np.asarray(images, np.float32)
        if embed is not None and len(images) > MAX_REAL_PROBES:
            feats = np.asarray(embed.predict(images, batch_size=16, verbose=0))
            idx = _greedy_by_features(feats.reshape(len(images), -1), MAX_REAL_PROBES)
        else:
            idx = list(range(min(len(images), MAX_REAL_PROBES)))
        parts.append(images[idx])
        all_names += [names[i] if names is not None else f"image:{i}" for i in idx]
        all_labels += [
            (None if labels is None or labels[i] is None else int(labels[i])) for i in idx
        ]
    synth = synthetic_images(
        h, w, lo, hi, SYNTHETIC_PROBES + EXTRA_SYNTHETIC, PROBE_SEED, contract.gray_weights
    )
    keep = list(range(SYNTHETIC_PROBES))
    if embed is not None:  # extra synthetic probes only where they switch on something new
        base = np.concatenate([*parts, synth[:SYNTHETIC_PROBES]])
        seen = _features_on(np.asarray(embed.predict(base, batch_size=16, verbose=0)))
        extra = np.asarray(embed.predict(synth[SYNTHETIC_PROBES:], batch_size=16, verbose=0))
        scale = max(float(np.abs(extra).max()), 1e-30)
        for i, f in enumerate(extra.reshape(len(extra), -1)):
            new = (np.abs(f) > FEATURE_ON * scale) & ~seen
            if new.any():
                keep.append(SYNTHETIC_PROBES + i)
                seen |= new
    parts.append(synth[keep])
    all_names += [f"synthetic:{PROBE_SEED}:{i}" for i in keep]
    all_labels += [None] * len(keep)
    inputs = np.concatenate(parts).astype(np.float32)
    expected = np.asarray(model.predict(inputs, batch_size=16, verbose=0), dtype=np.float32)
    probes = ProbeSet(names=all_names, inputs=inputs, expected=expected, labels=all_labels)
    return probes, noise_floors(model, inputs, expected), coverage(model, inputs, expected, embed)
