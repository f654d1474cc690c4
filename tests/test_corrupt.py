"""edgetl.corrupt on a real bundle: every corruption really changes what its artifacts output on
the probes (run before and after on the real runtimes, no mocks), and leaves the bundle's
sha256 records honest, so verify's integrity check passes and only parity can catch it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import runtime_for

from edgetl import corrupt


@pytest.fixture(scope="module")
def source_bundle(tmp_path_factory, tiny_run) -> tuple[Path, Path]:
    """tiny_run as TF.js Layers, ONNX, TFLite float32 and int8, probes drawn from 128 px images
    (bilinear to 96 px, so the antialias fault has something to shrink). (bundle, data dir)."""
    from edgetl.bundle import export_from_source
    from edgetl.sample_data import make_sample_dataset

    root = tmp_path_factory.mktemp("corrupt")
    data = make_sample_dataset(root / "data128", per_class=4, size=128)
    bundle = root / "bundle"
    export_from_source(
        tiny_run,
        bundle,
        data_dir=data,
        sample_limit=12,
        quantizations=["tflite:int8"],
        model_name="model",
        log=lambda *_: None,
    )
    return bundle, data


def _outputs(bundle: Path, ids: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each artifact's outputs on the bundle's probes, from its real runtime."""
    from edgetl.manifest import Manifest, read_probes
    from edgetl.runtimes.base import RUNTIMES, Artifact, load_runtimes

    load_runtimes()
    manifest = Manifest.load(bundle)
    x = read_probes(bundle, manifest).inputs
    out = {}
    for a in manifest.artifacts:
        if a.id not in ids:
            continue
        rt = RUNTIMES.get(runtime_for(a.format))
        if rt.unavailable_reason() is not None:
            continue  # TF.js without Node: the other formats still prove the change
        out[a.id] = rt.run(Artifact(a, bundle), x)["probabilities"]
    return out, x


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in corrupt.CORRUPTIONS])
def test_corruption_changes_outputs_and_keeps_hashes_honest(name, source_bundle, tmp_path):
    from edgetl.manifest import BundleError, Manifest, check_integrity

    bundle, data = source_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    c = corrupt.BY_NAME[name]
    ids = [a.id for a in Manifest.load(copy).artifacts if c.applies_to(a)]
    before, x_before = _outputs(copy, ids)
    assert before, f"{name}: no runtime here runs any of {ids}"

    details = corrupt.apply(name, copy, data_dir=data)

    assert set(details) == set(ids)
    manifest = Manifest.load(copy)
    check_integrity(copy, manifest)  # every recorded sha256 matches the new bytes
    after, x_after = _outputs(copy, ids)
    assert after.keys() == before.keys()
    for a in before:
        change = float(np.abs(after[a] - before[a]).max())
        assert change > 1e-5, f"{name} left {a}'s outputs unchanged ({change:.1e}): {details[a]}"
    if c.scope == "inputs":
        assert not np.array_equal(x_before, x_after)
    else:
        assert np.array_equal(x_before, x_after)  # the probes themselves are untouched
    # ... and the honest bundle was never touched: its hashes still hold.
    check_integrity(bundle, Manifest.load(bundle))
    with pytest.raises(BundleError):  # the copy's files no longer match the honest manifest
        changed = next(a for a in manifest.artifacts if a.id in ids)
        shutil.copyfile(bundle / "manifest.json", copy / "manifest.json")
        if c.scope == "inputs":
            check_integrity(copy, Manifest.load(copy), [])
        else:
            check_integrity(copy, Manifest.load(copy), [changed.id])


def test_every_corruption_says_what_it_emulates():
    assert len(corrupt.BY_NAME) == len(corrupt.CORRUPTIONS)
    for c in corrupt.CORRUPTIONS:
        assert c.emulates and c.scope in ("weights", "model", "inputs"), c.name
        assert c.formats and c.precisions, c.name
