"""`edgetl export`: one Keras classifier -> a bundle of TF.js / ONNX / TFLite artifacts.

The bundle is built in a temporary sibling directory and renamed into place at the end, so it
appears complete or not at all; a converter that fails leaves nothing behind.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from edgetl.contract import LABELS_FILE, InputContract, save_labels
from edgetl.errors import UserError
from edgetl.manifest import (
    ArtifactRecord,
    Manifest,
    record_files,
    sha256_file,
    write_probes,
)
from edgetl.outdir import Staging, check_out_dir
from edgetl.probes import PROBE_SEED, make_probes

SOURCE_MODEL = "source/model.keras"
MAX_CALIBRATION_IMAGES = 100
TOOL_PACKAGES = (
    "edgetl",
    "tensorflow",
    "keras",
    "tensorflowjs",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "ai-edge-litert",
    "numpy",
)


class ExportError(UserError):
    """A converter failed; names the format. The CLI prints it and exits non-zero."""


def export_bundle(
    model,
    out_dir: str | Path,
    *,
    labels: Sequence[str],
    contract: InputContract,
    formats: Sequence[str] = ("tfjs", "onnx", "tflite"),
    quantizations: Sequence[str] = (),
    calibration_images: np.ndarray | None = None,
    probe_images: np.ndarray | None = None,
    probe_labels: Sequence[int] | None = None,
    probe_names: Sequence[str] | None = None,
    model_name: str = "model",
    source_path: Path | None = None,
    opset: int | None = None,
    nchw: bool = False,
    int8_io: str = "float32",
    tfjs_graph: bool = False,
    tfjs_quantizations: Sequence[str] = (),
    overwrite: bool = False,
    log=print,
) -> Manifest:
    """Write the bundle for `model` to `out_dir` and return its manifest.

    Images (probes, calibration) are float32 (N, H, W, 3) in the contract's value range."""
    from edgetl.converters import FORMATS, QUANTIZATIONS, TFJS_QUANTIZATIONS

    formats = [FORMATS.check(f) for f in formats]
    quantizations = [QUANTIZATIONS.check(q) for q in quantizations]
    tfjs_quantizations = [TFJS_QUANTIZATIONS.check(q) for q in tfjs_quantizations]
    if quantizations and "tflite" not in formats:
        raise UserError("--quantize applies to TFLite; add tflite to --formats")
    if tfjs_quantizations and "tfjs" not in formats:
        raise UserError("--tfjs-quantize applies to TF.js; add tfjs to --formats")
    if "int8" in quantizations and (calibration_images is None or len(calibration_images) == 0):
        raise UserError(
            "int8 needs calibration images: pass --calibration DATA_DIR (or export a "
            "run directory whose training data is still on disk)"
        )
    if len(labels) != int(model.outputs[0].shape[-1]):
        raise UserError(
            f"{len(labels)} labels for a model with {model.outputs[0].shape[-1]} outputs"
        )
    out_dir = Path(out_dir)
    check_out_dir(
        out_dir,
        force=overwrite,
        reads={"source model": Path(source_path)} if source_path else None,
    )
    check_outputs_finite(model, contract)
    staging = Staging(out_dir, log=log)
    with staging as tmp:
        manifest = _write_bundle(
            model,
            tmp,
            labels=list(labels),
            contract=contract,
            formats=formats,
            quantizations=quantizations,
            calibration_images=calibration_images,
            probe_images=probe_images,
            probe_labels=probe_labels,
            probe_names=probe_names,
            model_name=model_name,
            source_path=source_path,
            opset=opset,
            nchw=nchw,
            int8_io=int8_io,
            tfjs_graph=tfjs_graph,
            tfjs_quantizations=tfjs_quantizations,
            log=log,
        )
        staging.commit()  # rename into place (an old bundle is moved aside, removed after)
    return manifest


def check_outputs_finite(model, contract: InputContract) -> None:
    """Refuse a model whose outputs are NaN/Inf on ordinary inputs (a diverged training run):
    its golden probes would be NaN and every artifact would 'agree' with nothing."""
    lo, hi = contract.value_range
    x = np.stack(
        [
            np.full((contract.height, contract.width, 3), (lo + hi) / 2, np.float32),
            np.random.default_rng(PROBE_SEED).uniform(lo, hi, (contract.height, contract.width, 3)),
        ]
    ).astype(np.float32)
    y = np.asarray(model.predict(x, verbose=0))
    if not np.all(np.isfinite(y)):
        raise UserError(
            "the model outputs NaN or Inf on plain inputs (its weights hold NaN/Inf, e.g. from a "
            "training run that diverged); nothing was exported. Retrain with a lower learning "
            "rate."
        )


def _write_bundle(
    model,
    root: Path,
    *,
    labels,
    contract,
    formats,
    quantizations,
    calibration_images,
    probe_images,
    probe_labels,
    probe_names,
    model_name,
    source_path,
    opset,
    nchw,
    int8_io,
    tfjs_graph,
    log,
    tfjs_quantizations=(),
) -> Manifest:
    meta = {"labels": labels, "input": contract.to_dict(), "name": model_name}
    artifacts: list[ArtifactRecord] = []

    # The Keras model itself travels with the bundle: the reference for verify and for
    # layer-by-layer localization, and what the hash in the manifest is about.
    (root / "source").mkdir()
    model.save(root / SOURCE_MODEL)
    source_hash = sha256_file(source_path) if source_path else sha256_file(root / SOURCE_MODEL)

    for fmt in formats:
        log(f"exporting {fmt} ...")
        try:
            artifacts += _EXPORTERS[fmt](
                model,
                root,
                meta=meta,
                quantizations=quantizations,
                calibration_images=calibration_images,
                opset=opset,
                nchw=nchw,
                int8_io=int8_io,
                tfjs_graph=tfjs_graph,
                tfjs_quantizations=tfjs_quantizations,
            )
        except UserError:
            raise
        except Exception as e:
            raise ExportError(f"{fmt} export failed: {type(e).__name__}: {e}") from e

    log("computing golden probes (float32, float64 and float16-weight references) ...")
    probes, noise, probe_coverage = make_probes(
        model, contract, probe_images, probe_labels, probe_names
    )
    if not probe_coverage["informative"]:
        log("warning: " + "; ".join(probe_coverage["problems"]))
    save_labels(root / LABELS_FILE, labels)
    manifest = Manifest(
        name=model_name,
        labels=labels,
        input=contract,
        artifacts=artifacts,
        source_model={
            "file": SOURCE_MODEL,
            "original": source_path.name if source_path else None,
            "sha256": source_hash,
        },
        tools=tool_versions(),
        probes={**write_probes(root, probes), "noise": noise, "coverage": probe_coverage},
        output={"name": "probabilities", "shape": [None, len(labels)], "activation": "softmax"},
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    manifest.save(root)
    return manifest


def _export_tfjs(
    model, root: Path, *, tfjs_graph: bool, meta: dict, tfjs_quantizations=(), **_
) -> list[ArtifactRecord]:
    from edgetl.converters.tfjs import export_tfjs

    out = []
    # (artifact id, folder, graph, weight dtype): Layers float32, its quantized variants, graph
    variants = [("tfjs_layers", "tfjs", False, None)]
    variants += [(f"tfjs_layers_{q}", f"tfjs_{q}", False, q) for q in tfjs_quantizations]
    if tfjs_graph:
        variants.append(("tfjs_graph", "tfjs_graph", True, None))
    for artifact_id, folder, graph, quantization in variants:
        main = export_tfjs(model, root / folder, graph=graph, quantization=quantization)
        files = sorted(
            p.relative_to(root).as_posix() for p in (root / folder).rglob("*") if p.is_file()
        )
        out.append(
            ArtifactRecord(
                id=artifact_id,
                format="tfjs_graph" if graph else "tfjs_layers",
                precision=quantization or "float32",
                path=main.relative_to(root).as_posix(),
                files=record_files(root, files),
            )
        )
    return out


def _export_onnx(
    model, root: Path, *, opset: int | None, nchw: bool, meta: dict, **_
) -> list[ArtifactRecord]:
    from edgetl.converters.onnx import DEFAULT_OPSET, export_onnx, metadata_for

    opset = opset or DEFAULT_OPSET
    export_onnx(
        model,
        root / "model.onnx",
        opset=opset,
        nchw=nchw,
        metadata=metadata_for(meta["labels"], meta["input"]),
    )
    return [
        ArtifactRecord(
            id="onnx",
            format="onnx",
            precision="float32",
            path="model.onnx",
            files=record_files(root, ["model.onnx"]),
            layout="NCHW" if nchw else "NHWC",
            options={"opset": opset},
        )
    ]


def _export_tflite(
    model, root: Path, *, quantizations, calibration_images, int8_io: str, meta: dict, **_
) -> list[ArtifactRecord]:
    from edgetl.converters.tflite import export_tflite

    precisions = ["float32", *quantizations]
    calibration = None
    if calibration_images is not None and len(calibration_images):
        images = np.asarray(calibration_images[:MAX_CALIBRATION_IMAGES], dtype=np.float32)
        calibration = lambda: (images[i : i + 1] for i in range(len(images)))  # noqa: E731
    paths = export_tflite(
        model, root, precisions=precisions, calibration=calibration, io_dtype=int8_io, metadata=meta
    )
    out = []
    for p, path in paths.items():
        io = int8_io if p == "int8" else "float32"
        options = {"calibration_images": len(calibration_images)} if p == "int8" else {}
        out.append(
            ArtifactRecord(
                id=f"tflite_{p}",
                format="tflite",
                precision=p,
                path=path.name,
                files=record_files(root, [path.name]),
                input_dtype=io,
                output_dtype=io,
                options=options,
            )
        )
    return out


_EXPORTERS = {"tfjs": _export_tfjs, "onnx": _export_onnx, "tflite": _export_tflite}


def tool_versions() -> dict[str, str]:
    out = {}
    for pkg in TOOL_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    out["python"] = sys.version.split()[0]
    return out


def images_in_range(images: np.ndarray, contract: InputContract) -> np.ndarray:
    """0..255 pixels -> the contract's value range (identity for edgetl's own models)."""
    lo, hi = contract.value_range
    if (lo, hi) == (0.0, 255.0):
        return images
    return (images / 255.0 * (hi - lo) + lo).astype(np.float32)


# ---------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgetl.argtypes import add_number
    from edgetl.converters import FORMATS, QUANTIZATIONS, TFJS_QUANTIZATIONS

    p.add_argument("model", help="an edgetl run directory, or a Keras .keras / .h5 classifier")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="bundle directory to create (refused if it exists and is not empty, unless "
        "--force; never the source run or a data folder)",
    )
    p.add_argument(
        "--formats",
        default=",".join(FORMATS.names()),
        help=f"comma-separated formats: {', '.join(FORMATS.names())}",
    )
    p.add_argument(
        "--quantize",
        default="",
        help=f"extra TFLite variants: {', '.join(QUANTIZATIONS.names())} (float32 is "
        "always written)",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        help="image folder for int8 calibration and probes (any folder of images; its "
        "sub-folder names are used as labels only where they match the model's); "
        "default: the training data recorded with a run directory",
    )
    p.add_argument("--labels", help="labels file (.json list or one per line) or a,b,c list")
    p.add_argument(
        "--input-range",
        help="value range the model input expects, e.g. 0,255 "
        "(default, preprocessing inside the model) or -1,1",
    )
    add_number(p, "--opset", kind=int, lo=13, hi=18, help="ONNX opset (default 15)")
    p.add_argument("--nchw", action="store_true", help="ONNX input as NCHW instead of NHWC")
    p.add_argument(
        "--int8-io",
        default="float32",
        choices=["float32", "uint8", "int8"],
        help="input/output dtype of the int8 TFLite model",
    )
    p.add_argument(
        "--tfjs-graph", action="store_true", help="also write a TF.js graph model (inference only)"
    )
    p.add_argument(
        "--tfjs-quantize",
        default="",
        help=f"extra TF.js Layers variants with smaller weight shards: "
        f"{', '.join(TFJS_QUANTIZATIONS.names())} (float32 is always written)",
    )
    p.add_argument(
        "--add-softmax",
        action="store_true",
        help="the model outputs logits (a linear last layer): append a Softmax layer so the "
        "bundle outputs probabilities",
    )
    p.add_argument("--force", action="store_true", help="replace an existing bundle directory")


def run(args: argparse.Namespace) -> int:
    from edgetl.converters import FORMATS, QUANTIZATIONS, TFJS_QUANTIZATIONS
    from edgetl.modelio import load_model_source, parse_labels, parse_range

    formats = FORMATS.parse_list(args.formats)
    quantizations = QUANTIZATIONS.parse_list(args.quantize) if args.quantize else []
    tfjs_q = TFJS_QUANTIZATIONS.parse_list(args.tfjs_quantize) if args.tfjs_quantize else []
    if args.opset is not None:
        from edgetl.converters.onnx import MAX_OPSET, MIN_OPSET

        if not MIN_OPSET <= args.opset <= MAX_OPSET:
            raise UserError(
                f"--opset {args.opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET}"
            )
    if args.calibration is not None and not args.calibration.is_dir():
        raise UserError(f"--calibration {args.calibration}: not a directory")
    if quantizations and "tflite" not in formats:
        raise UserError("--quantize applies to TFLite; add tflite to --formats")
    if tfjs_q and "tfjs" not in formats:
        raise UserError("--tfjs-quantize applies to TF.js; add tfjs to --formats")
    given_labels = parse_labels(args.labels) if args.labels else None
    input_range = parse_range(args.input_range) if args.input_range else None
    model_path = Path(args.model)
    if not model_path.exists():
        raise UserError(f"model not found: {model_path}")
    reads = {"source model": model_path}
    data_dirs = {"calibration folder": args.calibration} if args.calibration else {}
    check_out_dir(args.out, force=args.force, reads=reads, data_dirs=data_dirs)  # before any work
    loaded = load_model_source(
        args.model, labels=given_labels, input_range=input_range, add_softmax=args.add_softmax
    )
    for note in loaded.notes:
        print(f"note: {note}")
    data_dir = args.calibration or loaded.data_dir
    if data_dir is not None:
        data_dirs["training data"] = data_dir
    check_out_dir(args.out, force=args.force, reads=reads, data_dirs=data_dirs)
    images = labels = names = None
    if data_dir is not None:
        images, labels, names = sample_images(data_dir, loaded.contract, loaded.labels)
    manifest = export_bundle(
        loaded.model,
        args.out,
        labels=loaded.labels,
        contract=loaded.contract,
        formats=formats,
        quantizations=quantizations,
        calibration_images=images,
        probe_images=images,
        probe_labels=labels,
        probe_names=names,
        model_name=loaded.name,
        source_path=loaded.source_path,
        opset=args.opset,
        nchw=args.nchw,
        int8_io=args.int8_io,
        tfjs_graph=args.tfjs_graph,
        tfjs_quantizations=tfjs_q,
        overwrite=args.force,
    )
    print(f"bundle written to {args.out}")
    for a in manifest.artifacts:
        print(f"  {a.id:<16} {a.path:<24} {a.size / 1e6:8.2f} MB")
    print(f"  probes: {manifest.probes['count']} (golden outputs of the Keras model)")
    return 0


def sample_images(
    data_dir: Path,
    contract: InputContract,
    model_labels: list[str],
    limit: int = MAX_CALIBRATION_IMAGES,
):
    """Up to `limit` images from a class folder, interleaved across classes (so the first few,
    used as probes, cover every class); labels mapped to the model's when names match (None
    where they do not). A folder of images without sub-folders counts as one class."""
    from edgetl.data import interleave_by_class, load_images, scan_image_folder

    folder = scan_image_folder(data_dir, min_classes=1, allow_flat=True)
    picked = interleave_by_class(folder.labels, limit)
    paths = [folder.files[i] for i in picked]
    images = images_in_range(
        load_images(paths, contract.height, contract.width, progress=True), contract
    )
    index = {name: i for i, name in enumerate(model_labels)}
    labels = [index.get(folder.classes[folder.labels[i]]) for i in picked]
    names = [f"image:{Path(p).relative_to(folder.root).as_posix()}" for p in paths]
    return images, labels, names
