"""Export formats: one module per format, each exposing one exporter with one signature:

    export_<fmt>(model, out_dir, *, contract, options) -> list[ArtifactRecord]

It writes its files under `out_dir` (the bundle being built) and returns their records.
FORMATS is the single source of truth for format names (CLI choices, tests, bundle writer),
QUANTIZATIONS for the ONNX/TFLite variants beyond float32 (each names the formats that make
it); their descriptions are the --help text.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgetl.registry import Registry, UnknownNameError


@dataclass(frozen=True)
class Format:
    name: str
    module: str  # imported lazily: holds export_<name>
    description: str

    @property
    def export(self) -> Callable:
        """The format's exporter, export_<name> in its module."""
        return getattr(importlib.import_module(self.module), f"export_{self.name}")


@dataclass(frozen=True)
class ExportOptions:
    """What the exporters need beyond the model and its input contract (each reads its part)."""

    labels: tuple[str, ...]
    model_name: str = "model"
    quantizations: tuple[str, ...] = ()  # ONNX/TFLite variants beyond float32 (QUANTIZATIONS)
    calibration_images: np.ndarray | None = None  # int8: float32 (N, H, W, 3), contract range
    opset: int | None = None  # ONNX; None: converters.onnx.DEFAULT_OPSET
    nchw: bool = False  # ONNX input layout
    int8_io: str = "float32"  # int8 TFLite input/output dtype
    tfjs_graph: bool = False  # also a TF.js graph model
    tfjs_quantizations: tuple[str, ...] = ()  # TF.js Layers variants beyond float32

    def metadata(self, contract) -> dict:
        """Labels, input contract and name, as stored inside ONNX/TFLite files."""
        return {"labels": list(self.labels), "input": contract.to_dict(), "name": self.model_name}


@dataclass(frozen=True)
class Quantization:
    name: str
    description: str
    formats: tuple[str, ...] = ()  # the FORMATS that write this variant (QUANTIZATIONS only)
    # formats that write it only when named ("onnx:int8"), never for the bare name: a variant
    # not yet good enough on real models to be made by default
    named_only: tuple[str, ...] = ()

    def applies_to(self, fmt: str) -> bool:
        return fmt in self.formats

    def default_formats(self) -> tuple[str, ...]:
        """The formats a bare --quantize NAME writes."""
        return tuple(f for f in self.formats if f not in self.named_only)


FORMATS: Registry[Format] = Registry("format")
FORMATS.register(
    Format(
        "tfjs", "edgetl.converters.tfjs", "TF.js Layers model; a graph model too with --tfjs-graph"
    )
)
FORMATS.register(Format("onnx", "edgetl.converters.onnx", "ONNX via tf2onnx, NHWC or --nchw"))
FORMATS.register(
    Format("tflite", "edgetl.converters.tflite", "TFLite float32; variants with --quantize")
)

# ONNX and TFLite variants beyond float32 (which is always written); each exporter writes the
# ones that name its format (an ONNX float16 model computes in float16, TFLite's in float32).
QUANTIZATIONS: Registry[Quantization] = Registry("quantization")
QUANTIZATIONS.register(
    Quantization(
        "float16",
        "weights stored as float16 (TFLite computes float32, ONNX float16 with float32 "
        "input/output)",
        ("tflite", "onnx"),
    )
)
QUANTIZATIONS.register(
    Quantization("dynamic", "dynamic-range: int8 weights, float activations (TFLite)", ("tflite",))
)
QUANTIZATIONS.register(
    Quantization(
        "int8",
        "int8 weights and activations calibrated on images, sensitive ops in float (TFLite "
        "full integer; ONNX QDQ only as onnx:int8, experimental: 4.8%% on the accuracy bench's "
        "real model, which verify fails)",
        ("tflite", "onnx"),
        named_only=("onnx",),
    )
)


def split_quantization(entry: str) -> tuple[str | None, str]:
    """A --quantize entry: "int8" (every format that writes it) or "tflite:int8" (that format
    only) -> (format or None, QUANTIZATIONS name), both checked against the registries."""
    fmt, _, name = entry.strip().rpartition(":")
    quantization = QUANTIZATIONS.get(name)
    if fmt:
        FORMATS.get(fmt)
        if not quantization.applies_to(fmt):
            raise UnknownNameError(
                f"{fmt} has no {name} variant; {name} applies to "
                f"{' and '.join(quantization.formats)}"
            )
    return fmt or None, name


def parse_quantizations(text: str) -> list[str]:
    """--quantize's comma-separated entries (split_quantization), unknown ones refused."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise UnknownNameError(f"no quantization given; valid: {', '.join(QUANTIZATIONS.names())}")
    for e in entries:
        split_quantization(e)
    return list(dict.fromkeys(entries))  # each once, order kept (as Registry.parse_list)


def unwritten_quantization(entries, formats) -> str | None:
    """The refusal for a --quantize entry that none of `formats` writes, else None."""
    for e in entries:
        fmt, name = split_quantization(e)
        writers = [fmt] if fmt else list(QUANTIZATIONS.get(name).default_formats())
        if not any(f in formats for f in writers):
            return f"--quantize {e} applies to {' and '.join(writers)}; add it to --formats"
    return None


def quantizations_for(fmt: str, entries) -> list[str]:
    """The QUANTIZATIONS names that `fmt` writes for these --quantize entries, in order."""
    out = []
    for e in entries:
        only, name = split_quantization(e)
        writes = only == fmt or (only is None and fmt in QUANTIZATIONS.get(name).default_formats())
        if writes and name not in out:
            out.append(name)
    return out


# TF.js Layers variants beyond float32 (which is always written): weight shards stored smaller,
# dequantized to float32 by tf.loadLayersModel (compute stays float32). A registry of its own:
# "uint8" exists only here and "dynamic"/"int8" only for TFLite, so one --quantize list naming
# both would mean different things per format.
TFJS_QUANTIZATIONS: Registry[Quantization] = Registry("TF.js quantization")
TFJS_QUANTIZATIONS.register(
    Quantization("float16", "weight shards stored as float16 (half the download)")
)
TFJS_QUANTIZATIONS.register(
    Quantization(
        "uint8",
        "kernels as uint8 (affine per tensor, equalized per channel into the BatchNorm), "
        "depthwise and small tensors float16 (under 30 percent of the download)",
    )
)


def describe(registry: Registry) -> str:
    """'name (description), ...' for --help."""
    return ", ".join(f"{e.name} ({e.description})" for e in registry.values())
