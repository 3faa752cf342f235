"""CPU of the daemon's inotify wake-ups alone: one LogDirWatcher on many log directories whose logs grow.

    .venv/bin/python bench/inotify_load.py [--dirs 100] [--seconds 20] [--watcher reader|observer|both]

A child process appends one tqdm line a second to one log in each of ``--dirs`` directories, spread over
the second as jobs write (not all at once: a burst would let every watcher read many events per wake-up).
This process watches the directories with ``supervisor.logs.inotify.LogDirWatcher`` (``reader``: the default,
one inotify descriptor read by one thread at most every 0.1 s; ``observer``: watchdog's ``Observer``, an
emitter thread per directory and a dispatcher thread) and counts the changes it is told of. Its own CPU
(``getrusage``, the writer excluded) over ``--seconds`` after a 3 s warm-up is printed per watcher, with the
load average; ``both`` runs them one after the other.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

LINE = "  5%|#         | 50/1000 [00:10<03:10,  5.00it/s]\n"


def writer(dirs: list[Path], seconds: float) -> None:
    logs = [(d / "train.log").open("a", buffering=1) for d in dirs]
    gap = 1.0 / len(logs)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        for i, log in enumerate(logs):
            log.write(LINE)
            time.sleep(max(0.0, start + (i + 1) * gap - time.monotonic()))


def measure(kind: str, dirs: list[Path], seconds: float) -> tuple[float, int]:
    from watchdog.observers import Observer

    from supervisor.logs.inotify import LogDirWatcher

    told = [0]

    def on_change(_path: Path | None) -> None:
        told[0] += 1

    watcher = LogDirWatcher(on_change, observer_factory=Observer if kind == "observer" else None)
    watcher.start()
    watcher.set_dirs(dirs)
    child = os.fork()
    if child == 0:
        try:
            writer(dirs, seconds + 5)
        finally:
            os._exit(0)
    time.sleep(3.0)
    before, at, seen = resource.getrusage(resource.RUSAGE_SELF), time.monotonic(), told[0]
    time.sleep(seconds)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - at
    changes = told[0] - seen
    os.waitpid(child, 0)
    watcher.stop()
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return 100 * cpu / wall, changes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--watcher", choices=("reader", "observer", "both"), default="both")
    args = parser.parse_args()
    kinds = ("reader", "observer") if args.watcher == "both" else (args.watcher,)
    root = Path(tempfile.mkdtemp(prefix="inotify-load-"))
    try:
        print(f"# {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; {args.dirs} directories, one line a "
              f"second each; {os.cpu_count()} CPUs")
        print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
        print("watcher | CPU % of a core | changes told | load average (1 min)")
        print("--- | --- | --- | ---")
        for kind in kinds:
            dirs = [root / kind / f"run-{i:03d}" / "logs" for i in range(args.dirs)]
            for d in dirs:
                d.mkdir(parents=True)
            cpu, changes = measure(kind, dirs, args.seconds)
            print(f"{kind} | {cpu:.2f} | {changes} | {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
