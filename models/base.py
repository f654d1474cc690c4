"""What a backbone is, and how a (name, alpha, size, weights) request is checked and built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.registry import Registry


class BackboneConfigError(ValueError):
    """An unsupported backbone/alpha/size/weights combination, refused before anything is built."""


@dataclass(frozen=True)
class Backbone:
    name: str
    keras_name: str  # the keras.applications constructor
    alphas: tuple[float, ...]
    sizes: tuple[int, ...]
    # Builds the headless base for a 0..255 RGB input; returns the keras Model of features
    # (N, h, w, C). `weights` is "imagenet", None or a path to a weights file.
    build: Callable[..., Any]
    # Human description of the scaling the model applies inside (recorded in the contract).
    internal_preprocessing: str = "x / 127.5 - 1"
    default_alpha: float = 1.0
    default_size: int = 224

    def check(self, alpha: float, size: int) -> None:
        if alpha not in self.alphas:
            raise BackboneConfigError(
                f"{self.name} does not support alpha={alpha}; valid alphas: "
                f"{', '.join(str(a) for a in self.alphas)}"
            )
        if size not in self.sizes:
            raise BackboneConfigError(
                f"{self.name} does not support input size {size}; valid sizes: "
                f"{', '.join(str(s) for s in self.sizes)}"
            )


BACKBONES: Registry[Backbone] = Registry("backbone")


def resolve(name: str, alpha: float | None = None, size: int | None = None) -> tuple[Backbone, float, int]:
    """Check a request and fill in defaults; raises BackboneConfigError listing valid values."""
    try:
        bb = BACKBONES.get(name)
    except ValueError as e:
        raise BackboneConfigError(str(e)) from None
    alpha = bb.default_alpha if alpha is None else float(alpha)
    size = bb.default_size if size is None else int(size)
    bb.check(alpha, size)
    return bb, alpha, size


def check_weights(weights: str | Path | None) -> str | None:
    """Return the keras `weights` argument: 'imagenet', None, or an existing file path."""
    if weights is None or str(weights).lower() in ("none", ""):
        return None
    if str(weights) == "imagenet":
        return "imagenet"
    p = Path(weights).expanduser()
    if not p.is_file():
        raise BackboneConfigError(
            f"weights file {str(p)!r} does not exist; use 'imagenet', 'none' or a path to a "
            ".h5/.weights.h5 file"
        )
    return str(p)


def build_backbone(name: str, alpha: float | None = None, size: int | None = None,
                   weights: str | Path | None = "imagenet"):
    """Build the frozen-able base: input 0..255 RGB (N, size, size, 3) -> feature map."""
    bb, alpha, size = resolve(name, alpha, size)
    w = check_weights(weights)
    return bb.build(alpha=alpha, size=size, weights=w)


