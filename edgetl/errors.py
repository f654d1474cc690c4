"""User-facing errors: the CLI prints these as one clear message (no traceback) and exits 2."""


class UserError(Exception):
    """A mistake in what the user asked for or gave us (paths, names, data)."""


class ParityError(AssertionError):
    """An artifact disagrees with its reference beyond tolerance."""
