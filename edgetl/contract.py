"""The input contract: what every exported artifact expects, recorded with the model.

Preprocessing (scaling to the backbone's range) lives inside the model, so all formats take the
same thing: RGB pixel values 0..255 as float32 NHWC, resized to (height, width) with `resize`.

A 1-channel (grayscale) model a user brings takes one channel, made from RGB by GRAY_WEIGHTS
(ITU-R BT.601 luma, PIL's convert("L") without its rounding to integers): Python, the probes,
Node and the browser page all convert the same way, after the resize (both are linear, so the
order does not matter beyond float rounding).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

CONTRACT_FILE = "contract.json"
GRAY = "gray"
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma: gray = 0.299 R + 0.587 G + 0.114 B
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class InputContract:
    height: int
    width: int
    channels: int = 3
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 255.0)
    layout: str = "NHWC"
    channel_order: str = "RGB"
    # Resize the whole image to (height, width) with this filter; no crop. The browser uses
    # the same bilinear resize (tf.image.resizeBilinear, half_pixel_centers) as Python.
    resize_method: str = "bilinear"
    # What the model does inside with those pixels (documentation for other runtimes' users).
    internal_preprocessing: str = field(default="")
    # 1 channel: gray = sum(gray_weights * (R, G, B)), the one rule every runtime applies
    gray_weights: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"input size must be positive, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            raise ValueError(
                f"edgetl models take 3-channel RGB or 1-channel gray input, not {self.channels}"
            )
        if self.channels == 1 and (self.channel_order != GRAY or self.gray_weights is None):
            raise ValueError("a 1-channel contract needs channel_order 'gray' and gray_weights")
        if self.channels == 3 and self.channel_order not in ("RGB", "BGR"):
            raise ValueError(
                f"a 3-channel contract needs channel_order RGB or BGR, not {self.channel_order!r}"
            )
        if self.layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout must be NHWC or NCHW, got {self.layout!r}")

    @property
    def shape(self) -> list[int | None]:
        if self.layout == "NCHW":
            return [None, self.channels, self.height, self.width]
        return [None, self.height, self.width, self.channels]

    @classmethod
    def for_channels(cls, channels: int, **kw) -> InputContract:
        """A contract for a model with `channels` inputs (1: gray by GRAY_WEIGHTS, 3: RGB)."""
        if channels == 1:
            return cls(channels=1, channel_order=GRAY, gray_weights=GRAY_WEIGHTS, **kw)
        return cls(channels=channels, **kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["value_range"] = list(self.value_range)
        d["shape"] = self.shape
        if self.gray_weights is None:
            d.pop("gray_weights")
        else:
            d["gray_weights"] = list(self.gray_weights)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> InputContract:
        keys = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in keys}
        if "value_range" in kw:
            kw["value_range"] = tuple(float(x) for x in kw["value_range"])
        if kw.get("gray_weights") is not None:
            kw["gray_weights"] = tuple(float(x) for x in kw["gray_weights"])
        return cls(**kw)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> InputContract:
        return cls.from_dict(json.loads(Path(path).read_text()))


def save_labels(path: Path, labels: list[str]) -> None:
    Path(path).write_text(json.dumps(list(labels), indent=2, ensure_ascii=False) + "\n")


def load_labels(path: Path) -> list[str]:
    labels = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path}: labels must be a JSON list of strings")
    return labels
