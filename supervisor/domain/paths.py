"""Checks on paths a user names (a workdir, a state directory) made before anything is written there."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# Kernel interfaces: writable-looking to root, but a run's logs and checkpoints cannot live there.
PSEUDO_FILESYSTEMS = (Path("/proc"), Path("/sys"))


def directory_problem(path: Path, *, writable: bool = True) -> str | None:
    """Why ``path`` cannot be (or become) a directory to write into; None when it can.

    An existing directory must be writable (unless not ``writable``); a missing one is judged by its nearest
    existing ancestor, which must be a writable directory (what ``mkdir -p`` will need).
    """
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop on Python < 3.13
        return "cannot be resolved (a symlink loop?)"
    if any(resolved == p or p in resolved.parents for p in PSEUDO_FILESYSTEMS):
        return f"is under {next(p for p in PSEUDO_FILESYSTEMS if resolved == p or p in resolved.parents)}"
    probe = resolved
    while True:
        try:
            mode = probe.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a file on the way, judged next
            probe = probe.parent
            continue
        except OSError as exc:
            return f"cannot be used: {exc.strerror or exc}"
        break
    if not stat.S_ISDIR(mode):
        return "is not a directory" if probe == resolved else f"cannot be created: {probe} is not a directory"
    if (writable or probe != resolved) and not os.access(probe, os.W_OK | os.X_OK):
        return "is not writable" if probe == resolved else f"cannot be created: {probe} is not writable"
    return None


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not a regular file that can be read; None when it is."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop"
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a directory"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    try:
        with path.open("rb"):
            return None
    except OSError:
        return "file not readable"
