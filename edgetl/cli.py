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
import contextlib
import importlib
import logging
import os
import re
import signal
import sys

COMMANDS = {
    "train": (
        "edgetl.train",
        "fine-tune a MobileNet head on a folder of images (one sub-folder per class)",
    ),
    "export": (
        "edgetl.export_cli",
        "export a Keras model to a bundle: TF.js, ONNX, TFLite + manifest + probes",
    ),
    "verify": (
        "edgetl.verifier",
        "prove every artifact (a bundle, or your own files with --reference) agrees with "
        "the original model",
    ),
    "runtimes": (
        "edgetl.runtimes_cli",
        "list the parity runtimes: which run on this machine, and for the others what to install",
    ),
    "serve": ("edgetl.serve", "serve the web app and a bundle on localhost"),
    "demo": ("edgetl.demo", "run the whole job on the bundled sample data set"),
}
# Commands that load TensorFlow: their stderr goes through StderrFilter.
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


# Lines TensorFlow, XLA, absl and the TFLite converter write to fd 2 that tell a user nothing:
# C++ INFO/WARNING records, the known start-up errors of CUDA plugin registration on a machine
# without a GPU, absl's pre-init notice and the int8 calibrator's settings line.
NOISE = re.compile(
    r"^(?:"
    r"[IW]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w./-]+:\d+\] .*"
    r"|E\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w./-]+:\d+\] (?:Unable to register|failed call to cuInit).*"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] .*"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: E \S+\] (?:Unable to register|failed call to cuInit).*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|fully_quantize: \d+, inference_type: .*"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    r")$"
)
# A line that may still turn out to be noise is held until it ends; anything else (our words,
# progress bars on a terminal) passes at once. A partial line shorter than _HOLD_BELOW is held
# too: a pipe read can end inside a noise line's first characters ("INFO: C"), before the
# prefix that marks it (it did: one XNNPACK line reached the demo's stderr).
_MAYBE_NOISE = re.compile(r"^(?:[IWE]\d|\d{4}-|WARNING: All|fully_q|INFO: Cr)")
_HOLD_BELOW = 16


class StderrFilter:
    """While active, fd 2 goes through a pipe and a thread that drops NOISE lines and passes the
    rest on. Works for C++ libraries and child processes as well as Python. Off when the user
    set TF_CPP_MIN_LOG_LEVEL (they asked for TensorFlow's logs)."""

    def __init__(self) -> None:
        self.saved: int | None = None
        self.thread = None

    def __enter__(self):
        from edgetl import USER_TF_LOG_LEVEL, data

        data.STDERR_IS_TTY = data.show_progress()  # decided on the real stderr, not the pipe
        if USER_TF_LOG_LEVEL:
            return self
        try:
            sys.stderr.flush()
            self.saved = os.dup(2)
            r, w = os.pipe()
            os.dup2(w, 2)
            os.close(w)
        except (OSError, ValueError, AttributeError):
            self.saved = None
            return self
        import threading

        self.thread = threading.Thread(target=self._pump, args=(r, self.saved), daemon=True)
        self.thread.start()
        return self

    @staticmethod
    def _pump(r: int, out: int) -> None:
        buf = b""
        try:
            while True:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                keep = [ln + b"\n" for ln in lines if not NOISE.match(ln.decode(errors="replace"))]
                text = buf.decode(errors="replace")
                if len(buf) >= _HOLD_BELOW and not _MAYBE_NOISE.match(text):
                    keep.append(buf)
                    buf = b""
                if keep:
                    os.write(out, b"".join(keep))
            if buf and not NOISE.match(buf.decode(errors="replace")):
                os.write(out, buf)
        except OSError:
            pass
        finally:
            os.close(r)

    def __exit__(self, *exc) -> None:
        if self.saved is None:
            return
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(self.saved, 2)  # closes the pipe's last write end held by this process
        if self.thread is not None:
            self.thread.join(timeout=5)
        os.close(self.saved)
        self.saved = None


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


def _redeliver_swallowed_interrupts(previous):
    """A signal's exception raised inside a __del__ or a callback is swallowed by Python
    ("Exception ignored in ...") and the work would go on; send the signal again instead, so it
    lands in ordinary code and the run stops (and cleans up) as asked."""

    import threading

    def hook(unraisable) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, KeyboardInterrupt):
            signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
            # From another thread, a moment later: not inside this hook, where it would be
            # swallowed again.
            timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
        else:
            previous(unraisable)

    return hook


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
    previous_hook = sys.unraisablehook
    if threading_main():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, _raise_terminated)
        sys.unraisablehook = _redeliver_swallowed_interrupts(previous_hook)
    try:
        if args.command not in TF_COMMANDS:
            return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
        # TensorFlow's Python logger warns about tf.function retracing on every repeated
        # predict(); edgetl's own messages say what matters.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        with StderrFilter():
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
        sys.unraisablehook = previous_hook


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
