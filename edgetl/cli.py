"""`edgetl` command line. Each sub-command lives in its own module exposing
`add_arguments(parser)` and `run(args) -> int`; they are imported only when chosen, so
`edgetl --help` never imports TensorFlow.

What a user reads on stderr is edgetl's own words plus real warnings: TensorFlow's C++ start-up
lines (CUDA factory registration, XLA's computation placer, absl's pre-init notice) are
silenced unless TF_CPP_MIN_LOG_LEVEL is set by the user. Errors a user can fix are one line
and exit 2; SIGTERM (and SIGHUP) are handled like Ctrl-C, so partial outputs are removed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
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
# Commands that load TensorFlow: it is imported up front for them, quietly.
TF_COMMANDS = {"train", "export", "verify", "demo"}


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP, raised like Ctrl-C so every cleanup path (partial outputs) runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, but not 'default: None' and not twice where the text says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "default" in text or action.default in (None, False, []):
            return text
        if action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


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
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Formatter)
        if name == command:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser


def quiet_tensorflow() -> None:
    """Set TensorFlow's log level (unless the user did) and import it with fd 2 silenced: its
    C++ start-up lines are written before any Python setting can apply. What an import error
    wrote is replayed."""
    user_level = "TF_CPP_MIN_LOG_LEVEL" in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if user_level or "tensorflow" in sys.modules:
        return
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    import logging

    for name in ("tensorflow", "absl", "tf2onnx", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    from edgetl.argtypes import join_negative_lists

    argv = join_negative_lists(list(sys.argv[1:] if argv is None else argv))
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

    prog = f"edgetl {args.command}"
    handlers = {}
    if threading_main():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, _raise_terminated)
    try:
        if args.command in TF_COMMANDS:
            quiet_tensorflow()
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except (UserError, BundleError, UnknownNameError, BackboneConfigError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Terminated as e:
        print(f"{prog}: stopped by {e}; nothing half-written is left", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing half-written is left", file=sys.stderr)
        return 130
    except OSError as e:  # a file system refusal the checks did not foresee: still a message
        where = f": {e.filename}" if e.filename else ""
        print(f"{prog}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
