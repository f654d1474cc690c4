"""What a bundle may hold, checked before any runtime opens a byte of it (issue 21).

A bundle is untrusted input: an attacker can rewrite manifest.json and model.json, sha256 and
sizes included ("rehashed"), so a matching hash proves only that the files are the ones the
manifest names. What must hold besides, each refused with a BundleError (one line, exit 2):

* the manifest has one schema (MANIFEST_SCHEMA below): every field's type, known formats,
  unique artifact ids and paths, a known manifest_version, bounded size and nesting;
* it agrees with itself: labels, probes and output shapes, the input contract;
* every path it names, and every file a model names in turn (TF.js weight shards in model.json's
  weightsManifest, ONNX external data `location`s), is a plain relative path inside the bundle
  (SAFE_PATH: no `..`, no absolute path, no URL syntax a browser would decode), a regular file
  (not a FIFO, device or socket: those would hang or never end), not a symbolic link leading
  out, listed and hashed in the manifest, and of exactly the size the model's own weight specs
  imply (so an appended 1 GB shard or a truncated one is refused before it is read);
* each artifact's file is what its format says (model.json of the right kind, an ONNX graph
  whose input and output agree with the contract and the labels, a TFLite flatbuffer).

Runtimes then open only files named here: onnxruntime, LiteRT, TF.js in Node and in Chromium.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

# Version 2: source_model.sha256 / size are those of the bundled source/model.keras (version 1
# recorded the hash of the file exported from, which cannot be checked inside the bundle).
MANIFEST_VERSION = 2
MAX_MANIFEST_BYTES = 16 << 20  # a real one is ~5-20 KB
MAX_MODEL_JSON_BYTES = 64 << 20  # TF.js model.json: ~110 KB for MobileNetV2, topology only
MAX_JSON_DEPTH = 64  # a real manifest nests 5 deep, model.json ~20
# Paths a bundle may name: what edgetl writes (tfjs/group1-shard1of1.bin, model_int8.tflite,
# probes/inputs.bin). No '%' (a browser decodes %2e%2e to '..'), ':', '?', '#', '\\' or spaces.
SAFE_PATH = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")
SAFE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
HEX64 = re.compile(r"[0-9a-f]{64}")
FORMATS = ("tfjs_layers", "tfjs_graph", "onnx", "tflite")
PRECISIONS = ("float32", "float16", "dynamic", "int8", "uint8")
IO_DTYPES = ("float32", "uint8", "int8")
MAX_DIM = 1 << 16
# TF.js weight dtypes and the stored bytes per value (quantization.dtype overrides dtype).
TFJS_BYTES = {"float32": 4, "int32": 4, "bool": 1, "complex64": 8}
TFJS_QUANT_BYTES = {"uint8": 1, "uint16": 2, "float16": 2}
TFJS_FORMAT = {"tfjs_layers": "layers-model", "tfjs_graph": "graph-model"}


class BundleError(ValueError):
    """A bundle that is missing, malformed or tampered with."""


# ---------------------------------------------------------------- paths and files


def inside(bundle_dir: Path, rel: object, what: str) -> Path:
    """The path `rel` names inside the bundle, refused (BundleError) unless it stays there: a
    bundle is untrusted input, so absolute paths, `..`, characters outside SAFE_PATH and
    symbolic links that lead out of the folder are refused before anything is opened."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{what}: path must be a non-empty relative path, got {rel!r}"[:300])
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or rel.startswith("~"):
        raise BundleError(
            f"{what}: path {rel!r} points outside the bundle (absolute or '..'); refused"[:300]
        )
    if len(rel) > 255 or not SAFE_PATH.fullmatch(rel) or "." in rel.split("/"):
        raise BundleError(
            f"{what}: path {rel!r} has a forbidden character (allowed: letters, digits, "
            "'_', '-', '.' and '/' between names); refused"[:300]
        )
    root = Path(bundle_dir).resolve()
    full = root.joinpath(*pure.parts)
    if not full.resolve().is_relative_to(root):
        raise BundleError(
            f"{what}: {rel!r} is a symbolic link that leads outside the bundle; refused"
        )
    return full


def regular_file(path: Path, rel: str, what: str) -> os.stat_result:
    """stat of a regular file (following links that stay inside, see inside()); a FIFO, device
    or socket is refused by name: opening one would hang or never end."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BundleError(f"{what}: {rel} is missing") from None
    except OSError as e:
        raise BundleError(f"{what}: {rel} cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise BundleError(f"{what}: {rel} is a folder, not a file; refused")
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(
            f"{what}: {rel} is not a regular file (a FIFO, device or socket); refused"
        )
    return st


def read_json(path: Path, what: str, limit: int) -> object:
    """A JSON file of at most `limit` bytes, nested at most MAX_JSON_DEPTH deep."""
    size = os.stat(path).st_size
    if size > limit:
        raise BundleError(f"{what}: {size} bytes, more than the {limit >> 20} MB allowed; refused")
    try:
        text = path.read_bytes().decode("utf-8")
        depth_check(text, what)
        return json.loads(text)
    except BundleError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleError(f"{what}: not valid JSON ({type(e).__name__}: {e})"[:300]) from None


def depth_check(text: str, what: str) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH before parsing it (a 200,000-deep array
    is a RecursionError in json.loads). Brackets inside strings are not counted."""
    bare = _STRINGS.sub("", text).encode("utf-8", "replace")
    b = np.frombuffer(bare, np.uint8)
    step = np.isin(b, _OPEN).astype(np.int32) - np.isin(b, _CLOSE).astype(np.int32)
    if len(step) and int(np.cumsum(step).max()) > MAX_JSON_DEPTH:
        raise BundleError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH}; refused")


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_OPEN = np.frombuffer(b"[{", np.uint8)
_CLOSE = np.frombuffer(b"]}", np.uint8)


# ---------------------------------------------------------------- the manifest's schema


class _Schema:
    """A tiny declarative checker: one error, with the field's JSON path, per bad manifest."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, want: str, got: object) -> None:
        shown = repr(got)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise BundleError(f"{self.where}: {path}: expected {want}, got {shown}; refused")

    def check(self, value: object, spec: object, path: str) -> None:
        if isinstance(spec, tuple):  # alternatives
            for alt in spec:
                try:
                    self.check(value, alt, path)
                    return
                except BundleError:
                    continue
            self.fail(path, " or ".join(_describe(a) for a in spec), value)
        elif isinstance(spec, dict):
            if not isinstance(value, dict):
                self.fail(path, "an object", value)
            for key, sub in spec.items():
                name, optional = key.rstrip("?"), key.endswith("?")
                if name == "*":
                    continue
                if name not in value:
                    if not optional:
                        raise BundleError(f"{self.where}: {path}.{name} is missing; refused")
                    continue
                self.check(value[name], sub, f"{path}.{name}")
            if "*" in spec:
                for name, v in value.items():
                    self.check(v, spec["*"], f"{path}.{name}")
            else:
                known = {k.rstrip("?") for k in spec}
                extra = sorted(set(value) - known)
                if extra:
                    self.fail(path, f"only the fields {', '.join(sorted(known))}", extra[0])
        elif isinstance(spec, list):
            if not isinstance(value, list):
                self.fail(path, "a list", value)
            for i, v in enumerate(value):
                self.check(v, spec[0], f"{path}[{i}]")
        elif callable(spec):
            want = spec(value)
            if want is not None:
                self.fail(path, want, value)
        else:
            raise TypeError(spec)


def _describe(spec: object) -> str:
    if isinstance(spec, dict):
        return "an object"
    if isinstance(spec, list):
        return "a list"
    return getattr(spec, "__doc__", None) or "a value"


def _kind(doc: str, ok) -> object:
    def check(v: object) -> str | None:
        return None if ok(v) else doc

    check.__doc__ = doc
    return check


def _int(lo: int, hi: int) -> object:
    return _kind(
        f"an integer in [{lo}, {hi}]",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
    )


def _one_of(*values: str) -> object:
    return _kind(f"one of {', '.join(values)}", lambda v: v in values)


def _text(max_len: int = 1000) -> object:
    return _kind(f"a string of at most {max_len} characters",
                 lambda v: isinstance(v, str) and len(v) <= max_len)  # fmt: skip


_NUM = _kind("a finite number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)
             and math.isfinite(v))  # fmt: skip
_NULL = _kind("null", lambda v: v is None)
_BOOL = _kind("true or false", lambda v: isinstance(v, bool))
_HEX = _kind("a lowercase hex sha256", lambda v: isinstance(v, str) and HEX64.fullmatch(v))
_PATH = _kind("a relative path inside the bundle", lambda v: isinstance(v, str) and v != "")
_SIZE = _int(0, 1 << 40)
_ID = _kind("an id of letters, digits, '_', '-', '.'",
            lambda v: isinstance(v, str) and SAFE_ID.fullmatch(v))  # fmt: skip
_DIM = _int(1, MAX_DIM)
_ANY = _kind("any JSON value", lambda v: True)  # depth bounded by depth_check

FILE_SCHEMA = {"path": _PATH, "size": _SIZE, "sha256": _HEX}
ARTIFACT_SCHEMA = {
    "id": _ID,
    "format": _one_of(*FORMATS),
    "precision": _one_of(*PRECISIONS),
    "path": _PATH,
    "files": [FILE_SCHEMA],
    "input_dtype?": _one_of(*IO_DTYPES),
    "output_dtype?": _one_of(*IO_DTYPES),
    "layout?": _one_of("NHWC", "NCHW"),
    "options?": {"*": _ANY},
    "size?": _SIZE,
    "sha256?": (_HEX, _kind("an empty string", lambda v: v == "")),
}
MANIFEST_SCHEMA = {
    "manifest_version": _int(0, 1 << 30),
    "name": _text(200),
    "created?": _text(100),
    "labels": [_text(200)],
    "input": {
        "height": _DIM,
        "width": _DIM,
        "channels?": _int(1, 3),  # 3 (RGB) or 1 (gray); InputContract refuses 2
        "dtype?": _one_of("float32"),
        "value_range?": [_NUM],
        "layout?": _one_of("NHWC", "NCHW"),
        "channel_order?": _one_of("RGB", "BGR", "gray"),
        "gray_weights?": [_NUM],
        "resize_method?": _text(40),
        "internal_preprocessing?": _text(1000),
        "shape?": [(_NULL, _DIM)],
    },
    "output?": {
        "name?": _text(200),
        "shape?": [(_NULL, _DIM)],
        "activation?": _text(40),
    },
    "source_model": {
        "file": _PATH,
        "size": _SIZE,
        "sha256": _HEX,
        "original?": (_NULL, _text(1000)),
        "original_sha256?": (_NULL, _HEX),
    },
    "tools?": {"*": (_text(200), _NULL)},
    "artifacts": [ARTIFACT_SCHEMA],
    "probes": {
        "count": _int(1, 1 << 20),
        "names": [_text(1000)],
        "true_labels?": [(_NULL, _int(0, 1 << 20))],
        "inputs": _PATH,
        "expected": _PATH,
        "input_shape": [_DIM],
        "output_shape": [_DIM],
        "dtype?": _one_of("float32"),
        "byte_order?": _one_of("little"),
        "sha256": {"inputs": _HEX, "expected": _HEX},
        "noise?": {"*": _ANY},
        "coverage?": {"*": _ANY},
    },
}


def validate_manifest(d: object, where: str = "manifest.json") -> None:
    """The manifest as parsed JSON against MANIFEST_SCHEMA and against itself: a known version,
    unique artifact ids and paths, one label per output, probe and output shapes that agree
    with the input contract. Raises BundleError naming the first problem."""
    if isinstance(d, dict) and "manifest_version" in d:
        v = d["manifest_version"]
        if isinstance(v, int) and not isinstance(v, bool) and v != MANIFEST_VERSION:
            newer = v > MANIFEST_VERSION
            raise BundleError(
                f"{where}: manifest_version {v} is "
                + (
                    f"newer than this edgetl reads ({MANIFEST_VERSION}); upgrade edgetl"
                    if newer
                    else f"from an older edgetl (this one reads {MANIFEST_VERSION}); re-export "
                    "the bundle with `edgetl export`"
                )
            )
    _Schema(where).check(d, MANIFEST_SCHEMA, "manifest")
    assert isinstance(d, dict)
    labels = d["labels"]
    if not labels:
        raise BundleError(f"{where}: the labels list is empty; refused")
    if len(set(labels)) != len(labels):
        dup = next(x for x in labels if labels.count(x) > 1)
        raise BundleError(f"{where}: label {dup!r} appears twice; refused")
    seen_ids: set[str] = set()
    seen_paths: dict[str, str] = {}
    for a in d["artifacts"]:
        if a["id"] in seen_ids:
            raise BundleError(
                f"{where}: artifact id {a['id']!r} appears twice; every artifact needs its own id"
            )
        seen_ids.add(a["id"])
        if a["path"] in seen_paths:
            raise BundleError(
                f"{where}: artifacts {seen_paths[a['path']]!r} and {a['id']!r} name the same "
                f"file {a['path']!r}; refused"
            )
        seen_paths[a["path"]] = a["id"]
        files = [f["path"] for f in a["files"]]
        if len(set(files)) != len(files):
            raise BundleError(f"{where}: artifact {a['id']} lists a file twice; refused")
        if "size" in a and a["size"] != sum(f["size"] for f in a["files"]):
            raise BundleError(f"{where}: artifact {a['id']}: size is not the sum of its files")
    inp, probes = d["input"], d["probes"]
    h, w, k = inp["height"], inp["width"], probes["count"]
    ch = inp.get("channels", 3)
    classes = len(labels)
    if probes["input_shape"] != [k, h, w, ch]:
        raise BundleError(
            f"{where}: probes.input_shape {probes['input_shape']} does not match the model "
            f"input [{k}, {h}, {w}, {ch}] (count, input.height, input.width, input.channels); "
            "refused"
        )
    if probes["output_shape"] != [k, classes]:
        raise BundleError(
            f"{where}: probes.output_shape {probes['output_shape']} does not match "
            f"[{k}, {classes}] (count, number of labels); the labels list and the model's "
            "outputs disagree; refused"
        )
    if len(probes["names"]) != k or len(probes.get("true_labels", [None] * k)) != k:
        raise BundleError(f"{where}: probes.names / true_labels do not have count={k} entries")
    if any(t is not None and t >= classes for t in probes.get("true_labels", [])):
        raise BundleError(f"{where}: probes.true_labels names a class beyond the labels")
    out_shape = (d.get("output") or {}).get("shape")
    if out_shape is not None and (len(out_shape) != 2 or out_shape[-1] != classes):
        raise BundleError(
            f"{where}: output.shape {out_shape} has not {classes} classes, one per label; refused"
        )
    shape = inp.get("shape")
    layout = inp.get("layout", "NHWC")
    want = [None, ch, h, w] if layout == "NCHW" else [None, h, w, ch]
    if shape is not None and shape != want:
        raise BundleError(f"{where}: input.shape {shape} disagrees with height/width {want}")
    vr = inp.get("value_range")
    if vr is not None and (len(vr) != 2 or not vr[0] < vr[1]):
        raise BundleError(f"{where}: input.value_range {vr} is not [low, high]; refused")


# ---------------------------------------------------------------- side files of the models


def tfjs_shards(
    bundle_dir: Path, model_json_rel: str, what: str, spec: object = None
) -> dict[str, int]:
    """Bundle-relative path -> the byte count model.json's weight specs imply for each weight
    shard group, laid over its shards by their real sizes: {shard path: bytes} for every shard,
    after checking each group's shards add up to exactly what its specs imply."""
    root = Path(bundle_dir)
    if spec is None:
        spec = read_json(inside(root, model_json_rel, what), f"{what}: {model_json_rel}",
                         MAX_MODEL_JSON_BYTES)  # fmt: skip
    if not isinstance(spec, dict):
        raise BundleError(f"{what}: {model_json_rel} is not a TF.js model.json; refused")
    groups = spec.get("weightsManifest", [])
    if not isinstance(groups, list):
        raise BundleError(f"{what}: {model_json_rel}: weightsManifest is not a list; refused")
    folder = PurePosixPath(model_json_rel).parent
    sizes: dict[str, int] = {}
    for gi, group in enumerate(groups):
        where = f"{what}: {model_json_rel} weightsManifest[{gi}]"
        if (
            not isinstance(group, dict)
            or not isinstance(group.get("paths"), list)
            or not (isinstance(group.get("weights"), list))
        ):
            raise BundleError(f"{where}: needs 'paths' and 'weights' lists; refused")
        implied = sum(_tfjs_weight_bytes(w, f"{where}.weights[{i}]")
                      for i, w in enumerate(group["weights"]))  # fmt: skip
        total = 0
        for p in group["paths"]:
            if not isinstance(p, str):
                raise BundleError(f"{where}: shard path {p!r} is not a string; refused"[:300])
            rel = _join(folder, p, where)
            if rel in sizes:
                raise BundleError(f"{where}: shard {p!r} is named twice; refused")
            full = inside(root, rel, where)
            sizes[rel] = regular_file(full, rel, where).st_size
            total += sizes[rel]
        if total != implied:
            raise BundleError(
                f"{where}: its shards hold {total} bytes but its weight specs (shape x dtype) "
                f"imply {implied}; refused (a shard was added, cut or replaced)"
            )
    return sizes


def _join(folder: PurePosixPath, p: str, where: str) -> str:
    """`p` relative to the model file's folder, as a bundle-relative path (checked by the
    caller with inside()); `..` and absolute paths are refused here, before joining."""
    pure = PurePosixPath(p)
    if not p or pure.is_absolute() or ".." in pure.parts or "\\" in p:
        raise BundleError(
            f"{where}: path {p!r} points outside the bundle (absolute or '..'); refused"[:300]
        )
    return (folder / pure).as_posix()


def _tfjs_weight_bytes(w: object, where: str) -> int:
    if not isinstance(w, dict) or not isinstance(w.get("shape"), list):
        raise BundleError(f"{where}: a weight spec needs a name, shape and dtype; refused")
    shape = w["shape"]
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 1 << 31
               for s in shape) or len(shape) > 8:  # fmt: skip
        raise BundleError(f"{where}: shape {shape!r} is not a list of sizes; refused"[:300])
    q = w.get("quantization")
    if q is not None:
        if (
            not isinstance(q, dict)
            or not isinstance(q.get("dtype"), str)
            or (q["dtype"] not in TFJS_QUANT_BYTES)
        ):
            raise BundleError(
                f"{where}: quantization dtype must be one of {', '.join(TFJS_QUANT_BYTES)}; refused"
            )
        per = TFJS_QUANT_BYTES[q["dtype"]]
    elif isinstance(w.get("dtype"), str) and w["dtype"] in TFJS_BYTES:
        per = TFJS_BYTES[w["dtype"]]
    else:
        raise BundleError(
            f"{where}: weight dtype {w.get('dtype')!r} is not one of "
            f"{', '.join(TFJS_BYTES)}; refused"[:300]
        )
    return math.prod(shape) * per


def onnx_side_files(bundle_dir: Path, model_rel: str, what: str) -> tuple[dict[str, int], object]:
    """{bundle-relative external data file: bytes its tensors use} for the ONNX model, read
    without loading external data, after checking each tensor's location, offset and length;
    also returns the parsed model (its graph input and output are checked by the caller)."""
    import onnx

    root = Path(bundle_dir)
    full = inside(root, model_rel, what)
    try:
        model = onnx.load(str(full), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, recursion limit, ...
        raise BundleError(f"{what}: {model_rel} is not a readable ONNX model ({e})"[:300]) from None
    folder = PurePosixPath(model_rel).parent
    used: dict[str, int] = {}
    for t in _onnx_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        where = f"{what}: tensor {t.name!r} external data"
        info = {e.key: e.value for e in t.external_data}
        rel = _join(folder, info.get("location", ""), where)
        path = inside(root, rel, where)
        size = regular_file(path, rel, where).st_size
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError:
            raise BundleError(f"{where}: offset/length are not integers; refused") from None
        need = _onnx_bytes(t, where)
        if offset < 0 or length != need or offset + length > size:
            raise BundleError(
                f"{where}: bytes [{offset}, {offset + length}) of {rel} ({size} bytes) do not "
                f"hold the {need} bytes its shape and type imply; refused"
            )
        used[rel] = max(used.get(rel, 0), offset + length)
    return used, model


def _onnx_bytes(t, where: str) -> int:
    import onnx

    n = math.prod(t.dims)
    packed = {getattr(onnx.TensorProto, k, -1) for k in ("INT4", "UINT4", "FLOAT4E2M1")}
    if t.data_type in packed:
        return (n + 1) // 2
    try:
        return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:
        raise BundleError(f"{where}: data type {t.data_type} cannot be external; refused") from None


def _onnx_tensors(model) -> Iterator:
    """Every TensorProto of the model: initializers, sparse ones, node attributes, subgraphs
    and functions, walked without recursion."""
    graphs = [model.graph]
    node_lists = [f.node for f in model.functions]
    while graphs or node_lists:
        if graphs:
            g = graphs.pop()
            yield from g.initializer
            for s in g.sparse_initializer:
                yield s.values
                yield s.indices
            node_lists.append(g.node)
            continue
        for node in node_lists.pop():
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                for s in [a.sparse_tensor, *a.sparse_tensors]:
                    yield s.values
                    yield s.indices
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs.extend(a.graphs)


def check_onnx_io(model, manifest, record, what: str) -> None:
    """The ONNX graph's first input is [N, H, W, C] (or NCHW) of the contract and its output
    has one value per label."""

    def dims(vi) -> list:
        return [d.dim_value if d.HasField("dim_value") else None
                for d in vi.type.tensor_type.shape.dim]  # fmt: skip

    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs or not model.graph.output:
        raise BundleError(f"{what}: the ONNX graph has no input or no output; refused")
    c = manifest.input
    want = (
        [c.height, c.width, c.channels]
        if record.layout == "NHWC"
        else [c.channels, c.height, c.width]
    )
    got = dims(inputs[0])[1:]
    if got != want:
        raise BundleError(
            f"{what}: the ONNX model takes {got}, but the manifest's input contract "
            f"({record.layout}) says {want}; refused"
        )
    out = dims(model.graph.output[0])
    if out and out[-1] is not None and out[-1] != len(manifest.labels):
        raise BundleError(
            f"{what}: the ONNX model has {out[-1]} outputs but the bundle has "
            f"{len(manifest.labels)} labels; refused"
        )


def check_tfjs_io(bundle_dir: Path, manifest, record, what: str) -> object:
    """A TF.js model.json of the artifact's kind whose Layers input is the contract's;
    returns the parsed model.json."""
    spec = read_json(inside(bundle_dir, record.path, what), f"{what}: {record.path}",
                     MAX_MODEL_JSON_BYTES)  # fmt: skip
    kind = spec.get("format") if isinstance(spec, dict) else None
    if kind != TFJS_FORMAT[record.format]:
        raise BundleError(
            f"{what}: {record.path} is a {kind!r}, not the {TFJS_FORMAT[record.format]!r} "
            f"its format {record.format} says; refused"
        )
    if record.format != "tfjs_layers":
        return spec
    check_tfjs_topology(spec, f"{what}: {record.path}")
    shape = _dig(spec, "modelTopology", "model_config", "config", "layers", 0, "config",
                 "batch_input_shape")  # fmt: skip
    c = manifest.input
    if isinstance(shape, list) and shape[1:] != [c.height, c.width, c.channels]:
        raise BundleError(
            f"{what}: the TF.js model takes {shape[1:]}, but the manifest's input contract "
            f"says {[c.height, c.width, c.channels]}; refused"
        )
    return spec


def check_tfjs_topology(spec: dict, what: str) -> None:
    """A Layers model's graph must be well-formed before TF.js reads it: in every (nested)
    functional config, layer names are unique and every inbound node, input and output names
    a layer of that config. (TF.js 4.22 loops forever on a reference to a missing layer:
    measured, loadLayersModel still running after 60 s.)"""
    configs = [_dig(spec, "modelTopology", "model_config", "config")]
    while configs:
        cfg = configs.pop()
        if not isinstance(cfg, dict) or not isinstance(cfg.get("layers"), list):
            continue
        names: set[str] = set()
        for layer in cfg["layers"]:
            name = layer.get("name") if isinstance(layer, dict) else None
            if not isinstance(name, str) or name in names:
                raise BundleError(f"{what}: a layer name is missing or repeated ({name!r}); "
                                  "refused"[:300])  # fmt: skip
            inner = _dig(layer, "config", "name")
            if inner is not None and inner != name:
                raise BundleError(f"{what}: layer {name!r} is called {inner!r} in its config; "
                                  "refused"[:300])  # fmt: skip
            names.add(name)
            configs.append(layer.get("config"))
        refs = [*_refs(cfg.get("input_layers")), *_refs(cfg.get("output_layers"))]
        for layer in cfg["layers"]:
            refs += _refs(layer.get("inbound_nodes"))
        missing = [r for r in refs if not isinstance(r, str) or r not in names]
        if missing:
            raise BundleError(f"{what}: the model graph refers to a layer {missing[0]!r} it "
                              "does not define; refused"[:300])  # fmt: skip


def _refs(node: object) -> list:
    """Layer names in a Keras 2 style node list ([[name, node, tensor, kwargs], ...]);
    anything not of that shape yields a non-string, which check_tfjs_topology refuses."""
    if not isinstance(node, list):
        return [] if node is None else [node]
    if node and isinstance(node[0], str):
        return [node[0]]
    return [r for item in node for r in _refs(item)]


def _dig(node: object, *keys: str | int) -> object:
    """node[k1][k2]... or None where a level is missing or of another type."""
    for k in keys:
        if isinstance(k, int) and isinstance(node, list) and len(node) > k:
            node = node[k]
        elif isinstance(k, str) and isinstance(node, dict):
            node = node.get(k)
        else:
            return None
    return node


TFLITE_MAGIC = b"TFL3"


def check_tflite(path: Path, rel: str, what: str) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] != TFLITE_MAGIC:
        raise BundleError(f"{what}: {rel} is not a TFLite flatbuffer; refused")


def uses_of(bundle_dir: Path, manifest, record) -> dict[str, int | None]:
    """Every file the artifact's runtime will open -> the bytes its model implies (None: the
    main file itself, whose size the manifest records). Checks the model's I/O on the way."""
    what = f"artifact {record.id}"
    root = Path(bundle_dir)
    uses: dict[str, int | None] = {record.path: None}
    if record.format in TFJS_FORMAT:
        spec = check_tfjs_io(root, manifest, record, what)
        uses.update(tfjs_shards(root, record.path, what, spec))
    elif record.format == "onnx":
        used, model = onnx_side_files(root, record.path, what)
        check_onnx_io(model, manifest, record, what)
        for rel, end in used.items():
            uses[rel] = end
    elif record.format == "tflite":
        check_tflite(inside(root, record.path, what), record.path, what)
    return uses


def check_side_files(bundle_dir: Path, manifest, record) -> None:
    """The artifact's recorded files are exactly what its model opens, each of the implied
    size: nothing the model reads is unlisted (unhashed), nothing listed goes unused."""
    what = f"artifact {record.id}"
    uses = uses_of(bundle_dir, manifest, record)
    listed = {f.path: f.size for f in record.files}
    for rel, need in uses.items():
        if rel not in listed:
            raise BundleError(
                f"{what}: its model reads {rel}, which the manifest does not list and hash; refused"
            )
        if need is not None and listed[rel] != need:
            raise BundleError(
                f"{what}: {rel} is {listed[rel]} bytes, but the model's weight specs imply "
                f"{need}; refused"
            )
    unused = sorted(set(listed) - set(uses))
    if unused:
        raise BundleError(
            f"{what}: the manifest lists {unused[0]}, which its model never reads; refused"
        )


# ---------------------------------------------------------------- the Keras source model

KERAS_MEMBERS = frozenset({"metadata.json", "config.json", "model.weights.h5"})
MAX_KERAS_MEMBER_BYTES = 4 << 30


def check_keras_archive(path: Path, what: str = "source model") -> None:
    """Before Keras opens the bundle's source model: a .keras zip holding only what Keras
    writes (config, metadata, model.weights.h5), whose HDF5 weights have no external links,
    external raw storage or virtual datasets (HDF5 would open those files, outside the bundle,
    by their own paths)."""
    import io
    import zipfile

    path = Path(path)
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise BundleError(f"{what}: {path.name} is not a .keras archive; refused")
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        extra = sorted({i.filename for i in infos} - KERAS_MEMBERS)
        if extra:
            raise BundleError(f"{what}: {path.name} holds {extra[0]!r}, which Keras archives "
                              "made by edgetl never hold; refused"[:300])  # fmt: skip
        if any(i.file_size > MAX_KERAS_MEMBER_BYTES for i in infos):
            raise BundleError(f"{what}: {path.name} has a member over 4 GB; refused")
        if "model.weights.h5" not in zf.namelist():
            return
        data = zf.read("model.weights.h5")
    import h5py

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            _check_h5(f, what)
    except BundleError:
        raise
    except Exception as e:  # not HDF5, truncated
        raise BundleError(f"{what}: its weights are not readable HDF5 ({e})"[:300]) from None


def _check_h5(root, what: str) -> None:
    import h5py

    groups = [root]
    while groups:
        g = groups.pop()
        for name in g:
            link = g.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise BundleError(
                    f"{what}: its weights hold a {type(link).__name__} ({g.name}/{name}), "
                    "which could read files outside the bundle; refused"
                )
            obj = g[name]
            if isinstance(obj, h5py.Group):
                groups.append(obj)
            elif isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual):
                raise BundleError(
                    f"{what}: weight {obj.name} is stored in another file (external or "
                    "virtual dataset); refused"
                )
