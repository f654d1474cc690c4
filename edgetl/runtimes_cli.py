"""`edgetl runtimes`: which parity runtimes run on this machine, and for the others why not and
what to install. Reads the RUNTIMES registry (each runtime's unavailable_reason(), which loads
no model), so it takes about a second."""

from __future__ import annotations

import argparse
import importlib

from edgetl.report import text_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--available", action="store_true", help="list only the runtimes that run here")


def run(args: argparse.Namespace) -> int:
    from edgetl.runtimes.base import RUNTIME_MODULES, RUNTIMES, describe

    broken = {}
    for mod in RUNTIME_MODULES:
        try:
            importlib.import_module(mod)
        except Exception as e:  # a runtime module whose own import fails: say which and why
            broken[mod] = f"{type(e).__name__}: {e}"
    rows = []
    for name, rt in RUNTIMES.items():
        reason = rt.unavailable_reason()
        if args.available and reason is not None:
            continue
        formats = ", ".join(sorted(rt.formats))
        rows.append([name, "yes" if reason is None else "no", formats, describe(rt)])
        if reason is not None:
            rows.append(["", "", "", f"why not: {reason}"])
    print("\n".join(text_table(["runtime", "here", "formats", "what it is"], rows)))
    for mod, why in broken.items():
        print(f"module {mod} failed to import: {why}")
    n = sum(1 for r in rows if r[1] == "yes")
    print(f"{n} of {len(RUNTIMES.names())} runtimes available here")
    return 0
