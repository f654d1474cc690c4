"""One rule for every folder edgetl writes (`train --out`, `export --out`).

* An existing, non-empty --out is refused unless --force; with --force it is replaced as a whole.
* --out may not be, or contain, anything the command reads (the source run or model, a data or
  calibration folder), and may not lie inside a data folder (the next run would read it).
* The output is built in a hidden sibling `.NAME.partial-PID-XXXX` and renamed into place at
  the end, so it appears complete or not at all. Temporary files of the libraries underneath
  (SavedModels, converter scratch) go inside that partial folder, not into $TMPDIR.
* A run that is killed (SIGKILL, power loss) leaves its partial folder behind; the next run for
  the same --out removes partials whose process is gone (PID in the name, host in a marker).
* One writer per output (OutputClaim): a run holds an flock on `.NAME.lock` beside --out from
  the start of its work to the rename, so a second run for the same --out is refused at once
  (two `train` runs into one new --out both once said "run written"; one of them was lost).
  The lock dies with its process: nothing stale to clean after kill -9.
* Single files (verify's --json/--junit/--html, the embedding cache) go through atomic_write:
  a temporary file beside the target, renamed over it. Report paths go through write_report,
  which writes devices, FIFOs and /dev/std* in place and symbolic links through to their
  targets, so nothing the path points at is replaced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from edgetl.errors import UserError

MARKER = ".edgetl-partial"
TMP_SUBDIR = ".tmp"
# Partials of edgetl versions that did not record a PID: removed once this old.
LEGACY_STALE_S = 3600


def _resolve(p: Path) -> Path:
    return Path(os.path.abspath(Path(p).expanduser())).resolve()


def check_out_dir(
    out: Path,
    *,
    force: bool,
    reads: dict[str, Path] | None = None,
    data_dirs: dict[str, Path] | None = None,
    flag: str = "--out",
) -> Path:
    """Refuse an --out that would lose or corrupt something; returns the resolved path.

    reads: what the command reads (label -> path); --out may not equal or contain any of them.
    data_dirs: image folders; --out may not equal, contain or lie inside any of them."""
    target = _resolve(out)
    for label, path in {**(reads or {}), **(data_dirs or {})}.items():
        src = _resolve(path)
        if target == src or src.is_relative_to(target):
            raise UserError(
                f"{flag} {out} {'is' if target == src else 'contains'} the {label} ({path}); "
                f"writing there would replace what this command reads. Choose another {flag}."
            )
    for label, path in (data_dirs or {}).items():
        src = _resolve(path)
        if target.is_relative_to(src):
            raise UserError(
                f"{flag} {out} is inside the {label} ({path}): the next run would read the "
                f"output as data. Choose an {flag} outside it."
            )
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            if not force:
                raise UserError(
                    f"{flag} {out} is an existing file, not a folder; choose another {flag} or "
                    "pass --force to replace it"
                )
        elif any(out.iterdir()) and not force:
            raise UserError(
                f"{out} already exists and is not empty; choose another {flag} or pass --force "
                "to replace it"
            )
    check_writable(out)
    return target


def check_writable(out: Path) -> None:
    """Refuse, before any work, an --out whose nearest existing folder cannot take a new entry
    (read-only file system, immutable folder, no permission). Leaves nothing behind."""
    p = Path(os.path.abspath(Path(out).expanduser())).parent
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise UserError(f"cannot write {out}: {p} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".edgetl-write-test-", dir=p)
        os.rmdir(probe)
    except OSError as e:
        raise _os_error(out, e) from None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _stale(entry: Path, pid: int | None) -> bool:
    try:
        host = (entry / MARKER).read_text().split()[1] if (entry / MARKER).is_file() else None
    except (OSError, IndexError):
        host = None
    if pid is None:  # legacy name: only by age
        try:
            return time.time() - entry.stat().st_mtime > LEGACY_STALE_S
        except OSError:
            return False
    if host is not None and host != socket.gethostname():
        return False  # a shared folder: that process may be alive on another machine
    return not _pid_alive(pid)


def sweep_stale(out: Path, log=None) -> list[Path]:
    """Remove `.NAME.partial-*` folders of dead edgetl processes next to `out`; restore a
    `.NAME.old-*` (a replaced output whose replacement was cut short) when `out` is missing."""
    out = Path(out)
    parent = out.parent
    if not parent.is_dir():
        return []
    pat = re.compile(rf"^\.{re.escape(out.name)}\.(partial|old)-(?:(\d+)-)?[^/]*$")
    removed: list[Path] = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        m = pat.match(entry.name)
        if not m or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(m.group(2)) if m.group(2) else None
        if not _stale(entry, pid):
            continue
        if m.group(1) == "old" and not out.exists():
            entry.rename(out)  # the previous output was moved aside and never replaced
            if log:
                log(f"restored {out} from an interrupted replacement ({entry.name})")
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        if log:
            log(f"removed {entry}, left by an interrupted edgetl run (process {pid} is gone)")
    return removed


def _os_error(out: Path, e: OSError) -> UserError:
    why = e.strerror or str(e)
    hint = ""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = " (read-only, immutable or not yours); choose another --out"
    elif e.errno == errno.ENOSPC:
        hint = "; free some space or choose another --out"
    return UserError(f"cannot write {out}: {why}: {e.filename or out}{hint}")


def _not_empty(out: Path) -> bool:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        return True
    try:
        return out.is_dir() and any(out.iterdir())
    except OSError:
        return True


def make_parents(path: Path, created: list[Path]) -> None:
    """Create path's missing parent folders, outermost first, each appended to `created` as
    soon as it exists, so that a failed or refused write removes exactly what it made."""
    missing = []
    p = path.parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        created.append(d)


class OutputClaim:
    """`with OutputClaim(out, replace=force): ...`: this process is the only edgetl writer of
    `out` until the block ends.

    An exclusive, non-blocking flock on `.NAME.lock` beside `out` (created, with missing parent
    folders, if needed; removed at the end). A second claim from another process fails at once
    with a one-line UserError; the same process may claim again (train, then its Staging).
    Without `replace`, an output that appeared after the caller's check_out_dir (a run that
    finished meanwhile) is refused too, so it is never replaced by a run that was not told to."""

    _held: ClassVar[dict[Path, int]] = {}  # resolved output -> nesting depth, this process

    def __init__(self, out: Path, *, replace: bool, flag: str = "--out") -> None:
        self.out = Path(out)
        self.replace = replace
        self.flag = flag
        self.target = _resolve(self.out)
        self.lock_path = self.target.parent / f".{self.target.name}.lock"
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> OutputClaim:
        if self.target in OutputClaim._held:
            OutputClaim._held[self.target] += 1
            return self
        try:
            self._acquire()
        except OSError as e:
            self._release()
            raise _os_error(self.out, e) from None
        OutputClaim._held[self.target] = 1
        if not self.replace and _not_empty(self.out):
            self.__exit__(None, None, None)
            raise UserError(
                f"{self.out} was written by another run after this one started; nothing was "
                f"replaced. Choose another {self.flag} or pass --force to replace it"
            )
        return self

    def _acquire(self) -> None:
        make_parents(self.target, self._created)
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 200).decode(errors="replace").split()
                os.close(fd)
                who = f" (process {owner[0]} on {owner[1]})" if len(owner) >= 2 else ""
                raise UserError(
                    f"{self.out} is being written by another edgetl run{who}; wait for it to "
                    f"finish or choose another {self.flag}"
                ) from None
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its last holder removed while we waited for it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def _release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # unlinked while still locked (see _acquire)
                os.unlink(self.lock_path)
            os.close(self._fd)
            self._fd = None
        for d in reversed(self._created):
            try:
                d.rmdir()  # only if still empty (the output was not written)
            except OSError:
                break
        self._created = []

    def __exit__(self, exc_type, exc, tb) -> None:
        depth = OutputClaim._held.get(self.target, 0)
        if depth > 1:
            OutputClaim._held[self.target] = depth - 1
            return
        OutputClaim._held.pop(self.target, None)
        self._release()


class Staging:
    """`with Staging(out) as tmp: ...write into tmp...; staging.commit()`.

    On any exception (KeyboardInterrupt and SIGTERM included: the CLI turns SIGTERM into one)
    the partial folder and any parent folders it created are removed; nothing is left behind.
    With capture_tempfiles, Python's tempfile module writes into the partial folder meanwhile."""

    def __init__(
        self, out: Path, *, capture_tempfiles: bool = True, log=None, replace: bool = True
    ) -> None:
        self.out = Path(out)
        self.claim = OutputClaim(out, replace=replace)
        self.capture_tempfiles = capture_tempfiles
        self.log = log
        self.tmp: Path | None = None
        self._created: list[Path] = []
        self._saved_tempdir: str | None = None
        self._committed = False

    def __enter__(self) -> Path:
        self.claim.__enter__()  # one writer per output (re-entrant: train claims it earlier)
        sweep_stale(self.out, self.log)
        try:
            make_parents(self.out, self._created)
            self.tmp = Path(
                tempfile.mkdtemp(
                    prefix=f".{self.out.name}.partial-{os.getpid()}-", dir=self.out.parent
                )
            )
            (self.tmp / MARKER).write_text(f"{os.getpid()} {socket.gethostname()}\n")
            umask = os.umask(0)
            os.umask(umask)
            self.tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the output is a normal folder
            if self.capture_tempfiles:
                (self.tmp / TMP_SUBDIR).mkdir()
        except OSError as e:
            self._cleanup()
            self.claim.__exit__(None, None, None)
            raise _os_error(self.out, e) from None
        if self.capture_tempfiles:
            self._saved_tempdir = tempfile.tempdir
            tempfile.tempdir = str(self.tmp / TMP_SUBDIR)
        return self.tmp

    def commit(self) -> None:
        assert self.tmp is not None
        if not self.claim.replace and _not_empty(self.out):
            raise UserError(
                f"{self.out} appeared while this run was writing it (not by edgetl); nothing "
                "was replaced. Choose another --out or pass --force to replace it"
            )
        self._restore_tempdir()
        shutil.rmtree(self.tmp / TMP_SUBDIR, ignore_errors=True)
        (self.tmp / MARKER).unlink(missing_ok=True)
        try:
            replace_dir(self.tmp, self.out)
        except OSError as e:
            raise _os_error(self.out, e) from None
        self._committed = True

    def _restore_tempdir(self) -> None:
        if self.capture_tempfiles and tempfile.tempdir == str(self.tmp / TMP_SUBDIR):
            tempfile.tempdir = self._saved_tempdir

    def _cleanup(self) -> None:
        self._restore_tempdir()
        if self.tmp is not None and not self._committed:
            shutil.rmtree(self.tmp, ignore_errors=True)
        for d in reversed(self._created):
            try:
                d.rmdir()
            except OSError:
                break

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self._committed:
                self._cleanup()
            else:
                self._restore_tempdir()
        finally:
            self.claim.__exit__(exc_type, exc, tb)


def replace_dir(new: Path, target: Path) -> None:
    """Rename `new` onto `target`; an old output is moved aside first and removed only after
    (to `.NAME.old-PID-XXXX`, which sweep_stale restores if this is cut short)."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{new.name[-8:]}")
        target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        if old is not None and not target.exists():
            old.rename(target)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def atomic_write(path: str | Path, write) -> None:
    """Write one file so that it appears complete or not at all: `write(f)` fills a temporary
    binary file beside `path`, which is then renamed over it (the cache's embeddings, verify's
    report files). `write` may also be the bytes themselves."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, bytes):
                f.write(write)
            else:
                write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Paths that name one of this process's open file descriptors: written through that
# descriptor (sharing its offset, so a redirected stdout keeps the table before the JSON and
# the summary after), never reopened or renamed over.
FD_PATH = re.compile(r"/dev/(stdout|stderr)|/dev/fd/(\d+)|/proc/(?:self|(\d+))/fd/(\d+)")


def _own_fd(path: Path) -> int | None:
    m = FD_PATH.fullmatch(os.path.abspath(path))
    if m is None or (m.group(3) and int(m.group(3)) != os.getpid()):
        return None
    if m.group(1):
        return 1 if m.group(1) == "stdout" else 2
    return int(m.group(2) or m.group(4))


def write_report(path: str | Path, data: bytes) -> None:
    """Write a report file (verify's --json/--junit/--html) without replacing what the path
    points at: /dev/stdout, /dev/stderr, /dev/fd/N and /proc/self/fd/N go through that
    descriptor; a character device, FIFO or socket is opened and written in place (as root, a
    rename over /dev/stdout replaced the system's symlink with a regular file, and one over
    /dev/null the device); a symbolic link is followed and its target written atomically, the
    link kept; a plain path is written with atomic_write."""
    path = Path(path)
    fd = _own_fd(path)
    if fd is not None:
        for stream in (sys.stdout, sys.stderr):  # what was printed goes first
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
        with os.fdopen(os.dup(fd), "wb") as f:
            f.write(data)
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _os_error(path, e) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        with open(os.open(path, os.O_WRONLY), "wb") as f:
            f.write(data)
        return
    atomic_write(os.path.realpath(path), data)  # through a link: its target, the link kept


def _umask() -> int:
    """The process umask, read without changing it (os.umask sets it for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
