"""Backbone registry: the single source of truth for which MobileNets edgetl builds.

One file per backbone family registers its names here; tests parametrize over `BACKBONES`.
"""

from __future__ import annotations

# Importing the family modules registers them.
from edgetl.models import mobilenet_v1, mobilenet_v2, mobilenet_v3  # noqa: F401
from edgetl.models.base import BACKBONES, Backbone, BackboneConfigError, build_backbone, resolve

__all__ = ["BACKBONES", "Backbone", "BackboneConfigError", "build_backbone", "resolve"]
