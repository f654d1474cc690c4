"""Load a classifier for export: an edgetl run directory or any Keras `.keras` / `.h5` file.

A user's own model is accepted exactly like one edgetl trained; labels and the input contract
come from files beside it (labels.json, contract.json) or from the command line.
"""

from __future__ import annotations

import json
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


def parse_range(text: str) -> tuple[float, float]:
    """'0,255' -> (0.0, 255.0); the range of values the model's input expects."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--input-range must look like 0,255 or -1,1; got {text!r}") from None
    if not lo < hi:
        raise UserError(f"--input-range must be low,high with low < high; got {text!r}")
    return lo, hi


def parse_labels(text: str) -> list[str]:
    """A labels.json / labels.txt file (one per line) or a comma-separated list."""
    p = Path(text)
    if p.is_file():
        if p.suffix == ".json":
            return load_labels(p)
        return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [s.strip() for s in text.split(",") if s.strip()]


def load_model_source(
    source: str | Path,
    *,
    labels: list[str] | None = None,
    input_range: tuple[float, float] | None = None,
) -> LoadedModel:
    """Resolve `source` (run dir or model file), load it, and check it is an image classifier."""
    source = Path(source)
    if source.is_dir():
        model_path = source / MODEL_FILE
        if not model_path.is_file():
            raise UserError(
                f"{source} is a directory without {MODEL_FILE}: pass an edgetl run "
                f"directory or a model file ({', '.join(MODEL_SUFFIXES)})"
            )
    elif source.is_file():
        if source.suffix.lower() not in MODEL_SUFFIXES:
            raise UserError(
                f"{source}: not a Keras model file; expected {', '.join(MODEL_SUFFIXES)}"
            )
        model_path = source
    else:
        raise UserError(f"model not found: {source}")
    side = model_path.parent
    model = _load_keras(model_path)
    notes: list[str] = []

    shape = _input_shape(model, model_path)
    n_classes = _num_classes(model, model_path)
    if labels is None and (side / LABELS_FILE).is_file():
        labels = load_labels(side / LABELS_FILE)
    if labels is None:
        labels = [f"class_{i}" for i in range(n_classes)]
        notes.append(f"no {LABELS_FILE} beside the model and no --labels: using {labels[0]}..")
    if len(labels) != n_classes:
        raise UserError(f"{len(labels)} labels given but the model outputs {n_classes} classes")

    if (side / CONTRACT_FILE).is_file():
        contract = InputContract.load(side / CONTRACT_FILE)
        if input_range is not None:
            contract = InputContract.from_dict({**contract.to_dict(), "value_range": input_range})
    else:
        contract = InputContract(
            height=shape[0], width=shape[1], value_range=input_range or (0.0, 255.0)
        )
        if input_range is None:
            notes.append(
                f"no {CONTRACT_FILE} beside the model and no --input-range: assuming the "
                "model takes RGB 0..255 (preprocessing inside the model)"
            )
    if (contract.height, contract.width) != tuple(shape[:2]):
        raise UserError(
            f"contract size {contract.height}x{contract.width} does not match the "
            f"model input {shape[0]}x{shape[1]}"
        )
    data_dir = None
    info = side / TRAIN_INFO_FILE
    if info.is_file():
        recorded = json.loads(info.read_text(encoding="utf-8")).get("data_dir")
        if recorded and Path(recorded).is_dir():
            data_dir = Path(recorded)
    name = source.name if source.is_dir() else model_path.stem
    return LoadedModel(
        model=model,
        labels=labels,
        contract=contract,
        source_path=model_path,
        name=name,
        data_dir=data_dir,
        notes=tuple(notes),
    )


def _load_keras(path: Path):
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for a bad file; the user needs the reason
        first = e
    if path.suffix.lower() in (".h5", ".hdf5") and _keras2_h5_version(path):
        try:
            return _load_keras2_h5(path)
        except Exception as e:
            raise UserError(
                f"cannot load Keras 2 model {path}: {type(first).__name__}: {first}; "
                f"after translation: {type(e).__name__}: {e}"
            ) from None
    raise UserError(f"cannot load Keras model {path}: {type(first).__name__}: {first}") from None


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
    if len(shape) != 4 or shape[-1] != 3 or shape[1] is None or shape[2] is None:
        raise UserError(
            f"{path}: expected an input of shape (batch, height, width, 3) with a "
            f"fixed size, got {shape}"
        )
    return int(shape[1]), int(shape[2]), 3


def _num_classes(model, path: Path) -> int:
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise UserError(f"{path}: expected one output of shape (batch, classes)")
    return int(model.outputs[0].shape[-1])
