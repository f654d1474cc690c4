"""`edgetl` command line. Each sub-command lives in its own module exposing
`add_arguments(parser)` and `run(args) -> int`; they are imported only when chosen, so
`edgetl --help` never imports TensorFlow."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": (
        "edgetl.train",
        "fine-tune a MobileNet head on a folder of images (one sub-folder per class)",
    ),
    "export": (
        "edgetl.bundle",
        "export a Keras model to a bundle: TF.js, ONNX, TFLite + manifest + probes",
    ),
    "verify": (
        "edgetl.verifier",
        "prove every artifact of a bundle agrees with the original model",
    ),
    "serve": ("edgetl.serve", "serve the web app and a bundle on localhost"),
    "demo": ("edgetl.demo", "run the whole job on the bundled sample data set"),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    from edgetl import __version__

    parser = argparse.ArgumentParser(
        prog="edgetl",
        description="Transfer learning on MobileNet, export to TF.js / ONNX / TFLite, and strict "
        "parity checks of every artifact.",
    )
    parser.add_argument("--version", action="version", version=f"edgetl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from edgetl.errors import UserError
    from edgetl.manifest import BundleError
    from edgetl.models.base import BackboneConfigError
    from edgetl.registry import UnknownNameError

    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except (UserError, BundleError, UnknownNameError, BackboneConfigError) as e:
        print(f"edgetl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
