"""What ``axolotl preprocess`` leaves in ``dataset_prepared_path``: finding it, and cleaning it before a retry."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from supervisor.domain.errors import StageError

# One directory per dataset hash (md5) and the file lock trio of axolotl.utils.data.lock. Anything
# else there is not ours to delete.
_PREPARED_HASH_DIR = re.compile(r"[0-9a-f]{32}")
_PREPARED_LOCK_FILES = frozenset({"datasets_prep.lock", "datasets_ready.flag", "process_counter.txt"})


def clean_prepared_data(prepared: Path, *, protect: Sequence[Path] = ()) -> list[Path]:
    """Remove what an earlier preprocessing attempt left in ``prepared``; return what was removed.

    Only axolotl's own entries (dataset-hash directories and its lock files) directly inside
    ``prepared`` are removed; a symlink is unlinked, never followed. Refuses a ``prepared`` that is
    the filesystem root, the home directory, or contains any ``protect`` path.
    """
    if not prepared.exists():
        return []
    root = prepared.resolve()
    if root == Path(root.anchor) or root == Path.home().resolve():
        raise StageError(f"refusing to clean dataset_prepared_path {prepared}: too broad")
    for path in protect:
        if path.resolve().is_relative_to(root):
            raise StageError(f"refusing to clean dataset_prepared_path {prepared}: it contains {path}")
    removed = []
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            if _PREPARED_HASH_DIR.fullmatch(entry.name) or entry.name in _PREPARED_LOCK_FILES:
                entry.unlink()
                removed.append(entry)
            continue
        if entry.is_dir() and _PREPARED_HASH_DIR.fullmatch(entry.name):
            if entry.resolve().parent != root:
                raise StageError(f"refusing to remove {entry}: not inside {root}")
            shutil.rmtree(entry)
            removed.append(entry)
        elif entry.is_file() and entry.name in _PREPARED_LOCK_FILES:
            entry.unlink()
            removed.append(entry)
    return removed


def prepared_dataset_present(prepared: Path) -> bool:
    """A dataset saved by ``save_to_disk`` (its ``state.json`` and an arrow file) under ``prepared``."""
    if not prepared.is_dir():
        return False
    for entry in prepared.iterdir():
        if not (entry.is_dir() and _PREPARED_HASH_DIR.fullmatch(entry.name)):
            continue
        for state in entry.rglob("state.json"):
            if any(state.parent.glob("*.arrow")):
                return True
    return False
