"""Large models (issue 20, defect 8): each converter runs in a process of its own so their
leftovers do not add up (the peak RSS on Xception is measured by scripts/xception_memory.py,
quoted in the README, not here). Here: the isolated path writes a bundle that verifies."""

from __future__ import annotations

import pytest

from edgetl import bundle as bundle_module
from edgetl.verifier import verify


@pytest.mark.slow
def test_converters_in_their_own_process_write_a_bundle_that_verifies(tmp_path, monkeypatch):
    import keras

    from edgetl.contract import InputContract

    keras.utils.set_random_seed(0)
    inp = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inp))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))
    monkeypatch.setattr(bundle_module, "ISOLATE_PARAMS", 0)  # every model counts as large
    said: list[str] = []
    out = tmp_path / "b"
    manifest = bundle_module.export_bundle(
        model, out, labels=["a", "b"], contract=InputContract(24, 24), formats=["onnx", "tflite"],
        log=said.append,
    )  # fmt: skip
    assert "exporting onnx (own process) ..." in said
    assert {a.id for a in manifest.artifacts} == {"onnx", "tflite_float32"}
    result = verify(out, runtimes=["onnxruntime-cpu", "litert"], localize_failures=False)
    assert result.ok, result.summary()
