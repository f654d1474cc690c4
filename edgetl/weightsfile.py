"""`--weights FILE`: check the file before building, and explain a mismatch in one line.

Keras' own error for weights of another backbone or width (alpha) is a ValueError that lists
every layer (tens of KB). Here the file's arrays are counted and matched against a table of
the backbones' headless bases, measured with keras.applications (include_top=False; counts do
not depend on the input size), so the message can say what the weights are for.
"""

from __future__ import annotations

from pathlib import Path

from edgetl.errors import UserError

# backbone:alpha -> (number of weight arrays, number of values) of the headless keras base.
FINGERPRINTS: dict[str, tuple[int, int]] = {
    "mobilenet_v1:0.25": (135, 218544),
    "mobilenet_v1:0.5": (135, 829536),
    "mobilenet_v1:0.75": (135, 1832976),
    "mobilenet_v1:1.0": (135, 3228864),
    "mobilenet_v2:0.35": (260, 410208),
    "mobilenet_v2:0.5": (260, 706224),
    "mobilenet_v2:0.75": (260, 1382064),
    "mobilenet_v2:1.0": (260, 2257984),
    "mobilenet_v2:1.3": (260, 3766048),
    "mobilenet_v2:1.4": (260, 4363712),
    "mobilenet_v3_small:0.75": (206, 583160),
    "mobilenet_v3_small:1.0": (206, 939120),
    "mobilenet_v3_large:0.75": (262, 1808736),
    "mobilenet_v3_large:1.0": (262, 2996352),
}


def _is_file_weights(weights) -> bool:
    return weights is not None and str(weights).lower() not in ("", "none", "imagenet")


def check_weights_file(weights, backbone: str | None = None, alpha: float | None = None) -> None:
    """A local weights file must exist and be a readable HDF5 file (Keras' weights format);
    with backbone/alpha, a file recognised as another backbone's is refused before building."""
    if not _is_file_weights(weights):
        return
    p = Path(weights).expanduser()
    if not p.exists():
        raise UserError(
            f"--weights {weights}: the file does not exist; use 'imagenet', 'none' or a path to a "
            ".h5 / .weights.h5 file"
        )
    if not p.is_file():
        raise UserError(f"--weights {weights}: not a file")
    import h5py

    try:
        with h5py.File(p, "r"):
            pass
    except OSError as e:
        raise UserError(
            f"--weights {weights}: not a readable Keras weights file (HDF5): the file is "
            f"corrupt, truncated or of another format ({str(e).splitlines()[0][:200]})"
        ) from None
    if backbone is not None and alpha is not None:
        want = f"{backbone} alpha {float(alpha):g}"
        found = identify(p)
        if found and want not in found:
            raise UserError(
                f"--weights {weights}: these weights are for {' or '.join(found)}, not {want}. "
                "Pass the matching --backbone/--alpha, or weights made for this backbone."
            )


def fingerprint(path: Path) -> tuple[int, int]:
    """(number of arrays, number of values) stored in an HDF5 weights file."""
    import h5py
    import numpy as np

    counts = [0, 0]

    def visit(_name, obj):
        if isinstance(obj, h5py.Dataset) and obj.shape:
            counts[0] += 1
            counts[1] += int(np.prod(obj.shape))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return counts[0], counts[1]


def identify(path: Path) -> list[str]:
    """The backbones (name alpha A) whose headless base has exactly this file's arrays."""
    try:
        fp = fingerprint(path)
    except (OSError, ValueError):
        return []
    names = [k.split(":") for k, v in FINGERPRINTS.items() if v == fp]
    return [f"{name} alpha {float(a):g}" for name, a in names]


def explain_weights_error(weights, backbone: str, alpha: float, error: Exception) -> str:
    """One actionable line for a weights file that does not load into backbone/alpha."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    if not _is_file_weights(weights):
        return f"cannot build {backbone} alpha {alpha}: {type(error).__name__}: {first}"
    want = f"{backbone} alpha {alpha:g}"
    found = identify(Path(weights))
    if found and want not in found:
        return (
            f"--weights {weights}: these weights are for {' or '.join(found)}, not {want}. "
            "Pass the matching --backbone/--alpha, or weights made for this backbone."
        )
    try:
        n, values = fingerprint(Path(weights))
        have = f" (the file holds {n} arrays, {values:,} values"
        if f"{backbone}:{float(alpha)}" in FINGERPRINTS:
            wn, wv = FINGERPRINTS[f"{backbone}:{float(alpha)}"]
            have += f"; {want} needs {wn} arrays, {wv:,} values"
        have += ")"
    except (OSError, ValueError):
        have = ""
    return (
        f"--weights {weights}: these weights do not fit {want}{have}. They may be for "
        f"another architecture or width, or a whole model rather than a headless base "
        f"({type(error).__name__}: {first})"
    )
