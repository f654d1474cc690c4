"""Load a classifier for export: an edgetl run directory or any Keras `.keras` / `.h5` file.

A user's own model is accepted exactly like one edgetl trained; labels and the input contract
come from files beside it (labels.json, contract.json) or from the command line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from edgetl.contract import CONTRACT_FILE, LABELS_FILE, InputContract, load_labels
from edgetl.errors import UserError

MODEL_FILE = "model.keras"
TRAIN_INFO_FILE = "train.json"  # written by `edgetl train`: data dir, backbone, settings
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass
class LoadedModel:
    model: object  # keras.Model
    labels: list[str]
    contract: InputContract
    source_path: Path  # the file the model was read from
    name: str
    data_dir: Path | None = None  # the training data, when recorded (int8 calibration default)
    notes: tuple[str, ...] = ()


# Pixels are float32 and become float16 in half-precision artifacts: a range beyond this is no
# image input (and 0..255 mapped onto it overflows; `0,inf` once gave an OverflowError).
MAX_INPUT_RANGE = 65504.0  # float16's largest finite value


def parse_range(text: str) -> tuple[float, float]:
    """'0,255' -> (0.0, 255.0); the range of values the model's input expects: two finite
    numbers, low < high, within +-MAX_INPUT_RANGE."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--input-range must look like 0,255 or -1,1; got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UserError(
            f"--input-range must be two finite numbers (like 0,255 or -1,1); got {text!r}"
        )
    if not lo < hi:
        raise UserError(f"--input-range must be low,high with low < high; got {text!r}")
    if max(abs(lo), abs(hi)) > MAX_INPUT_RANGE:
        raise UserError(
            f"--input-range must lie within +-{MAX_INPUT_RANGE:g} (what float16 artifacts can "
            f"hold); got {text!r}"
        )
    return lo, hi


def parse_labels(text: str) -> list[str]:
    """A labels.json / labels.txt file (one per line) or a comma-separated list."""
    p = Path(text).expanduser()
    looks_like_file = p.suffix.lower() in (".json", ".txt") or "/" in text or "\\" in text
    if p.exists() and not p.is_file():
        raise UserError(f"--labels {text}: not a file")
    if p.is_file():
        try:
            if p.suffix.lower() == ".json":
                labels = load_labels(p)
            else:
                text_lines = p.read_text(encoding="utf-8").splitlines()
                labels = [line.strip() for line in text_lines if line.strip()]
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"--labels {text}: cannot read the labels file ({e})") from None
    elif looks_like_file and "," not in text:
        raise UserError(
            f"--labels {text}: no such file; give a labels file (.json list or one name per "
            "line) or the names themselves, comma-separated (a,b,c)"
        )
    else:
        labels = [s.strip() for s in text.split(",") if s.strip()]
    return check_labels(labels, f"--labels {text}")


def check_labels(labels: list[str], where: str) -> list[str]:
    """Refuse empty, blank or duplicate class names (two outputs with one name cannot be told
    apart in a report, a browser or a confusion matrix)."""
    if not labels:
        raise UserError(f"{where}: no labels")
    if any(not str(x).strip() for x in labels):
        raise UserError(f"{where}: blank label names")
    seen: dict[str, int] = {}
    dups = []
    for x in labels:
        seen[x] = seen.get(x, 0) + 1
        if seen[x] == 2:
            dups.append(x)
    if dups:
        raise UserError(
            f"{where}: duplicate label(s) {', '.join(repr(d) for d in dups)}; every class "
            "needs its own name"
        )
    return labels


def load_model_source(
    source: str | Path,
    *,
    labels: list[str] | None = None,
    input_range: tuple[float, float] | None = None,
    add_softmax: bool = False,
) -> LoadedModel:
    """Resolve `source` (run dir or model file), load it, and check it is an image classifier;
    labels.json, contract.json and the training-data record beside it are used when present."""
    source = Path(source)
    model_path = _model_path(source)
    side = model_path.parent
    model = _load_keras(model_path)
    notes: list[str] = []
    model = check_classifier_output(model, model_path, add_softmax=add_softmax, notes=notes)
    shape = _input_shape(model, model_path)
    labels = _labels(side, labels, _num_classes(model, model_path), notes)
    contract = _contract(side, shape, input_range, notes)
    name = source.name if source.is_dir() else model_path.stem
    return LoadedModel(
        model=model,
        labels=labels,
        contract=contract,
        source_path=model_path,
        name=name,
        data_dir=_recorded_data_dir(side),
        notes=tuple(notes),
    )


def _model_path(source: Path) -> Path:
    """The model file of a run directory, or `source` itself when it is a model file."""
    if source.is_dir():
        model_path = source / MODEL_FILE
        if not model_path.is_file():
            raise UserError(
                f"{source} is a directory without {MODEL_FILE}: pass an edgetl run "
                f"directory or a model file ({', '.join(MODEL_SUFFIXES)})"
            )
        return model_path
    if source.is_file():
        if source.suffix.lower() not in MODEL_SUFFIXES:
            raise UserError(
                f"{source}: not a Keras model file; expected {', '.join(MODEL_SUFFIXES)}"
            )
        return source
    raise UserError(f"model not found: {source}")


def _labels(side: Path, labels: list[str] | None, n_classes: int, notes: list[str]) -> list[str]:
    """--labels, else labels.json beside the model, else class_0..; one per model output."""
    if labels is None and (side / LABELS_FILE).is_file():
        try:
            labels = load_labels(side / LABELS_FILE)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"{side / LABELS_FILE}: unreadable labels file ({e})") from None
        check_labels(labels, str(side / LABELS_FILE))
    if labels is None:
        labels = [f"class_{i}" for i in range(n_classes)]
        notes.append(f"no {LABELS_FILE} beside the model and no --labels: using {labels[0]}..")
    if len(labels) != n_classes:
        raise UserError(
            f"{len(labels)} label(s) given ({', '.join(labels[:5])}"
            f"{', ...' if len(labels) > 5 else ''}) but the model outputs {n_classes} classes"
        )
    return labels


def _contract(side: Path, shape, input_range, notes: list[str]) -> InputContract:
    """contract.json beside the model (--input-range overriding its range), else one made from
    the model's input size; it must match that size."""
    if (side / CONTRACT_FILE).is_file():
        try:
            contract = InputContract.load(side / CONTRACT_FILE)
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"{side / CONTRACT_FILE}: unreadable input contract ({e})") from None
        if input_range is not None:
            contract = InputContract.from_dict({**contract.to_dict(), "value_range": input_range})
    else:
        contract = InputContract.for_channels(
            shape[2], height=shape[0], width=shape[1], value_range=input_range or (0.0, 255.0)
        )
        kind = "RGB" if shape[2] == 3 else "gray (ITU-R BT.601 luma of RGB)"
        if input_range is None:
            notes.append(
                f"no {CONTRACT_FILE} beside the model and no --input-range: assuming the "
                f"model takes {kind} 0..255 (preprocessing inside the model)"
            )
        elif shape[2] == 1:
            notes.append(
                "1-channel model: every runtime feeds it gray = 0.299 R + 0.587 G + 0.114 B"
            )
    if contract.channels != shape[2]:
        raise UserError(
            f"{side / CONTRACT_FILE} says {contract.channels} channel(s) but the model takes "
            f"{shape[2]}: fix or remove contract.json"
        )
    if (contract.height, contract.width) != tuple(shape[:2]):
        raise UserError(
            f"contract size {contract.height}x{contract.width} does not match the "
            f"model input {shape[0]}x{shape[1]}"
        )
    return contract


def _recorded_data_dir(side: Path) -> Path | None:
    """The training data folder a run directory recorded, if it is still on disk."""
    info = side / TRAIN_INFO_FILE
    if not info.is_file():
        return None
    try:
        recorded = json.loads(info.read_text(encoding="utf-8")).get("data_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(recorded) if recorded and Path(recorded).is_dir() else None


def _load_keras(path: Path):
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for a bad file; the user needs the reason
        first = e
    unknown = unknown_object_message(path, first)
    if unknown is not None:
        raise UserError(unknown) from None
    if path.suffix.lower() in (".h5", ".hdf5") and _keras2_h5_version(path):
        try:
            return _load_keras2_h5(path)
        except Exception as e:
            raise UserError(
                f"cannot load Keras 2 model {path}: {type(first).__name__}: {first}; "
                f"after translation: {type(e).__name__}: {e}"
            ) from None
    raise UserError(f"cannot load Keras model {path}: {type(first).__name__}: {first}") from None


_UNKNOWN_OBJECT = re.compile(r"Could not locate (class|function) '([^']+)'")


def unknown_object_message(path: Path, error: Exception) -> str | None:
    """One line for a model that names a custom layer (or function) this process has not
    registered, in place of Keras' 2 KB config dump with the cause in its middle; None for any
    other load error."""
    text = str(error)
    m = _UNKNOWN_OBJECT.search(text)
    if m is None:
        return None
    kind, name = m.groups()
    registered = re.search(rf"'registered_name': '([^'>]+)>{re.escape(name)}'", text)
    package = registered.group(1) if registered else "Custom"
    what = "custom layer class" if kind == "class" else "custom function"
    return (
        f"cannot load {path}: it uses the {what} {name!r}, which is not registered here. "
        f"In Python, define it with @keras.saving.register_keras_serializable(package="
        f"{package!r}) (or load with keras.models.load_model(path, custom_objects={{{name!r}: "
        f"{name}}})) and export the loaded model with edgetl.bundle.export_bundle; or rebuild "
        "the model from built-in Keras layers"
    )


def _keras2_h5_version(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("keras_version", "")
            version = version.decode() if isinstance(version, bytes) else str(version)
            return version if version.startswith("2.") and "model_config" in f.attrs else None
    except OSError:
        return None


def _load_keras2_h5(path: Path):
    """A legacy .h5 written by Keras 2 / tf_keras, which Keras 3's loader refuses when a model
    is nested (MobileNet under a head): DepthwiseConv2D's Keras 2 `groups` argument is dropped,
    and references to a nested model's output get node index - 1 (Keras 3's legacy loader adds
    one for Keras 2's construction node, which Keras 2 files already left out). The weights
    are read from the same file, by layer name."""
    import shutil
    import tempfile

    import h5py
    import keras

    def patch(config: dict) -> set[str]:
        nested = set()
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "DepthwiseConv2D":
                layer["config"].pop("groups", None)
            if "layers" in layer.get("config", {}):
                nested.add(layer["config"]["name"])
                patch(layer)
        for layer in config["config"]["layers"]:
            for node in layer.get("inbound_nodes", []):
                for ref in node:
                    if isinstance(ref, list) and ref and ref[0] in nested:
                        ref[1] -= 1
        return nested

    with tempfile.TemporaryDirectory(prefix="edgetl-h5-") as tmp:
        copy = Path(tmp) / "model.h5"
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as f:
            raw = f.attrs["model_config"]
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            patch(config)
            f.attrs["model_config"] = json.dumps(config)
        return keras.models.load_model(copy, compile=False)


def _input_shape(model, path: Path) -> tuple[int, int, int]:
    if len(model.inputs) != 1:
        raise UserError(f"{path}: expected one image input, the model has {len(model.inputs)}")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] not in (1, 3) or shape[1] is None or shape[2] is None:
        raise UserError(
            f"{path}: expected an input of shape (batch, height, width, 3) or (batch, height, "
            f"width, 1) (grayscale) with a fixed size, got {shape}"
        )
    return int(shape[1]), int(shape[2]), int(shape[3])


def _num_classes(model, path: Path) -> int:
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise UserError(f"{path}: expected one output of shape (batch, classes)")
    return int(model.outputs[0].shape[-1])


# Output activations that give one probability distribution per row.
SOFTMAX = "softmax"


def output_activation(model) -> str | None:
    """The activation that produces the model's output, read from the layer graph: "softmax",
    "linear", "sigmoid", ...; None when it cannot be told (a custom or functional op)."""
    import keras

    layer = model
    for _ in range(100):  # descend into nested models
        if not isinstance(layer, keras.Model) or not layer.outputs:
            break
        history = getattr(layer.outputs[0], "_keras_history", None)
        if history is None:
            return None
        layer = history[0]
    if isinstance(layer, keras.layers.Softmax):
        return SOFTMAX
    if isinstance(layer, keras.layers.Activation | keras.layers.Dense | keras.layers.Conv2D):
        act = layer.get_config().get("activation")
        if isinstance(act, dict):  # a serialized activation object
            act = act.get("config", {}).get("name") or act.get("class_name")
        return str(act).lower() if act else "linear"
    return None


def check_classifier_output(model, path: Path, *, add_softmax: bool = False, notes=None):
    """edgetl bundles hold classifiers whose output is a probability distribution (softmax):
    verify judges probabilities (top-1 agreement, tolerances on values in [0, 1]) and the web
    app shows them. A regression or single-output model, a sigmoid (multi-label) model, or a
    model that outputs logits is refused with the reason; logits can be turned into
    probabilities with --add-softmax. Returns the model (wrapped when add_softmax)."""
    import keras

    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise UserError(f"{path}: expected one output of shape (batch, classes)")
    n = model.outputs[0].shape[-1]
    if n is None or int(n) < 2:
        raise UserError(
            f"{path}: the model has {n} output unit(s): a regression or single-sigmoid model, "
            "not a classifier over >= 2 classes. edgetl exports softmax classifiers only "
            "(verify compares class probabilities); give a binary model two softmax outputs."
        )
    act = output_activation(model)
    if act is None:
        act = _probe_activation(model)
    if act == SOFTMAX:
        if add_softmax:
            raise UserError(f"{path}: the model already ends in softmax; drop --add-softmax")
        return model
    if act == "linear" and add_softmax:
        inp = keras.Input(batch_shape=tuple(model.inputs[0].shape), name="image")
        out = keras.layers.Softmax(name="probabilities")(model(inp))
        wrapped = keras.Model(inp, out, name=model.name)
        if notes is not None:
            notes.append("--add-softmax: a Softmax layer was appended to the model's logits")
        return wrapped
    hint = (
        " Its outputs look like logits: pass --add-softmax to append a Softmax layer."
        if act == "linear"
        else ""
    )
    raise UserError(
        f"{path}: the model's output activation is {act!r}, not softmax. edgetl exports "
        "classifiers that output class probabilities (one softmax over the classes): verify "
        f"judges probabilities and the web app shows them.{hint}"
    )


def _probe_activation(model) -> str:
    """When the graph does not say: run two inputs and look at the rows."""
    import numpy as np

    shape = [int(d) for d in model.inputs[0].shape[1:]]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, *shape)).astype(np.float32)
    y = np.asarray(model.predict(x, verbose=0), dtype=np.float64)
    if np.all(np.isfinite(y)) and np.all(y >= -1e-6) and np.allclose(y.sum(1), 1, atol=1e-3):
        return SOFTMAX
    if np.all(np.isfinite(y)) and np.all(y >= 0) and np.all(y <= 1):
        return "sigmoid-like (each output in [0, 1], rows not summing to 1)"
    return "unknown (outputs are not probabilities summing to 1)"
