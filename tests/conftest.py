"""Shared, session-scoped fixtures: the sample data, locally made backbone weights, a trained
tiny run and its bundle. Everything is small (MobileNetV2 alpha 0.35 at 96 px) and real.

Per-backbone tests iterate the registries (edgetl.models BACKBONES with each backbone's own
`small` configuration, RUNTIMES filtered by flags), so a new entry is tested without editing a
test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY = ("mobilenet_v2", 0.35, 96)
# The smallest alpha/size keras offers per backbone: what the per-backbone tests build.
# The test models have locally made random weights, under which post-training int8 flips some
# borderline probes (measured: top-1 kept on 8 of 9 decisive probes of the tiny bundle, error
# growing smoothly through the network); with ImageNet weights int8 keeps top-1. Tests that need
# a clean pass loosen only that rule, explicitly; the TFLITE_INT8 rule itself is tested on
# crafted arrays in test_parity.py. Wrong quantization scales would give ~33% here.
RANDOM_WEIGHTS_INT8 = ("tflite_int8:min_top1=0.75",)


def small_backbones() -> dict[str, tuple[float, int]]:
    """Every registered backbone -> the (alpha, size) it registered for tests (Backbone.small)."""
    from edgetl.models import BACKBONES

    return {bb.name: bb.small for bb in BACKBONES.values()}


def cpu_runtimes(**flags) -> list[str]:
    """Registered CPU runtimes whose flags match, e.g. the fast in-process ones that see every
    --data image: cpu_runtimes(data_sample=None)."""
    from edgetl.runtimes.base import load_runtimes

    return load_runtimes().select(gpu=False, **flags)


def runtime_for(fmt: str) -> str:
    """The fastest registered CPU runtime off the browser that runs `fmt` artifacts: one that
    sees every --data image (data_sample None) before one that sees a larger sample."""
    from edgetl.runtimes.base import load_runtimes

    rts = load_runtimes()
    names = [n for n in cpu_runtimes(same_thread=False) if fmt in rts.get(n).formats]
    return min(names, key=lambda n: -(rts.get(n).data_sample or float("inf")))


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    from edgetl.sample_data import make_sample_dataset

    return make_sample_dataset(tmp_path_factory.mktemp("data") / "shapes", per_class=16, size=96)


@pytest.fixture(scope="session")
def local_weights(tmp_path_factory, sample_data):
    """backbone name -> a weights file made here (no download), at the backbone's small size."""
    from edgetl.models.base import make_local_weights

    from edgetl.data import load_images, scan_image_folder

    folder = scan_image_folder(sample_data)
    root = tmp_path_factory.mktemp("weights")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            alpha, size = small_backbones()[name]
            images = load_images(folder.files[::2], size, size)
            made[name] = make_local_weights(name, alpha, size, images, root / f"{name}.weights.h5")
        return made[name]

    return get


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("edgetl-cache")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, sample_data, local_weights, cache_dir) -> Path:
    """A trained MobileNetV2 0.35/96 run directory (edgetl train output)."""
    from edgetl.train import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    name, alpha, size = TINY
    train(
        sample_data,
        run_dir,
        TrainConfig(
            backbone=name,
            alpha=alpha,
            size=size,
            weights=str(local_weights(name)),
            epochs=30,
            cache_dir=str(cache_dir),
        ),
        progress=False,
    )
    return run_dir


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_run, sample_data) -> Path:
    """tiny_run exported to every format and TFLite variant, probes from the sample data."""
    from edgetl.bundle import export_from_source

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    export_from_source(
        tiny_run,
        out,
        data_dir=sample_data,
        sample_limit=24,
        # TFLite's variants (ONNX's have their own module-scoped bundle, test_onnx_quantize.py)
        quantizations=["tflite:float16", "dynamic", "tflite:int8"],
        model_name="tiny",
        log=lambda *_: None,
    )
    return out
