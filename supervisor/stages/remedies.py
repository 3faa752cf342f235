"""What people do by hand before resubmitting after some hangs, done by the supervisor instead."""

from __future__ import annotations

import re
from pathlib import Path

# torch.utils.cpp_extension prints this before building; it then waits on <root>/<extension>/lock, which
# a job killed mid-build leaves behind, so every later build hangs until the file is removed.
_EXTENSIONS_ROOT = re.compile(r"Using (?P<root>\S+) as PyTorch extensions root")


def clear_extension_locks(hint_text: str) -> list[Path]:
    """Remove the ``lock`` files of the extensions root named in ``hint_text``; return what was removed.

    Only files named exactly ``lock`` one directory below the root are touched (where the build baton
    lives), never directories, never anything else.
    """
    match = _EXTENSIONS_ROOT.search(hint_text)
    if match is None:
        return []
    root = Path(match.group("root").rstrip("."))
    if not root.is_absolute() or not root.is_dir():
        return []
    removed = []
    for lock in sorted(root.glob("*/lock")):
        if lock.is_file() and not lock.is_symlink():
            try:
                lock.unlink()
            except OSError:
                continue
            removed.append(lock)
    return removed
