"""Write a bundle: one Keras classifier -> TF.js / ONNX / TFLite artifacts, the manifest and
the golden probes. (The `edgetl export` command line is edgetl.export_cli.)

export_from_source() is the one way from a run directory or model file to a bundle (load ->
sample probe/calibration images -> export_bundle), used by the CLI, the demo and the tests.
export_bundle() calls each format's exporter from the FORMATS registry (converters/), then
probes.make_probes for the golden outputs and noise floors, then writes manifest.json. The
bundle is built in a staging sibling and renamed into place at the end, so it appears complete
or not at all; a converter that fails leaves nothing behind.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from edgetl.contract import LABELS_FILE, InputContract, save_labels
from edgetl.errors import UserError
from edgetl.loadcheck import check_artifacts_load, probe_input
from edgetl.manifest import (
    ArtifactRecord,
    Manifest,
    sha256_file,
    write_probes,
)
from edgetl.outdir import Staging, check_out_dir
from edgetl.probes import PROBE_SEED, make_probes

SOURCE_MODEL = "source/model.keras"
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


def export_from_source(
    source: str | Path,
    out_dir: str | Path,
    *,
    data_dir: Path | None = None,
    sample_limit: int | None = None,
    labels: Sequence[str] | None = None,
    input_range: tuple[float, float] | None = None,
    add_softmax: bool = False,
    model_name: str | None = None,
    on_loaded: Callable | None = None,
    **options,
) -> Manifest:
    """Load a run directory or Keras file (edgetl.modelio), sample up to `sample_limit` probe
    and calibration images from `data_dir` (default: the run's recorded training data), and
    export the bundle; `options` go to export_bundle. `on_loaded(loaded, data_dir)` runs between
    loading and sampling (the CLI prints notes and checks --out against the data folder)."""
    from edgetl.data import SAMPLE_LIMIT, sample_images
    from edgetl.modelio import load_model_source

    loaded = load_model_source(
        source, labels=labels, input_range=input_range, add_softmax=add_softmax
    )
    data_dir = data_dir or loaded.data_dir
    if on_loaded is not None:
        on_loaded(loaded, data_dir)
    images = image_labels = names = None
    if data_dir is not None:
        images, image_labels, names = sample_images(
            Path(data_dir), loaded.contract, loaded.labels, sample_limit or SAMPLE_LIMIT
        )
    return export_bundle(
        loaded.model,
        out_dir,
        labels=loaded.labels,
        contract=loaded.contract,
        calibration_images=images,
        probe_images=images,
        probe_labels=image_labels,
        probe_names=names,
        model_name=model_name or loaded.name,
        source_path=loaded.source_path,
        **options,
    )


def export_bundle(
    model,
    out_dir: str | Path,
    *,
    labels: Sequence[str],
    contract: InputContract,
    formats: Sequence[str] | None = None,  # None: every FORMATS entry
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

    Images (probes, calibration) are float32 (N, H, W, C) as the contract says: its channels
    (3, or 1 for a grayscale model) and value range."""
    from edgetl.converters import ExportOptions

    formats, quantizations, tfjs_quantizations = check_request(
        model, labels, formats, quantizations, calibration_images, tfjs_quantizations
    )
    out_dir = Path(out_dir)
    check_out_dir(
        out_dir,
        force=overwrite,
        reads={"source model": Path(source_path)} if source_path else None,
    )
    check_outputs_finite(model, contract)
    options = ExportOptions(
        labels=tuple(labels),
        model_name=model_name,
        quantizations=tuple(quantizations),
        calibration_images=calibration_images,
        opset=opset,
        nchw=nchw,
        int8_io=int8_io,
        tfjs_graph=tfjs_graph,
        tfjs_quantizations=tuple(tfjs_quantizations),
    )
    probe_set = (probe_images, probe_labels, probe_names)
    staging = Staging(out_dir, log=log, replace=overwrite)
    with staging as tmp:
        manifest = _write_bundle(
            model, tmp, contract, options, formats, probe_set, source_path, log
        )
        staging.commit()  # rename into place (an old bundle is moved aside, removed after)
    return manifest


def check_request(model, labels, formats, quantizations, calibration_images, tfjs_quantizations=()):
    """Registered formats and quantizations that fit together, one label per model output."""
    from edgetl.converters import (
        FORMATS,
        TFJS_QUANTIZATIONS,
        split_quantization,
        unwritten_quantization,
    )

    # Each name once (`--formats onnx,onnx` wrote two artifacts with one id): order kept.
    formats = [FORMATS.check(f) for f in (FORMATS.names() if formats is None else formats)]
    formats = list(dict.fromkeys(formats))
    quantizations = list(dict.fromkeys(q.strip() for q in quantizations))
    names = [split_quantization(q)[1] for q in quantizations]
    tfjs_quantizations = list(
        dict.fromkeys(TFJS_QUANTIZATIONS.check(q) for q in tfjs_quantizations)
    )
    refusal = unwritten_quantization(quantizations, formats)
    if refusal:
        raise UserError(refusal)
    if tfjs_quantizations and "tfjs" not in formats:
        raise UserError("--tfjs-quantize applies to TF.js; add tfjs to --formats")
    if "int8" in names and (calibration_images is None or len(calibration_images) == 0):
        raise UserError(
            "int8 needs calibration images: pass --calibration DATA_DIR (or export a "
            "run directory whose training data is still on disk)"
        )
    if len(labels) != int(model.outputs[0].shape[-1]):
        raise UserError(
            f"{len(labels)} labels for a model with {model.outputs[0].shape[-1]} outputs"
        )
    return formats, quantizations, tfjs_quantizations


def check_outputs_finite(model, contract: InputContract) -> None:
    """Refuse a model whose outputs are NaN/Inf on ordinary inputs (a diverged training run):
    its golden probes would be NaN and every artifact would 'agree' with nothing."""
    lo, hi = contract.value_range
    shape = (contract.height, contract.width, contract.channels)
    x = np.stack(
        [
            np.full(shape, (lo + hi) / 2, np.float32),
            np.random.default_rng(PROBE_SEED).uniform(lo, hi, shape),
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
    model, root: Path, contract, options, formats, probe_set, source_path, log
) -> Manifest:
    from edgetl.converters import FORMATS

    labels = list(options.labels)
    artifacts: list[ArtifactRecord] = []

    # The Keras model itself travels with the bundle: the reference for verify and for
    # layer-by-layer localization, and what the hash in the manifest is about.
    (root / "source").mkdir()
    model.save(root / SOURCE_MODEL)

    for fmt in formats:
        log(f"exporting {fmt} ...")
        try:
            artifacts += FORMATS.get(fmt).export(model, root, contract=contract, options=options)
        except UserError:
            raise
        except Exception as e:
            raise ExportError(f"{fmt} export failed: {type(e).__name__}: {e}") from e

    # Exit 0 must mean every file loads where it is meant to: each artifact is opened in its
    # own runtime and run on one image (edgetl.loadcheck); a failure removes the staged bundle.
    log("checking that every artifact loads in its runtime ...")
    started = time.perf_counter()
    x = probe_input(tuple(int(d) for d in model.inputs[0].shape[1:]), contract.value_range)
    load = check_artifacts_load(root, artifacts, x, len(labels))
    runtimes = ", ".join(sorted(set(load.loaded.values())))
    log(
        f"  {len(load.loaded)} artifact(s) loaded ({runtimes}) in {time.perf_counter() - started:.1f} s"
    )
    for artifact_id, why in load.unchecked.items():
        log(f"note: {artifact_id} not load-checked here ({why})")

    log("computing golden probes (float32, float64 and float16-weight references) ...")
    probes, noise, probe_coverage = make_probes(model, contract, *probe_set)
    if not probe_coverage["informative"]:
        log("warning: " + "; ".join(probe_coverage["problems"]))
    save_labels(root / LABELS_FILE, labels)
    manifest = Manifest(
        name=options.model_name,
        labels=labels,
        input=contract,
        artifacts=artifacts,
        source_model={  # the bundled file is what verify loads, so its hash is checked
            "file": SOURCE_MODEL,
            "size": (root / SOURCE_MODEL).stat().st_size,
            "sha256": sha256_file(root / SOURCE_MODEL),
            "original": source_path.name if source_path else None,
            "original_sha256": sha256_file(source_path) if source_path else None,
        },
        tools=tool_versions(),
        probes={**write_probes(root, probes), "noise": noise, "coverage": probe_coverage},
        output={"name": "probabilities", "shape": [None, len(labels)], "activation": "softmax"},
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    manifest.save(root)
    return manifest


def tool_versions() -> dict[str, str]:
    out = {}
    for pkg in TOOL_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    out["python"] = sys.version.split()[0]
    return out
