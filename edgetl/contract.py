"""The input contract: what every exported artifact expects, recorded with the model.

Preprocessing (scaling to the backbone's range) lives inside the model, so all formats take the
same thing: RGB pixel values 0..255 as float32 NHWC, resized to (height, width) with `resize`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

CONTRACT_FILE = "contract.json"
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

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"input size must be positive, got {self.height}x{self.width}")
        if self.channels != 3:
            raise ValueError("edgetl models take 3-channel RGB input")
        if self.layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout must be NHWC or NCHW, got {self.layout!r}")

    @property
    def shape(self) -> list[int | None]:
        if self.layout == "NCHW":
            return [None, self.channels, self.height, self.width]
        return [None, self.height, self.width, self.channels]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["value_range"] = list(self.value_range)
        d["shape"] = self.shape
        return d

    @classmethod
    def from_dict(cls, d: dict) -> InputContract:
        keys = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in keys}
        if "value_range" in kw:
            kw["value_range"] = tuple(float(x) for x in kw["value_range"])
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
