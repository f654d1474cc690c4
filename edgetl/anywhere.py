"""Verify artifacts made anywhere: a user's own ONNX / TFLite / TF.js files against their Keras
model, without a bundle from `edgetl export`.

    edgetl verify --reference model.keras model.onnx model.tflite web/model.json

What a bundle records at export is rebuilt here in memory, and the one run -> judge -> report
path of edgetl.verifier takes it as it is:

* artifact records: each file's format found by its content, never its name (ONNX protobuf,
  the TFLite flatbuffer identifier `TFL3` at bytes 4..8, a TF.js model.json with modelTopology
  and format), its precision from its tensors (TFLite float16 / dynamic-range / int8, TF.js
  float16 / uint8 shards, ONNX float16 or quantize ops) and an ONNX input layout (NCHW when its
  input has 3 channels in axis 1). Records name the user's files by absolute path: nothing is
  copied, nothing is written beside them.
* probes, golden outputs and float64 noise floors: made from the reference the way export makes
  them (edgetl.probes.make_probes over images sampled by edgetl.data.sample_images), or read
  from a folder `--save-probes` wrote (a later run, or a machine without TensorFlow).

A probes folder is a bundle without artifacts: manifest.json (labels, input contract, noise
floors, coverage), probes/*.bin and a copy of the reference in source/, every file hashed.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.errors import UserError
from edgetl.manifest import (
    MANIFEST_FILE,
    ArtifactRecord,
    BundleError,
    FileRecord,
    Manifest,
    ProbeSet,
    check_integrity,
    read_probes,
    sha256_file,
    write_probes,
)

TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8
ONNX_FIRST_BYTE = 0x08  # ModelProto field 1 (ir_version), varint: every ONNX file starts so
# A Layers model.json converted from a Keras 3 model (tensorflowjs' save_keras_model or
# `tensorflowjs_converter --input_format keras`) keeps Keras 3's topology, which tfjs 4.22
# cannot load ("An InputLayer should be passed either a `batchInputShape` or an `inputShape`";
# tensorflow/tfjs#8358, #8328, #8494). Said in one line on its ERROR row.
KERAS3_LAYERS_HINT = (
    "a TF.js Layers model.json converted from a Keras {version} model, which TF.js {tfjs} cannot "
    "load (tensorflow/tfjs#8358): convert a SavedModel to a graph model instead "
    "(model.export(DIR); tensorflowjs_converter --input_format tf_saved_model DIR OUT) or "
    "export with `edgetl export`"
)
ERROR_HINT = "error_hint"  # ArtifactRecord.options key: a one-line explanation of a load error


@dataclass
class Reference:
    """What the artifacts are judged against: the golden probes and the model's description.
    `model` is the loaded Keras model (None when the probes come from a saved folder and
    TensorFlow is not installed here)."""

    manifest: Manifest  # labels, input contract, source model, probes entry (noise, coverage)
    probes: ProbeSet
    model: object | None
    source_path: Path | None


# ---------------------------------------------------------------- artifacts, by content


def detect_artifact(path: Path) -> ArtifactRecord:
    """The ArtifactRecord of a user's file, its format found from its bytes (UserError when it is
    none of ONNX, TFLite, TF.js model.json). A folder holding model.json counts as that file."""
    path = Path(path)
    if path.is_dir() and (path / "model.json").is_file():
        path = path / "model.json"
    if path.is_dir():
        hint = (
            " (a SavedModel folder: convert it to an artifact first)"
            if (path / "saved_model.pb").is_file()
            else ""
        )
        raise UserError(f"{path}: a folder, not a model file{hint}")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(16)
    if head[4:8] == TFLITE_IDENTIFIER:
        return _tflite_record(path)
    if head.lstrip()[:1] == b"{":
        return _tfjs_record(path)
    if head[:1] == bytes([ONNX_FIRST_BYTE]):
        return _onnx_record(path)
    raise UserError(
        f"{path}: not a model edgetl can verify (by content: an ONNX protobuf, a TFLite "
        "flatbuffer with TFL3 at bytes 4..8, or a TF.js model.json with modelTopology)"
    )


def _record(path: Path, fmt: str, precision: str, files: list[Path], **kw) -> ArtifactRecord:
    main = path.resolve()
    records = [FileRecord(str(p.resolve()), p.stat().st_size, sha256_file(p)) for p in files]
    return ArtifactRecord(
        id=fmt if precision == "float32" or fmt == "onnx" else f"{fmt}_{precision}",
        format=fmt,
        precision=precision,
        path=str(main),
        files=records,
        **kw,
    )


def _tflite_record(path: Path) -> ArtifactRecord:
    """float16 (float16 constants), int8 (integer activations), dynamic (int8 weights only) or
    float32; the input dtype as the file declares it."""
    try:
        from edgetl.runtimes.litert_runtime import make_interpreter

        interp = make_interpreter(str(path))
        tensors = interp.get_tensor_details()
        outputs = {int(i) for op in interp._get_ops_details() for i in op["outputs"]}
        in_dtype = np.dtype(interp.get_input_details()[0]["dtype"]).name
    except ImportError:
        raise UserError(
            f"{path}: a TFLite file, but ai-edge-litert is not installed to read it "
            "(pip install ai-edge-litert)"
        ) from None
    except Exception as e:
        raise UserError(
            f"{path}: a TFLite file LiteRT cannot read ({type(e).__name__}: {e})"
        ) from None
    dtypes = {np.dtype(t["dtype"]).name for t in tensors}
    integer = {"int8", "uint8", "int16"}
    active = {np.dtype(t["dtype"]).name for t in tensors if t["index"] in outputs}
    if active & integer or in_dtype in integer:
        precision = "int8"
    elif "float16" in dtypes:
        precision = "float16"
    elif dtypes & integer:
        precision = "dynamic"
    else:
        precision = "float32"
    rec = _record(path, "tflite", precision, [path], input_dtype=in_dtype)
    rec.id = f"tflite_{precision}"
    return rec


def _tfjs_record(path: Path) -> ArtifactRecord:
    """Layers or graph model (its `format`, else its topology's shape); float16 / uint8 shards
    from the weights manifest; every shard is one of the artifact's files."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: JSON, but not readable as a TF.js model.json ({e})") from None
    topology = spec.get("modelTopology") if isinstance(spec, dict) else None
    if not isinstance(topology, dict):
        raise UserError(f"{path}: JSON without modelTopology: not a TF.js model.json")
    kind = spec.get("format")
    if kind == "graph-model" or (kind is None and "node" in topology):
        fmt = "tfjs_graph"
    elif kind == "layers-model" or (kind is None and "model_config" in topology):
        fmt = "tfjs_layers"
    else:
        raise UserError(f"{path}: a model.json of unknown format {kind!r}")
    files, quant = [path], set()
    for group in spec.get("weightsManifest", []):
        files += [path.parent / p for p in group.get("paths", [])]
        for w in group.get("weights", []):
            q = (w.get("quantization") or {}).get("dtype")
            quant.add("float16" if q == "float16" or w.get("dtype") == "float16" else q)
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise UserError(f"{path}: weight shard {missing[0]} is missing")
    precision = (
        "uint8" if quant & {"uint8", "uint16"} else "float16" if "float16" in quant else "float32"
    )
    options: dict = {}
    version = str(topology.get("keras_version", ""))
    if fmt == "tfjs_layers" and version.startswith("3.") and not _translated(topology):
        options[ERROR_HINT] = KERAS3_LAYERS_HINT.format(version=version, tfjs="4.22")
    return _record(path, fmt, precision, files, options=options)


def _translated(topology: dict) -> bool:
    """A Keras 3 topology rewritten for tfjs (edgetl's converter): InputLayers carry Keras 2's
    batch_input_shape."""
    layers = ((topology.get("model_config") or {}).get("config") or {}).get("layers") or []
    inputs = [la for la in layers if la.get("class_name") == "InputLayer"]
    return bool(inputs) and all("batch_input_shape" in la.get("config", {}) for la in inputs)


def _onnx_record(path: Path) -> ArtifactRecord:
    """Layout from the input shape (N, 3, H, W) -> NCHW; precision from float16 initializers
    or quantize ops."""
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is None:  # a light install: onnxruntime reads the input; precision assumed float32
        shape, precision = _ort_input_shape(path), "float32"
    else:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise UserError(
                f"{path}: not a readable ONNX model ({type(e).__name__}: {e})"
            ) from None
        inits = {i.name for i in model.graph.initializer}
        graph_inputs = [i for i in model.graph.input if i.name not in inits]
        if not graph_inputs:
            raise UserError(f"{path}: an ONNX model without inputs")
        dims = graph_inputs[0].type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        ops = {n.op_type for n in model.graph.node}
        f16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
        if ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}:
            precision = "dynamic"
        elif ops & {"QuantizeLinear", "QLinearConv", "QLinearMatMul"}:
            precision = "int8"
        else:
            precision = "float16" if f16 else "float32"
    layout = "NCHW" if len(shape) == 4 and shape[1] == 3 and shape[3] != 3 else "NHWC"
    rec = _record(path, "onnx", precision, [path], layout=layout)
    rec.id = "onnx" if precision == "float32" else f"onnx_{precision}"
    return rec


def _ort_input_shape(path: Path) -> list:
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    return [d if isinstance(d, int) else None for d in sess.get_inputs()[0].shape]


def artifact_records(paths: list[Path]) -> list[ArtifactRecord]:
    """Records for the user's files, ids unique (a second artifact of one kind gets its file
    name appended: tflite_float32_model_b)."""
    records: list[ArtifactRecord] = []
    seen_files: dict[str, Path] = {}
    for p in paths:
        rec = detect_artifact(p)
        if rec.path in seen_files:
            raise UserError(f"{p}: the same file as {seen_files[rec.path]}")
        seen_files[rec.path] = Path(p)
        ids = {r.id for r in records}
        if rec.id in ids:
            stem = (
                Path(rec.path).parent.name
                if Path(rec.path).name == "model.json"
                else Path(rec.path).stem
            )
            base = f"{rec.id}_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in stem)}"
            rec.id, n = base, 2
            while rec.id in ids:
                rec.id, n = f"{base}_{n}", n + 1
        records.append(rec)
    return records


# ---------------------------------------------------------------- the reference


def load_reference(
    reference: Path,
    *,
    labels: list[str] | None = None,
    input_range: tuple[float, float] | None = None,
):
    """The Keras model (.keras / .h5) with its labels and input contract (edgetl.modelio: the
    input size from the model, labels.json / contract.json beside it, else --labels /
    --input-range, else class_N and 0..255)."""
    from edgetl.modelio import load_model_source

    reference = Path(reference)
    if reference.is_dir() and (reference / "saved_model.pb").is_file():
        raise UserError(
            f"{reference}: a SavedModel folder; give the Keras model (.keras or .h5) it was "
            "saved from as --reference"
        )
    if not reference.is_file():
        raise UserError(f"--reference {reference}: no such file")
    return load_model_source(reference, labels=labels, input_range=input_range)


def make_reference(
    reference: Path,
    *,
    images: Path | None = None,
    labels: list[str] | None = None,
    input_range: tuple[float, float] | None = None,
    sample_limit: int | None = None,
    log=print,
) -> Reference:
    """Probes made here, the way export makes them: up to SAMPLE_LIMIT images of `images`
    (a class folder or a flat one) picked for coverage plus seeded synthetic ones, golden
    outputs and float64 / float16 noise floors from the reference."""
    from edgetl.bundle import tool_versions
    from edgetl.data import SAMPLE_LIMIT, sample_images
    from edgetl.probes import make_probes

    loaded = load_reference(reference, labels=labels, input_range=input_range)
    for note in loaded.notes:
        log(f"note: {note}")
    picked = (None, None, None)
    if images is not None:
        picked = sample_images(
            Path(images), loaded.contract, loaded.labels, sample_limit or SAMPLE_LIMIT
        )
    log("computing golden probes (float32, float64 and float16-weight references) ...")
    probes, noise, probe_coverage = make_probes(loaded.model, loaded.contract, *picked)
    if not probe_coverage["informative"]:
        log("warning: " + "; ".join(probe_coverage["problems"]))
    entry = {
        "count": len(probes.inputs),
        "names": probes.names,
        "true_labels": probes.labels,
        "input_shape": list(probes.inputs.shape),
        "output_shape": list(probes.expected.shape),
        "noise": noise,
        "coverage": probe_coverage,
    }
    manifest = _manifest(loaded.name, loaded.labels, loaded.contract, loaded.source_path, entry)
    manifest.tools = tool_versions()
    return Reference(manifest, probes, loaded.model, loaded.source_path.resolve())


def _manifest(name, labels, contract, source: Path | None, probes_entry: dict) -> Manifest:
    return Manifest(
        name=name,
        labels=list(labels),
        input=contract,
        artifacts=[],
        source_model={
            "file": str(source.resolve()) if source else None,
            "original": source.name if source else None,
            "sha256": sha256_file(source) if source else None,
        },
        tools={},
        probes=probes_entry,
        output={"name": "probabilities", "shape": [None, len(labels)], "activation": "softmax"},
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )


# ---------------------------------------------------------------- saved probes


def save_probes(ref: Reference, out_dir: Path, *, force: bool = False) -> None:
    """Write the probes, golden outputs, floors and coverage as a bundle without artifacts
    (every file hashed in manifest.json), built aside and renamed into place."""
    from edgetl.outdir import Staging, check_out_dir

    out_dir = Path(out_dir)
    check_out_dir(out_dir, force=force, flag="--save-probes")
    staging = Staging(out_dir, log=lambda *_: None)
    with staging as tmp:
        entry = write_probes(tmp, ref.probes)
        keep = {
            k: ref.manifest.probes[k] for k in ("noise", "coverage") if k in ref.manifest.probes
        }
        m = ref.manifest
        saved = Manifest(
            name=m.name,
            labels=m.labels,
            input=m.input,
            artifacts=[],
            source_model=_copy_source(ref.source_path, tmp),
            tools=m.tools,
            probes={**entry, **keep},
            output=m.output,
            created=m.created,
        )
        saved.save(tmp)
        staging.commit()


def _copy_source(source: Path | None, root: Path) -> dict:
    """The reference travels with its probes (source/NAME, hashed like a bundle's), so the
    folder is a bundle without artifacts that the manifest schema and integrity check accept."""
    import shutil

    if source is None:
        raise UserError("--save-probes needs --reference MODEL to make the probes from")
    rel = f"source/{source.name}"
    (root / "source").mkdir()
    shutil.copyfile(source, root / rel)
    return {
        "file": rel,
        "size": (root / rel).stat().st_size,
        "sha256": sha256_file(root / rel),
        "original": source.name,
    }


def load_saved_probes(
    probes_dir: Path, reference: Path | None, *, labels=None, input_range=None, log=print
) -> Reference:
    """Probes from a --save-probes folder, hashes checked. With --reference: its input size must
    be the probes' (refused in one line otherwise); where TensorFlow is installed it is loaded
    and re-run (the keras runtime) against the golden outputs; where it is not, its sha256 must
    be the one the probes were made from."""
    probes_dir = Path(probes_dir)
    if not (probes_dir / MANIFEST_FILE).is_file():
        raise UserError(
            f"--probes {probes_dir}: not a probes folder (no {MANIFEST_FILE}); make one with "
            "--save-probes"
        )
    manifest = Manifest.load(probes_dir)
    if manifest.artifacts:
        raise UserError(f"--probes {probes_dir}: a bundle, not a probes folder; verify it as one")
    try:
        check_integrity(probes_dir, manifest, [])
    except BundleError as e:
        raise UserError(f"--probes {probes_dir}: {str(e).splitlines()[-1].strip()}") from None
    probes = read_probes(probes_dir, manifest)
    shape = tuple(manifest.probes["input_shape"][1:])
    model = source = None
    if reference is not None:
        reference = Path(reference)
        if not reference.is_file():
            raise UserError(f"--reference {reference}: no such file")
        if _keras_available():
            loaded = load_reference(
                reference,
                labels=labels or manifest.labels,
                input_range=input_range or manifest.input.value_range,
            )
            c = loaded.contract
            want = (c.height, c.width, c.channels)
            if want != shape:
                raise UserError(
                    f"--probes {probes_dir}: probes of input {'x'.join(map(str, shape))}, but "
                    f"{reference.name} takes {'x'.join(map(str, want))}; make probes for this "
                    "model with --save-probes"
                )
            model, source = loaded.model, loaded.source_path.resolve()
        elif sha256_file(reference) != manifest.source_model.get("sha256"):
            raise UserError(
                f"--probes {probes_dir} was made from another file than {reference.name} (sha256 "
                "differs) and TensorFlow is not here to re-run it; save probes from this model"
            )
    src = manifest.source_model
    m = _manifest(manifest.name, manifest.labels, manifest.input, None, manifest.probes)
    m.source_model = {
        "file": str(source) if source else None,
        "original": src.get("original"),
        "sha256": src.get("sha256"),
    }
    m.tools = manifest.tools
    log(f"probes: {len(probes.inputs)} from {probes_dir} (made {manifest.created})")
    return Reference(m, probes, model, source)


def _keras_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(p) is not None for p in ("tensorflow", "keras"))
