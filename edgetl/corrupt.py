"""A corruption corpus: named, realistic faults applied to the real artifacts of a bundle copy.

Each corruption changes an exported artifact (or, for preprocessing mistakes, what is fed to
it) the way a converter bug, a hand edit or an app-side mistake would, and then records the new
bytes in the manifest (sha256 and size), so the integrity check passes and only parity can catch
it. `python -m edgetl.bench parity` applies every corruption to every format it applies to and
tabulates what `edgetl verify` catches.

Three kinds:

* weight edits (`scope="weights"`): one tensor of one layer changed in the artifact file itself
  (ONNX initializers via onnx.numpy_helper, TFLite buffers via tensorflow.lite.tools
  .flatbuffer_utils, TF.js weight shards via model.json's weightsManifest). The tensor is found
  by its values, not its name: each artifact tensor is compared with the Keras layer's weights
  under every axis order, and for convolutions up to one factor per output channel (ONNX and
  TFLite fold BatchNormalization into the kernel: W' = W * gamma / sqrt(var + eps)). Scaling a
  folded kernel by k is exactly scaling the Keras kernel by k, so every format gets the same
  fault.
* model faults (`scope="model"`): a faulty Keras model (BN epsilon, channel order, scaling,
  layout) is built with standard layers only, and the artifact is re-exported from it with
  edgetl's own converters into the bundle copy; the golden outputs stay the honest model's.
* input faults (`scope="inputs"`): the golden probe inputs are replaced by what a mistaken
  preprocessing would feed (the golden outputs stay), so every artifact of the bundle sees them.

`apply(name, bundle_dir, artifact_ids)` applies one corruption in place; `CORRUPTIONS` lists them,
each with what it emulates. The helpers moved from tests/test_verify.py (`corrupt_onnx_weight`,
`corrupt_tflite_weight`, `corrupt_tfjs_weight`) stay here unchanged.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgetl.manifest import ArtifactRecord, Manifest, record_files, sha256_file

FLOAT_PRECISIONS = ("float32", "float16")
WEIGHT_FORMATS = ("onnx", "tflite", "tfjs_layers", "tfjs_graph")


class NotApplicable(ValueError):
    """The corruption cannot be applied to this bundle or artifact (said in the table)."""


# ---------------------------------------------------------------- the original test helpers


def corrupt_onnx_weight(path: Path, layer: str) -> str:
    """Scale up one value of the layer's conv kernel (an initializer) and re-save the model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    for init in model.graph.initializer:
        if f"/{layer}_1/" in init.name and len(init.dims) == 4:
            w = numpy_helper.to_array(init).copy()
            w.flat[0] += 50 * np.abs(w).max()
            init.CopyFrom(numpy_helper.from_array(w, init.name))
            onnx.save(model, path)
            return init.name
    raise AssertionError(f"no conv kernel of {layer} in {path}")


def corrupt_tflite_weight(path: Path, layer: str) -> str:
    """Change one value of the filter feeding the fused op that outputs `layer`'s activation."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]

    def name(t) -> str:
        return t.name.decode() if isinstance(t.name, bytes) else t.name

    for op in graph.operators:
        if f"/{layer}_relu_1/" in name(graph.tensors[op.outputs[0]]):
            kernel = graph.tensors[op.inputs[1]]
            buf = model.buffers[kernel.buffer]
            w = np.frombuffer(bytes(buf.data), dtype=np.float32).copy()
            w[0] += 50 * np.abs(w).max()
            buf.data = np.frombuffer(w.tobytes(), dtype=np.uint8)
            flatbuffer_utils.write_model(model, str(path))
            return name(kernel)
    raise AssertionError(f"no op producing {layer}_relu in {path}")


def corrupt_tfjs_weight(model_json: Path, layer: str) -> str:
    """Change the first value of `layer`'s kernel in the weight shards of a TF.js Layers model."""
    spec = json.loads(model_json.read_text())
    for group in spec["weightsManifest"]:
        offset = 0
        for w in group["weights"]:
            if w["name"] == f"{layer}/kernel":
                assert w["dtype"] == "float32"
                shards = [model_json.parent / p for p in group["paths"]]
                data = np.frombuffer(b"".join(p.read_bytes() for p in shards), dtype="<f4").copy()
                start = offset // 4
                kernel = data[start : start + int(np.prod(w["shape"]))]
                kernel[0] += 50 * np.abs(kernel).max()
                data[start : start + kernel.size] = kernel
                raw, pos = data.tobytes(), 0
                for p in shards:
                    size = p.stat().st_size
                    p.write_bytes(raw[pos : pos + size])
                    pos += size
                return w["name"]
            offset += int(np.prod(w["shape"])) * 4
    raise AssertionError(f"no {layer}/kernel in {model_json}")


# ---------------------------------------------------------------- rehashing


def rehash(bundle: Path, artifact_ids: list[str], *, probes: bool = False) -> None:
    """Record the current bytes in the manifest, as a bundle made that way would have them
    (the same as tests/test_verify.py's _rehash; `probes` also re-records the probe files)."""
    manifest = Manifest.load(bundle)
    for a in manifest.artifacts:
        if a.id in artifact_ids:
            a.files = record_files(bundle, [f.path for f in a.files])
    if probes:
        for key in ("inputs", "expected"):
            manifest.probes["sha256"][key] = sha256_file(Path(bundle) / manifest.probes[key])
    manifest.save(bundle)


# ---------------------------------------------------------------- uniform weight access


class _Weights:
    """The float weight tensors of one artifact file, in the artifact's own layout."""

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        raise NotImplementedError

    def put(self, key: str, value: np.ndarray) -> None:
        raise NotImplementedError

    def save(self) -> None:
        raise NotImplementedError


class _OnnxWeights(_Weights):
    def __init__(self, path: Path) -> None:
        import onnx

        self.path = path
        self.model = onnx.load(path)
        self.inits = {i.name: i for i in self.model.graph.initializer}

    def arrays(self):
        from onnx import numpy_helper

        for name, init in self.inits.items():
            a = numpy_helper.to_array(init)
            if a.dtype in (np.float32, np.float16) and a.size > 1:
                yield name, a

    def put(self, key, value):
        from onnx import numpy_helper

        init = self.inits[key]
        old = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(value.astype(old.dtype), key))

    def save(self):
        import onnx

        onnx.save(self.model, self.path)


class _TfliteWeights(_Weights):
    DTYPES: ClassVar[dict] = {0: np.float32, 1: np.float16}  # TensorType FLOAT32, FLOAT16

    def __init__(self, path: Path) -> None:
        from tensorflow.lite.tools import flatbuffer_utils

        self.path = path
        self.model = flatbuffer_utils.read_model(str(path))
        self.graph = self.model.subgraphs[0]

    def arrays(self):
        for i, t in enumerate(self.graph.tensors):
            dtype = self.DTYPES.get(t.type)
            buf = self.model.buffers[t.buffer] if t.buffer else None
            if dtype is None or buf is None or buf.data is None or len(buf.data) == 0:
                continue
            a = np.frombuffer(bytes(buf.data), dtype=dtype).reshape(list(t.shape))
            if a.size > 1:
                yield str(i), a

    def put(self, key, value):
        t = self.graph.tensors[int(key)]
        dtype = self.DTYPES[t.type]
        buf = self.model.buffers[t.buffer]
        buf.data = np.frombuffer(np.ascontiguousarray(value, dtype=dtype).tobytes(), np.uint8)

    def save(self):
        from tensorflow.lite.tools import flatbuffer_utils

        flatbuffer_utils.write_model(self.model, str(self.path))


class _TfjsWeights(_Weights):
    def __init__(self, model_json: Path) -> None:
        self.path = model_json
        self.spec = json.loads(model_json.read_text())
        self.groups = []
        for group in self.spec["weightsManifest"]:
            shards = [model_json.parent / p for p in group["paths"]]
            data = np.frombuffer(b"".join(p.read_bytes() for p in shards), np.uint8).copy()
            entries, offset = [], 0
            for w in group["weights"]:
                n = int(np.prod(w["shape"])) * np.dtype(w["dtype"]).itemsize
                entries.append((w, offset, n))
                offset += n
            self.groups.append((shards, data, entries))

    def arrays(self):
        for g, (_, data, entries) in enumerate(self.groups):
            for w, offset, n in entries:
                if w["dtype"] == "float32" and "quantization" not in w:
                    a = data[offset : offset + n].view("<f4").reshape(w["shape"])
                    if a.size > 1:
                        yield f"{g}:{w['name']}", a

    def put(self, key, value):
        g, name = key.split(":", 1)
        _, data, entries = self.groups[int(g)]
        for w, offset, n in entries:
            if w["name"] == name:
                data[offset : offset + n] = np.frombuffer(
                    np.ascontiguousarray(value, "<f4").tobytes(), np.uint8
                )
                return
        raise KeyError(key)

    def save(self):
        for shards, data, _ in self.groups:
            pos = 0
            for p in shards:
                size = p.stat().st_size
                p.write_bytes(data[pos : pos + size].tobytes())
                pos += size


def _weights(bundle: Path, record: ArtifactRecord) -> _Weights:
    path = Path(bundle) / record.path
    if record.format == "onnx":
        return _OnnxWeights(path)
    if record.format == "tflite":
        return _TfliteWeights(path)
    if record.format in ("tfjs_layers", "tfjs_graph"):
        return _TfjsWeights(path)
    raise NotApplicable(f"no weight access for format {record.format}")


def _match(candidate: np.ndarray, reference: np.ndarray, per_channel: bool) -> tuple | None:
    """The axis order that turns `candidate` into `reference` (exactly, or up to one factor per
    output channel, the last Keras axis, when `per_channel`), or None."""
    if candidate.size != reference.size or sorted(candidate.shape) != sorted(reference.shape):
        return None
    rtol = 2e-3 if candidate.dtype == np.float16 else 1e-5
    ref = reference.astype(np.float64)
    for perm in dict.fromkeys(itertools.permutations(range(candidate.ndim))):
        c = candidate.transpose(perm).astype(np.float64)
        if c.shape != ref.shape:
            continue
        if not per_channel:
            if np.allclose(c, ref, rtol=rtol, atol=rtol * np.abs(ref).max()):
                return perm
            continue
        r2 = ref.reshape(-1, ref.shape[-1])
        c2 = c.reshape(-1, ref.shape[-1])
        big = np.abs(r2) > 0.05 * np.abs(r2).max(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(big, c2 / r2, np.nan)
        med = np.nanmedian(ratio, axis=0)
        if np.all(np.isfinite(med)) and np.allclose(
            np.where(big, ratio, med), med, rtol=max(rtol, 1e-4) * 10, atol=1e-12
        ):
            return perm
    return None


def edit_weight(
    bundle: Path,
    record: ArtifactRecord,
    reference: np.ndarray,
    change: Callable[[np.ndarray], np.ndarray],
    *,
    per_channel: bool = False,
) -> str:
    """Find the artifact's tensor holding the Keras weight `reference`, apply `change` to it in
    the Keras layout (change gets and returns a float64 array), write it back in the artifact's
    layout and dtype. Returns the tensor's key in the artifact."""
    view = _weights(bundle, record)
    found = [
        (key, arr, perm)
        for key, arr in view.arrays()
        if (perm := _match(arr, reference, per_channel)) is not None
    ]
    if not found:
        raise NotApplicable(f"{record.id}: no tensor holds the Keras weight {reference.shape}")
    if len(found) > 1:  # e.g. a shared constant: refuse rather than guess
        raise NotApplicable(f"{record.id}: {len(found)} tensors match the Keras weight")
    key, arr, perm = found[0]
    keras_layout = arr.transpose(perm).astype(np.float64)
    new = change(keras_layout.copy())
    view.put(key, new.transpose(np.argsort(perm)).astype(arr.dtype))
    view.save()
    return key


# ---------------------------------------------------------------- the Keras side


@dataclass
class Context:
    """What corruptions may read: the bundle copy, its manifest, the honest Keras model, and the
    image folder its probes' "image:<path>" names refer to (for resize faults)."""

    bundle: Path
    manifest: Manifest
    data_dir: Path | None = None
    _model: object = None

    @property
    def model(self):
        if self._model is None:
            import keras

            self._model = keras.models.load_model(
                self.bundle / self.manifest.source_model["file"], compile=False
            )
        return self._model

    @property
    def probes(self):
        from edgetl.manifest import read_probes

        return read_probes(self.bundle, self.manifest)


def _all_layers(model) -> Iterator:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def _plain_convs(model) -> list:
    """Regular Conv2D layers (no depthwise), in graph order."""
    import keras

    return [
        layer
        for layer in _all_layers(model)
        if type(layer) is keras.layers.Conv2D and layer.kernel.shape[-2] > 3
    ]


def largest_conv(model):
    """The regular convolution with the most weights (for MobileNet: the last 1x1, Conv_1)."""
    return max(_plain_convs(model), key=lambda layer: int(np.prod(layer.kernel.shape)))


def middle_conv(model):
    """The regular convolution halfway through the network (an expand/project 1x1)."""
    convs = _plain_convs(model)
    return convs[len(convs) // 2]


def live_dense_weight(ctx: Context) -> tuple[str, tuple[int, int]]:
    """(layer, index) of the output Dense kernel entry that moves the logits most on the probes:
    argmax |W[i, j]| * max over probes |h_i|, h = the Dense layer's input. A large weight that
    reads a feature no probe activates would be invisible to any output comparison."""
    import keras

    model = ctx.model
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    feed = keras.Model(model.input, dense.input)
    h = np.asarray(feed.predict(ctx.probes.inputs, verbose=0))
    w = np.asarray(dense.kernel)
    score = np.abs(w) * np.abs(h).max(axis=0)[:, None]
    return dense.name, tuple(int(i) for i in np.unravel_index(score.argmax(), w.shape))


def _with_input_layers(model, new_layers: list) -> object:
    """A copy of `model` with `new_layers` applied, in order, between its input and everything
    else (config surgery: one node per layer, so every converter sees a plain graph)."""
    import keras

    cfg = model.get_config()
    inp = cfg["input_layers"][0] if isinstance(cfg["input_layers"][0], list) else None
    inp_name = inp[0] if inp else cfg["input_layers"][0]
    shape = [None, *model.input_shape[1:]]

    def retarget(node, src: str, dst: str):
        if isinstance(node, dict):
            if node.get("class_name") == "__keras_tensor__":
                hist = node["config"]["keras_history"]
                if hist[0] == src:
                    hist[0], hist[1], hist[2] = dst, 0, 0
            for v in node.values():
                retarget(v, src, dst)
        elif isinstance(node, (list, tuple)):  # get_config gives args as a tuple
            for v in node:
                retarget(v, src, dst)

    for layer in cfg["layers"]:
        if layer["name"] != inp_name:
            retarget(layer["inbound_nodes"], inp_name, new_layers[-1].name)
    entries, prev = [], inp_name
    for layer in new_layers:
        entry = keras.layers.serialize(layer)
        entry["name"] = layer.name
        tensor = {
            "class_name": "__keras_tensor__",
            "config": {"shape": shape, "dtype": "float32", "keras_history": [prev, 0, 0]},
        }
        entry["inbound_nodes"] = [{"args": [tensor], "kwargs": {}}]
        entries.append(entry)
        prev = layer.name
    at = next(i for i, layer in enumerate(cfg["layers"]) if layer["name"] == inp_name) + 1
    cfg["layers"][at:at] = entries
    faulty = model.__class__.from_config(cfg)
    _copy_weights(model, faulty)
    return faulty


def _copy_weights(src, dst) -> None:
    for layer in src.layers:
        if layer.weights:
            dst.get_layer(layer.name).set_weights(layer.get_weights())


def _with_bn_epsilon(model, factor: float):
    """A copy of `model` whose every BatchNormalization epsilon is multiplied by `factor`."""

    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "BatchNormalization":
                node["config"]["epsilon"] = float(node["config"]["epsilon"]) * factor
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):  # get_config gives args as a tuple
            for v in node:
                walk(v)

    cfg = model.get_config()
    walk(cfg["layers"])
    faulty = model.__class__.from_config(cfg)
    faulty.set_weights(model.get_weights())
    return faulty


def _rgb_to_bgr(model):
    """A 1x1 convolution with a permutation kernel (exact in float: x*1 + 0 + 0) at the input."""
    import keras

    if model.input_shape[-1] != 3:
        raise NotApplicable("a 1-channel model has no channel order to swap")

    flip = keras.layers.Conv2D(3, 1, use_bias=False, name="fault_bgr")
    faulty = _with_input_layers(model, [flip])
    faulty.get_layer("fault_bgr").set_weights([np.eye(3, dtype=np.float32)[::-1][None, None]])
    return faulty


def _double_scaling(model):
    import keras

    return _with_input_layers(model, [keras.layers.Rescaling(1.0 / 255.0, name="fault_scale")])


def _nchw_buffer(model):
    """The NHWC tensor's buffer read as if it were NCHW: transpose to (C, H, W), then reshape back
    to (H, W, C) without moving data, what an app does that hands a CHW buffer to an HWC model."""
    import keras

    _, h, w, c = model.input_shape
    return _with_input_layers(
        model,
        [
            keras.layers.Permute((3, 1, 2), name="fault_to_chw"),
            keras.layers.Reshape((h, w, c), name="fault_read_as_hwc"),
        ],
    )


# ---------------------------------------------------------------- re-export into the bundle


def reexport(ctx: Context, records: list[ArtifactRecord], model, calibration=None) -> None:
    """Write `records`' artifacts anew from `model` with edgetl's converters (same options as
    the honest export); files and hashes are then re-recorded by `apply`."""
    root = ctx.bundle
    tflite = [r for r in records if r.format == "tflite"]
    for r in records:
        if r.format == "onnx":
            import onnx

            from edgetl.converters.onnx import convert_onnx

            meta = {p.key: p.value for p in onnx.load(root / r.path).metadata_props}
            convert_onnx(
                model,
                root / r.path,
                opset=int(r.options.get("opset", 15)),
                nchw=r.layout == "NCHW",
                metadata=meta,
            )
        elif r.format in ("tfjs_layers", "tfjs_graph"):
            from edgetl.converters.tfjs import convert_tfjs

            folder = (root / r.path).parent
            shutil.rmtree(folder)
            convert_tfjs(model, folder, graph=r.format == "tfjs_graph")
            r.files = record_files(
                root, sorted(p.relative_to(root).as_posix() for p in folder.rglob("*"))
            )
    if tflite:
        from edgetl.converters.tflite import METADATA_NAME, convert_tflite, read_metadata

        meta = read_metadata(root / tflite[0].path, METADATA_NAME)
        if calibration is None and any(r.precision == "int8" for r in tflite):
            raise NotApplicable("int8 re-export needs calibration images")
        with tempfile.TemporaryDirectory(prefix="edgetl-corrupt-") as tmp:
            paths = convert_tflite(
                model,
                Path(tmp),
                precisions=[r.precision for r in tflite],
                calibration=calibration,
                io_dtype=next((r.input_dtype for r in tflite if r.precision == "int8"), "float32"),
                metadata=meta,
            )
            for r in tflite:
                shutil.copyfile(paths[r.precision], root / r.path)


def _probe_calibration(images: np.ndarray):
    return lambda: (images[i : i + 1] for i in range(len(images)))


# ---------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Corruption:
    name: str
    emulates: str
    scope: str  # "weights" | "model" | "inputs"
    formats: tuple[str, ...]  # artifact formats it applies to
    precisions: tuple[str, ...]  # artifact precisions it applies to
    # True: a float32 fault of >= 1% in one layer (or a whole-input fault): the goal is
    # that every one of these is caught on every float32 artifact.
    counted: bool
    run: Callable[[Context, list[ArtifactRecord]], dict[str, str]]

    def applies_to(self, record: ArtifactRecord) -> bool:
        return record.format in self.formats and record.precision in self.precisions


def _scale_conv(pick, factor: float):
    def run(ctx: Context, records):
        layer = pick(ctx.model)
        kernel = np.asarray(layer.kernel)
        return {
            r.id: f"{layer.name} kernel x{factor:g} ("
            + edit_weight(ctx.bundle, r, kernel, lambda w: w * factor, per_channel=True)
            + ")"
            for r in records
        }

    return run


def _live_weight(ctx: Context, records):
    name, idx = live_dense_weight(ctx)
    kernel = np.asarray(ctx.model.get_layer(name).kernel)

    def change(w):
        w[idx] *= 1.10
        return w

    return {r.id: f"{name} kernel{list(idx)} x1.1 ({edit_weight(ctx.bundle, r, kernel, change)})"
            for r in records}  # fmt: skip


def _drop_bias(ctx: Context, records):
    from edgetl.classifier import HEAD_DENSE

    bias = np.asarray(ctx.model.get_layer(HEAD_DENSE).bias)
    return {
        r.id: f"{HEAD_DENSE} bias zeroed ({edit_weight(ctx.bundle, r, bias, np.zeros_like)})"
        for r in records
    }


def _model_fault(build: Callable, detail: str):
    def run(ctx: Context, records):
        reexport(ctx, records, build(ctx.model))
        return {r.id: detail for r in records}

    return run


def _calibrated_on(kind: str):
    """int8 re-exported from the honest model, calibrated on the wrong data: "noise" (uniform
    noise over the input range) or "unit" (the probes' real images scaled to 0..1, as when the
    representative dataset is preprocessed differently from the contract)."""

    def run(ctx: Context, records):
        m = ctx.manifest
        lo, hi = m.input.value_range
        if kind == "noise":
            rng = np.random.default_rng(0)
            shape = (48, m.input.height, m.input.width, m.input.channels)
            images = rng.uniform(lo, hi, shape).astype(np.float32)
            what = f"{len(images)} uniform-noise images"
        else:
            probes = ctx.probes
            real = [i for i, n in enumerate(probes.names) if n.startswith("image:")]
            if not real:
                raise NotApplicable("no real-image probes to calibrate on")
            images = ((probes.inputs[real] - lo) / (hi - lo)).astype(np.float32)
            what = f"{len(images)} real images scaled to 0..1 instead of {lo:g}..{hi:g}"
        reexport(ctx, records, ctx.model, calibration=_probe_calibration(images))
        return {r.id: f"int8 calibrated on {what}" for r in records}

    return run


def _antialias_inputs(ctx: Context, records):
    """Real-image probes re-made with PIL's BILINEAR resize (antialiased when shrinking) from
    their source files, instead of the contract's plain bilinear; golden outputs unchanged."""
    from PIL import Image

    from edgetl.data import images_in_range, read_rgb

    m = ctx.manifest
    probes = ctx.probes
    if ctx.data_dir is None:
        raise NotApplicable("the probes' source images are unknown (no data_dir)")
    h, w = m.input.height, m.input.width
    changed = 0
    x = probes.inputs.copy()
    for i, name in enumerate(probes.names):
        if not name.startswith("image:"):
            continue
        src = read_rgb(Path(ctx.data_dir) / name[len("image:") :])
        if src.shape[0] <= h and src.shape[1] <= w:
            continue  # not shrunk: PIL's antialias changes nothing
        img = Image.fromarray(np.clip(src, 0, 255).astype(np.uint8), "RGB")
        small = np.asarray(img.resize((w, h), Image.BILINEAR), np.float32)
        x[i] = images_in_range(small[None], m.input)[0]
        changed += 1
    if not changed:
        raise NotApplicable("no probe comes from an image larger than the model input")
    np.ascontiguousarray(x, "<f4").tofile(ctx.bundle / m.probes["inputs"])
    return {r.id: f"{changed} real-image probes resized with PIL antialias" for r in records}


FLOAT = FLOAT_PRECISIONS
F32 = ("float32",)
ALL_FORMATS = WEIGHT_FORMATS
ALL_PRECISIONS = ("float32", "float16", "dynamic", "int8")

CORRUPTIONS: list[Corruption] = [
    Corruption(
        "conv_largest_x1.01",
        "the largest conv kernel off by 1% (a converter rescaling one layer, a wrong BN fold)",
        "weights", WEIGHT_FORMATS, FLOAT, True, _scale_conv(largest_conv, 1.01),
    ),
    Corruption(
        "conv_largest_x1.10",
        "the largest conv kernel off by 10%",
        "weights", WEIGHT_FORMATS, FLOAT, True, _scale_conv(largest_conv, 1.10),
    ),
    Corruption(
        "conv_middle_x1.01",
        "a conv halfway through the backbone off by 1% (error must cross ~half the network)",
        "weights", WEIGHT_FORMATS, FLOAT, True, _scale_conv(middle_conv, 1.01),
    ),
    Corruption(
        "live_weight_x1.10",
        "one live weight +10%: the output-Dense entry that moves the logits most on the probes",
        "weights", WEIGHT_FORMATS, FLOAT, True, _live_weight,
    ),
    Corruption(
        "bias_dropped",
        "a dropped bias: the hidden Dense layer's bias zeroed (a converter losing use_bias)",
        "weights", WEIGHT_FORMATS, FLOAT, True, _drop_bias,
    ),
    Corruption(
        "bn_epsilon_x100",
        "every BatchNormalization epsilon x100 (1e-3 -> 0.1): a converter using the wrong "
        "epsilon. A Keras clone with the changed epsilon is re-exported: ONNX and TFLite fold BN "
        "into the conv, so the file carries scale gamma/sqrt(var + eps') and bias beta - mean * "
        "scale, what a converter misreading epsilon writes; TF.js keeps it in model.json",
        "model", ALL_FORMATS, F32, True, _model_fault(lambda m: _with_bn_epsilon(m, 100.0),
                                                      "all BN epsilon x100, re-exported"),
    ),
    Corruption(
        "bn_epsilon_1e-5",
        "BatchNormalization epsilon 1e-3 -> 1e-5 (PyTorch's default instead of Keras')",
        "model", ALL_FORMATS, F32, True, _model_fault(lambda m: _with_bn_epsilon(m, 0.01),
                                                      "all BN epsilon x0.01, re-exported"),
    ),
    Corruption(
        "rgb_bgr",
        "RGB <-> BGR: the artifact reads the channels in the other order (OpenCV decoding)",
        "model", ALL_FORMATS, F32, True, _model_fault(_rgb_to_bgr, "channel flip at the input"),
    ),
    Corruption(
        "double_scaling",
        "double input scaling: pixels already scaled to 0..1 reach a model that scales 0..255 "
        "itself (a x1/255 inserted at the input)",
        "model", ALL_FORMATS, F32, True, _model_fault(_double_scaling, "x1/255 at the input"),
    ),
    Corruption(
        "nchw_as_nhwc",
        "NCHW/NHWC mix-up: a CHW pixel buffer read as HWC (transpose + reshape at the input)",
        "model", ALL_FORMATS, F32, True, _model_fault(_nchw_buffer, "CHW buffer read as HWC"),
    ),
    Corruption(
        "antialias_resize",
        "preprocessing: probes resized with PIL's antialiasing BILINEAR from the larger source "
        "images instead of the contract's plain bilinear (golden outputs unchanged)",
        "inputs", ALL_FORMATS, ALL_PRECISIONS, True, _antialias_inputs,
    ),
    Corruption(
        "int8_calib_noise",
        "int8 calibrated on the wrong data: uniform noise over the input range",
        "model", ("tflite",), ("int8",), False, _calibrated_on("noise"),
    ),
    Corruption(
        "int8_calib_0to1",
        "int8 calibrated on the wrong data: real images scaled to 0..1 (representative dataset "
        "preprocessed unlike the contract's 0..255)",
        "model", ("tflite",), ("int8",), False, _calibrated_on("unit"),
    ),
]  # fmt: skip
BY_NAME = {c.name: c for c in CORRUPTIONS}


def apply(
    name: str,
    bundle_dir: str | Path,
    artifact_ids: list[str] | None = None,
    *,
    data_dir: str | Path | None = None,
    model=None,
) -> dict[str, str]:
    """Apply corruption `name` in place to `artifact_ids` (default: every artifact it applies to)
    of the bundle at `bundle_dir` (a copy!), then re-record hashes. Returns artifact id -> what
    was changed. `model`: the bundle's Keras source model, if already loaded."""
    c = BY_NAME[name]
    root = Path(bundle_dir)
    manifest = Manifest.load(root)
    records = [
        a
        for a in manifest.artifacts
        if c.applies_to(a) and (artifact_ids is None or a.id in artifact_ids)
    ]
    if not records:
        raise NotApplicable(f"{name} applies to none of {artifact_ids}")
    ctx = Context(root, manifest, Path(data_dir) if data_dir else None, model)
    details = c.run(ctx, records)
    if c.scope == "model":  # tfjs re-export may change the file list: save it first
        manifest.save(root)
    rehash(root, [r.id for r in records], probes=c.scope == "inputs")
    return details
