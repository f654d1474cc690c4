"""Layer localization: when a pair fails, name the first Keras layer whose output the artifact
gets wrong, from intermediate outputs of the artifact's own format (ONNX nodes, TFLite tensors,
TF.js layers: Session.layer_outputs of a runtime whose layer_formats hold it) compared with Keras'
layer outputs. Best effort: when it cannot say, it says why."""

from __future__ import annotations

import math
import re

import numpy as np

from edgetl.results import Localization

# A layer is out of tolerance when max |candidate - keras| / max |keras| over its output exceeds
# this, per artifact precision. Errors accumulate with depth; the worst layer of clean artifacts
# (MobileNetV2 0.35/96, data-fitted BN, trained head) measured: ONNX 2.0e-5, TFLite float32
# 2.3e-5, float16 0.049, dynamic 0.21, int8 0.87 (relative RMS is no better: 0.75 for int8).
# Thresholds sit 2-40x above; for int8 only a gross fault stands out.
LOCALIZE_REL = {"float32": 1e-3, "float16": 0.25, "dynamic": 0.6, "int8": 2.0, "uint8": 2.0}
LOCALIZE_PROBES = 2
_SCOPE_SUFFIX = re.compile(r"_\d+$")


def keras_layer_outputs(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output for `x`, nested sub-models flattened, in topological order."""
    out: dict[str, np.ndarray] = {}
    _collect_layer_outputs(model, np.asarray(x, np.float32), out)
    return out


def _collect_layer_outputs(model, x: np.ndarray, out: dict[str, np.ndarray]) -> None:
    import keras

    layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    # Keras keys a functional model's own nodes as f"{id(op)}_ib-{index}" (a layer shared with
    # another model has further inbound nodes that belong to that model).
    keys = getattr(model, "_nodes", None)
    taps, plan = [], []
    for layer in layers:
        own = [
            n
            for i, n in enumerate(layer._inbound_nodes)
            if keys is None or f"{id(layer)}_ib-{i}" in keys
        ]
        if not own:
            continue
        node = own[0]
        nested = isinstance(layer, keras.Model)
        plan.append((layer, nested, len(taps)))
        taps.append(node.output_tensors[0])
        if nested:
            taps.append(node.input_tensors[0])
    probe = keras.Model(model.inputs[0], taps)
    values = probe(x, training=False)
    values = [np.asarray(v) for v in (values if isinstance(values, list | tuple) else [values])]
    for layer, nested, i in plan:
        if nested:
            _collect_layer_outputs(layer, values[i + 1], out)
        out.setdefault(layer.name, values[i])


def layer_of_name(name: str, order: dict[str, int]) -> str | None:
    """The Keras layer a converter's tensor/node name belongs to: for each ';'-joined part, the
    innermost path segment naming a layer (Keras 3 scopes add "_1"); across parts (fused ops),
    the latest layer in Keras order, since a fused op outputs its last layer's value."""
    best = None
    for part in name.split(";"):
        segs = [s for s in part.split(":")[0].split("/") if s]
        for seg in reversed(segs):
            stripped = _SCOPE_SUFFIX.sub("", seg)
            hit = stripped if stripped in order else seg if seg in order else None
            if hit is not None:
                if best is None or order[hit] > order[best]:
                    best = hit
                break
    return best


def _alignments(candidate: np.ndarray, reference: np.ndarray) -> list[np.ndarray]:
    """The candidate's tensor in the reference's layout: as is, NCHW -> NHWC, or with unit
    dimensions dropped. Several when ambiguous (H == W == C): the caller takes the closest."""
    out = []
    if candidate.shape == reference.shape:
        out.append(candidate)
    if candidate.ndim == 4 and candidate.transpose(0, 2, 3, 1).shape == reference.shape:
        out.append(candidate.transpose(0, 2, 3, 1))
    squeeze = [d for d in candidate.shape if d != 1] == [d for d in reference.shape if d != 1]
    if not out and squeeze and candidate.shape[:1] == reference.shape[:1]:
        out.append(candidate.reshape(reference.shape))
    return out


def _normalized_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    diff = np.abs(candidate.astype(np.float64) - reference)
    if not np.isfinite(diff).all():
        return math.inf
    return float(diff.max()) / max(float(np.abs(reference).max()), 1e-12)


def first_divergence(
    keras_outputs: dict[str, np.ndarray],
    candidate_outputs: dict[str, np.ndarray],
    threshold: float,
    source: str,
) -> Localization:
    """Walk the layers in Keras order; name the first whose normalized error > threshold."""
    trace: list[tuple[str, float]] = []
    for name, ref in keras_outputs.items():
        cand = candidate_outputs.get(name)
        if cand is None:
            continue
        views = _alignments(np.asarray(cand, np.float32), ref)
        if not views:
            continue
        err = min(_normalized_error(v, ref) for v in views)
        trace.append((name, err))
        if err > threshold:
            return Localization(
                name,
                f"max |error| / max |keras| = {err:.3g} > {threshold:g} ({source}, "
                f"{len(trace)} layers compared)",
                len(trace),
                trace,
            )
    if not trace:
        return Localization(None, f"no {source} tensor could be matched to a Keras layer")
    worst = max(trace, key=lambda t: t[1])
    return Localization(
        None,
        f"no single layer departs: all {len(trace)} matched {source} are within {threshold:g} "
        f"of Keras (largest {worst[1]:.3g} at {worst[0]}; an error that grows across layers, "
        "e.g. rounding, or one between matched layers)",
        len(trace),
        trace,
    )


def layer_runtime(runtime, artifact):
    """The runtime that gives the artifact's intermediates: the failing one where it can, else
    the first available CPU runtime whose layer_formats hold the artifact's (for the
    browser: TF.js in Node on the same artifact tells whether the artifact itself departs)."""
    from edgetl.runtimes.base import RUNTIMES

    if runtime.gives_layer_outputs(artifact):
        return runtime
    for _, rt in RUNTIMES.items():
        usable = rt.gives_layer_outputs(artifact) and not rt.gpu
        if usable and rt.unavailable_reason() is None:
            return rt
    return None


def localize(
    bundle_dir,
    record,
    runtime,
    inputs: np.ndarray,
    keras_model=None,
) -> Localization:
    """Name the first Keras layer whose output this artifact gets wrong (best effort).

    `record` is the ArtifactRecord, `runtime` the Runtime that failed (its own intermediate
    outputs are used where it can give them, else those of layer_runtime())."""
    from pathlib import Path

    from edgetl.runtimes.base import RUNTIMES, Artifact

    x = np.asarray(inputs[:LOCALIZE_PROBES], np.float32)
    threshold = LOCALIZE_REL.get(record.precision, LOCALIZE_REL["float32"])
    artifact = Artifact(record, Path(bundle_dir))
    if keras_model is None:
        reference = [rt for _, rt in RUNTIMES.items() if rt.reference]
        if not reference or reference[0].unavailable_reason():
            return Localization(None, "Keras (TensorFlow) is not available to compute layers")
        from edgetl.runtimes.keras_runtime import source_model_path

        try:
            keras_model = reference[0].load(source_model_path(bundle_dir))
        except Exception as e:
            return Localization(None, f"cannot load the source model: {e}")
    try:
        ref = keras_layer_outputs(keras_model, x)
    except Exception as e:
        return Localization(None, f"Keras layer outputs failed: {type(e).__name__}: {e}")
    source_rt = layer_runtime(runtime, artifact)
    if source_rt is None:
        return Localization(
            None, f"{runtime.name} offers no per-layer outputs for {record.format} artifacts"
        )
    try:
        with source_rt.open(artifact) as session:
            cand = session.layer_outputs(x, list(ref))
    except Exception as e:
        return Localization(None, f"intermediate outputs failed: {type(e).__name__}: {e}")
    source = source_rt.layer_source or f"{source_rt.name} layer outputs"
    for name in _rescaled_by_design(record, artifact):
        cand.pop(name, None)  # per-channel scaled outputs; the BatchNorm after each undoes it
    return first_divergence(ref, cand, threshold, source)


def _rescaled_by_design(record, artifact) -> set[str]:
    """Layers whose outputs the artifact scales per channel on purpose (TF.js uint8: the
    kernels equalized by converters.tfjs.equalize_channels, recorded in its model.json)."""
    if record.format != "tfjs_layers":
        return set()
    from edgetl.converters.tfjs import rescaled_layers

    try:
        return rescaled_layers(artifact.path)
    except (OSError, ValueError):
        return set()
