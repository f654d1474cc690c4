"""pytest plugin (entry point `edgetl`): parity assertions for a project's own CI.

Kept import-light: pytest loads it in every session of every project that installs edgetl.
Helper B replaces this with the full implementation (assert_parity fixture)."""

from __future__ import annotations
