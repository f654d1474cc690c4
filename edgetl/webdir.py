"""Where the repository's web/ folder is (the JS app, the TF.js harnesses, node_modules).

A module of its own because both the server (edgetl.serve) and the TF.js runtimes need it, and
they must not import each other for it."""

from __future__ import annotations

from pathlib import Path


def web_dir() -> Path:
    """The repo's web/ folder (JS app + TF.js harness); node_modules lives there."""
    return Path(__file__).resolve().parents[1] / "web"
