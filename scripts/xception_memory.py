"""Peak RSS of `edgetl export` (every format) on a large classifier, issue 20 defect 8.

    python scripts/xception_memory.py SIZE ISOLATE   # e.g. 150 1; ISOLATE 0: all in-process

Builds keras.applications.Xception(weights=None, classes=10) at SIZE px (84 MB of float32
weights; weights=None is enough for memory), exports it with the CLI and prints this process'
peak RSS and its largest child's (the converters' own processes when ISOLATE is 1)."""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    import keras

    import edgetl.bundle as bundle
    from edgetl.cli import main as cli

    size, isolate = int(sys.argv[1]), sys.argv[2] == "1"
    if not isolate:
        bundle.ISOLATE_PARAMS = 10**12
    work = Path(tempfile.mkdtemp(prefix="edgetl-xception-"))
    model = keras.applications.Xception(weights=None, classes=10, input_shape=(size, size, 3))
    model.save(work / "xception.keras")
    del model
    keras.backend.clear_session()
    t = time.perf_counter()
    labels = ",".join(map(str, range(10)))
    rc = cli(["export", str(work / "xception.keras"), "--out", str(work / "b"), "--labels", labels])
    wall = time.perf_counter() - t
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"isolate={int(isolate)} rc={rc} export wall {wall:.0f} s, peak RSS this process "
        f"{me:.0f} MB, largest child {kids:.0f} MB, load average {' '.join(load)}",
        flush=True,
    )


if __name__ == "__main__":
    main()
