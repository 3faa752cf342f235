"""The ``supervisor`` command: parse, call the library, render (supervisor/app/render.py).

Errors a user can cause are one line on stderr and exit with code 2; a full disk under the state
directory is one line ``disk full at PATH`` and exit code 1 (nothing the user wrote is wrong).
The frame is base.py; each module beside it registers its commands on import, in the order ``--help`` lists them.
"""

from __future__ import annotations

import importlib
import sys

from supervisor.app.cli.base import DISK_FULL_EXIT, app, disk_full, err

__all__ = ["app", "main"]

# Registered in this order: it is the order of `supervisor --help`.
COMMAND_MODULES = ("runs", "progress", "running", "diagnosis")
for _module in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_module}")


def main() -> None:
    try:
        app()
    except Exception as exc:
        # The last boundary: a full disk met outside `user_errors` (the daemon's lock file, a log directory).
        message = disk_full(exc)
        if message is None:
            raise
        err.print(f"error: {message}", markup=False, highlight=False)
        sys.exit(DISK_FULL_EXIT)
