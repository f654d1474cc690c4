"""`edgetl export RUN_DIR_OR_MODEL --out BUNDLE_DIR`: the command line of edgetl.bundle.

Every flag is checked, and --out against what the command reads, before any model is loaded;
the work itself is bundle.export_from_source."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgetl.errors import UserError
from edgetl.outdir import check_out_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgetl.argtypes import add_number
    from edgetl.converters import FORMATS, QUANTIZATIONS, TFJS_QUANTIZATIONS, describe

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
        help=f"comma-separated formats: {describe(FORMATS)}",
    )
    p.add_argument(
        "--quantize",
        default="",
        help=f"extra ONNX/TFLite variants, comma-separated: {describe(QUANTIZATIONS)}; float32 is "
        "always written; FORMAT:NAME (e.g. tflite:int8) makes it for that format only",
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
        help=f"extra TF.js Layers variants with smaller weight shards, comma-separated: "
        f"{describe(TFJS_QUANTIZATIONS)}; float32 is always written",
    )
    p.add_argument(
        "--add-softmax",
        action="store_true",
        help="the model outputs logits (a linear last layer): append a Softmax layer so the "
        "bundle outputs probabilities",
    )
    p.add_argument("--force", action="store_true", help="replace an existing bundle directory")


def run(args: argparse.Namespace) -> int:
    from edgetl.bundle import export_from_source
    from edgetl.converters import (
        FORMATS,
        TFJS_QUANTIZATIONS,
        parse_quantizations,
        unwritten_quantization,
    )
    from edgetl.modelio import parse_labels, parse_range

    formats = FORMATS.parse_list(args.formats)
    quantizations = parse_quantizations(args.quantize) if args.quantize else []
    tfjs_q = TFJS_QUANTIZATIONS.parse_list(args.tfjs_quantize) if args.tfjs_quantize else []
    if args.opset is not None:
        from edgetl.converters.onnx import MAX_OPSET, MIN_OPSET

        if not MIN_OPSET <= args.opset <= MAX_OPSET:
            raise UserError(
                f"--opset {args.opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET}"
            )
    if args.calibration is not None and not args.calibration.is_dir():
        raise UserError(f"--calibration {args.calibration}: not a directory")
    refusal = unwritten_quantization(quantizations, formats)
    if refusal:
        raise UserError(refusal)
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

    def on_loaded(loaded, data_dir) -> None:
        for note in loaded.notes:
            print(f"note: {note}")
        if data_dir is not None:
            data_dirs["training data"] = data_dir
        check_out_dir(args.out, force=args.force, reads=reads, data_dirs=data_dirs)

    manifest = export_from_source(
        args.model,
        args.out,
        data_dir=args.calibration,
        labels=given_labels,
        input_range=input_range,
        add_softmax=args.add_softmax,
        on_loaded=on_loaded,
        formats=formats,
        quantizations=quantizations,
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
