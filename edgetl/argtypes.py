"""argparse types that check numbers at parse time, so a bad value is a usage message (exit 2)
naming the allowed range, never a traceback from deep inside training."""

from __future__ import annotations

import argparse
import math
import re


def _fmt(v: float) -> str:
    return f"{v:g}"


def bounded(
    kind: type, lo: float | None = None, hi: float | None = None, *, lo_open=False, hi_open=False
):
    """An argparse `type` accepting `kind` (int or float) values in [lo, hi] (open where asked);
    NaN and infinities are refused. The returned callable's `range_text` is for --help."""

    def describe() -> str:
        if lo is not None and hi is not None:
            return f"{'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
        if lo is not None:
            return f"{'>' if lo_open else '>='} {_fmt(lo)}"
        if hi is not None:
            return f"{'<' if hi_open else '<='} {_fmt(hi)}"
        return "any finite number"

    def _in() -> str:
        return f"in {describe()}" if lo is not None and hi is not None else describe()

    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number {_in()}, got {text!r}")
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        too_high = hi is not None and (value >= hi if hi_open else value > hi)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {_in()}, got {text}")
        return value

    parse.__name__ = kind.__name__
    parse.range_text = describe()  # type: ignore[attr-defined]
    return parse


def add_number(
    p: argparse.ArgumentParser,
    *flags: str,
    kind: type,
    lo=None,
    hi=None,
    help: str = "",
    lo_open=False,
    hi_open=False,
    **kw,
) -> None:
    """add_argument for a number with its allowed range and default written into --help."""
    t = bounded(kind, lo, hi, lo_open=lo_open, hi_open=hi_open)
    text = f"{help} " if help else ""
    text += f"(range {t.range_text}"
    text += "; default: %(default)s)" if "default" in kw else ")"
    p.add_argument(*flags, type=t, help=text, **kw)


# "-1,1", "-0.5,0.5", "-1e-3,2": a comma-separated list of numbers that starts with a minus sign,
# which argparse would otherwise take for an option (its own negative-number rule only covers
# a single number).
_NEGATIVE_LIST = re.compile(
    r"^-\d*\.?\d+(?:[eE][-+]?\d+)?(?:\s*,\s*[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)+$"
)


def join_negative_lists(argv: list[str]) -> list[str]:
    """`--opt -1,1` -> `--opt=-1,1`, so a value range can be written the way --help shows it."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if (
            a.startswith("--")
            and "=" not in a
            and i + 1 < len(argv)
            and _NEGATIVE_LIST.match(argv[i + 1])
        ):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out
