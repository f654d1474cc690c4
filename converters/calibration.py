"""What the int8 exporters share (TFLite and ONNX): which calibration images calibrate and which
are held out, and how the held-out ones choose among int8 candidates.

An int8 candidate is one choice of activation ranges (each tensor's min/max over the images,
or its typical range: the mean over the images of each image's own min and max) and one set of
ops kept in float (those whose own int8 error exceeds a threshold, in quantization steps). The
candidates are compared on images they were not calibrated on, against the float model:

* thresholds are tried from the highest (fewest float ops, smallest file) down;
* at each threshold the ranges whose outputs are closer to float (mean absolute error) win;
* the first winner that keeps top-1 on at least TARGET_TOP1 of the held-out images that float
  classifies decisively is taken; if none does, the one that keeps the most.

Why held out: ranges fitted to the images they are then judged on favour themselves. Chosen on
the calibration images, typical ranges won on the accuracy bench's real model and min/max on
the parity bench's data-fitted MobileNetV2 0.35/96, whose int8 then still flipped 4 of 16
decisive probes (verify needs 90%): its ops' own errors sit at the int8 noise floor (0.3 step)
but add up over the network, so only more float ops (threshold 0.3) kept its top-1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

HELD_OUT_EVERY = 4  # every 4th calibration image is held out ...
MIN_HELD_OUT = 6  # ... when that leaves at least this many (else all images do both jobs)
# Ops kept in float: own int8 error above 0.5 step first (the accuracy bench's choice, see
# converters/tflite.py), lower only when the held-out images need it. 0.3 is about the noise of
# int8 rounding itself (1/sqrt(12) = 0.29 step): below it every op would qualify.
FLOAT_ABOVE = (0.5, 0.4, 0.3)
TARGET_TOP1 = 0.98  # share of decisive held-out images whose top-1 must stay the float model's
DECISIVE_MARGIN = 0.2  # verify's int8 rule (tolerances.TFLITE_INT8.top1_margin)
RANGES = ("typical", "min/max")


@dataclass(frozen=True)
class Candidate:
    """One int8 model and how it did on the held-out images."""

    ranges: str  # "typical" | "min/max"
    float_above: float  # threshold in quantization steps
    float_ops: tuple[str, ...]
    model: bytes
    top1: float  # share of decisive held-out images whose top-1 is float's
    error: float  # mean absolute error against float on the held-out images

    def describe(self) -> dict:
        return {
            "ranges": self.ranges,
            "float_above_steps": self.float_above,
            "float_ops": len(self.float_ops),
            "held_out_top1": round(self.top1, 4),
            "held_out_mean_abs_error": round(self.error, 6),
        }


def split_held_out(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(images to calibrate on, held-out images): every HELD_OUT_EVERY-th image is held out
    when that gives at least MIN_HELD_OUT of them; else all images do both jobs."""
    held = np.arange(len(images)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    if held.sum() < MIN_HELD_OUT:
        return images, images
    return images[~held], images[held]


def agreement(reference: np.ndarray, outputs: np.ndarray) -> tuple[float, float]:
    """(top-1 kept on the decisive reference rows, or on all when none is decisive; mean
    absolute error)."""
    top = np.sort(reference, axis=1)
    margin = top[:, -1] - top[:, -2] if reference.shape[1] > 1 else np.full(len(reference), 1.0)
    rows = margin >= DECISIVE_MARGIN
    if not rows.any():
        rows = np.ones(len(reference), bool)
    kept = reference[rows].argmax(1) == outputs[rows].argmax(1)
    return float(kept.mean()), float(np.mean(np.abs(outputs - reference)))


def above(errors: dict[str, float], threshold: float) -> tuple[str, ...]:
    """The ops (names) whose own error, in quantization steps, exceeds `threshold`."""
    return tuple(sorted(name for name, steps in errors.items() if steps > threshold))


def choose(
    errors: Callable[[str], dict[str, float]],
    build: Callable[[str, tuple[str, ...]], bytes],
    run: Callable[[bytes], np.ndarray],
    reference: np.ndarray,
    thresholds: Iterable[float] = FLOAT_ABOVE,
) -> Candidate:
    """The int8 candidate to ship (see the module docstring). `errors(ranges)`: each op's own
    int8 error in steps under those ranges; `build(ranges, float_ops)`: the int8 model; `run`:
    its outputs on the held-out images; `reference`: float's outputs on them."""
    built: dict[tuple[str, tuple[str, ...]], Candidate] = {}
    best: Candidate | None = None
    op_errors = {r: errors(r) for r in RANGES}
    for threshold in thresholds:
        here = []
        for ranges in RANGES:
            ops = above(op_errors[ranges], threshold)
            if (ranges, ops) not in built:
                model = build(ranges, ops)
                top1, err = agreement(reference, run(model))
                built[(ranges, ops)] = Candidate(ranges, threshold, ops, model, top1, err)
            here.append(built[(ranges, ops)])
        winner = min(here, key=lambda c: c.error)
        if winner.top1 >= TARGET_TOP1:
            return winner
        if best is None or (winner.top1, -winner.error) > (best.top1, -best.error):
            best = winner
    assert best is not None, "no threshold given"
    return best
