"""Load a classifier for export: an edgetl run directory or any Keras `.keras` / `.h5` file.

A user's own model is accepted exactly like one edgetl trained; labels and the input contract
come from files beside it (labels.json, contract.json) or from the command line.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import zipfile
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
    model = single_tensor_io(_load_keras(model_path))
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
        if source.suffix.lower() not in MODEL_SUFFIXES and sniff_format(source) is None:
            raise UserError(
                f"{source}: not a Keras model file; expected {', '.join(MODEL_SUFFIXES)} (or an "
                "HDF5 / .keras zip file under another name)"
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

    with tempfile.TemporaryDirectory(prefix="edgetl-load-") as tmp:
        readable = _keras_named(path, Path(tmp))
        try:
            return keras.models.load_model(readable, compile=False)
        except Exception as e:  # keras raises many types for a bad file; the user needs the reason
            first = e
        unknown = unknown_object_message(path, first)
        if unknown is not None:
            raise UserError(unknown) from None
        if sniff_format(path) == HDF5 and _keras2_h5_version(path):
            try:
                return _load_keras2_h5(readable)
            except Exception as e:
                raise UserError(_unrebuildable(path, _keras2_h5_version(path), e)) from None
    if sniff_format(path) == KERAS_ZIP:
        raise UserError(_unrebuildable(path, saved_keras_version(path), first)) from None
    raise UserError(f"cannot load Keras model {path}: {short_reason(first)}") from None


# A file's first bytes say what it is, whatever its name: HDF5 (Keras 2 / legacy .h5, often
# saved as .model or .hdf5) or a zip (Keras 3 .keras).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
HDF5, KERAS_ZIP = "hdf5", "keras"


def sniff_format(path: Path) -> str | None:
    """HDF5 or KERAS_ZIP by the file's signature (HDF5's may also sit at 512, 1024, ... when a
    user block precedes it), None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head.startswith(ZIP_SIGNATURE):
                return KERAS_ZIP
            offset = 0
            while head:
                if head == HDF5_SIGNATURE:
                    return HDF5
                offset = 512 if offset == 0 else offset * 2
                f.seek(offset)
                head = f.read(8)
                if offset > (1 << 20):
                    break
    except OSError:
        return None
    return None


def _keras_named(path: Path, tmp: Path) -> Path:
    """`path`, or a link to it named model.h5 / model.keras in `tmp` when its name does not say
    what it is: Keras picks its loader by the file extension and refuses any other."""
    kind = sniff_format(path)
    want = {HDF5: (".h5", ".hdf5"), KERAS_ZIP: (".keras",)}.get(kind)
    if want is None or path.suffix.lower() in want:
        return path
    link = tmp / ("model.h5" if kind == HDF5 else "model.keras")
    link.symlink_to(path.resolve())
    return link


def saved_keras_version(path: Path) -> str | None:
    """The Keras version a .keras file records in its metadata.json (None if unreadable)."""
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("metadata.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    version = meta.get("keras_version") if isinstance(meta, dict) else None
    return str(version) if version else None


def _unrebuildable(path: Path, saved_by: str | None, error: Exception) -> str:
    """One line: who saved the file, that this Keras cannot rebuild it, why, and what to do."""
    import keras

    if saved_by is None:  # no Keras metadata: not a Keras file at all, or a damaged one
        return f"cannot load Keras model {path}: {short_reason(error)}"
    head = (
        f"{path}: saved by Keras {saved_by}; the installed Keras {keras.__version__} cannot "
        f"rebuild it ({short_reason(error)})"
    )
    if saved_by.startswith("2."):
        return (
            f"{head}. Build the same model in code with Keras {keras.__version__}, load this "
            "file's weights into it (model.load_weights), save it as .keras and export that"
        )
    return (
        f"{head}. Load it with keras=={saved_by} and save it again as .h5 "
        f"(model.save('model.h5')), or build the same model in code with Keras "
        f"{keras.__version__} and load its weights (model.load_weights); then export that file"
    )


def short_reason(error: Exception, limit: int = 160) -> str:
    """The gist of a Keras load error on one line: its innermost 'Exception encountered'
    clause, without tensor reprs, config dumps or the text after them."""
    text = str(error)
    if "Exception encountered:" in text:
        text = text.rsplit("Exception encountered:", 1)[1]
    text = re.sub(r"<KerasTensor[^>]*>", "<tensor>", text)
    text = re.sub(r"\s+", " ", text.split(" config=")[0].split("Inputs received")[0]).strip()
    text = text.rstrip(" .;:,")
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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

    import h5py
    import keras

    def patch(config: dict) -> set[str]:
        nested = set()
        _drop_initializer_dtype(config)
        if isinstance(config["config"], list):  # Keras 2.0-2.2 Sequential: a bare layer list
            config["config"] = {"name": "sequential", "layers": config["config"]}
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


def single_tensor_io(model):
    """A functional model saved with its one input or one output inside a list or dict
    (`keras.Model(inp, [logits])`, common in Keras 3 files) rebuilt on the bare tensors, so
    calling it gives a tensor, not a one-element list (which Softmax, the converters and the
    probes cannot take). Same layers and weights; other models are returned as they are."""
    import keras

    if not isinstance(model, keras.Model) or isinstance(model, keras.Sequential):
        return model
    wrapped = [
        isinstance(getattr(model, attr, None), list | tuple | dict)
        for attr in ("_inputs_struct", "_outputs_struct")
    ]
    if not any(wrapped) or len(model.inputs) != 1 or len(model.outputs) != 1:
        return model
    return keras.Model(model.inputs[0], model.outputs[0], name=model.name)


def _drop_initializer_dtype(config) -> None:
    """TF 1.x-era Keras (keras_version 2.2.4-tf, ...) wrote `dtype` into every initializer's
    config; Keras 3's initializers take no dtype (the layer's own dtype decides) and refuse the
    whole file. Dropped in place, recursively."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key.endswith("_initializer") and isinstance(value, dict):
                inner = value.get("config")
                if isinstance(inner, dict):
                    inner.pop("dtype", None)
            _drop_initializer_dtype(value)
    elif isinstance(config, list):
        for value in config:
            _drop_initializer_dtype(value)


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
