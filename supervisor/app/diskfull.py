"""A full disk under the state directory: one line naming where, and reads that need no write.

SQLite reports a full disk in two ways: ``SQLITE_FULL`` when a write finds no room, and a bare
``disk I/O error`` (``SQLITE_IOERR_SHMSIZE``) when opening a WAL database cannot grow its ``-shm`` index.
The second is also what a plain *read* gets, so `status` and `show` fall back to reading the database
file as it is on disk (``immutable=1``: no ``-shm``, no locks, nothing written).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
# An I/O error with less room than this left is taken for a full disk: SQLite grows files in pages.
NEARLY_FULL_BYTES = 1 << 20


def _nearly_full(path: Path) -> bool:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        fs = os.statvfs(probe)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < NEARLY_FULL_BYTES or (fs.f_files > 0 and fs.f_favail == 0)


def disk_full_at(exc: BaseException, home: Path) -> Path | None:
    """Where the disk is full if ``exc`` (or what it wraps) says so; None for any other error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_SPACE:
            return Path(current.filename) if current.filename else home
        if isinstance(current, DBAPIError) and current.orig is not None:
            current = current.orig
            continue
        if isinstance(current, sqlite3.Error):
            name = getattr(current, "sqlite_errorname", "") or ""
            if name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR") and _nearly_full(home)):
                return home
        current = current.__cause__ or current.__context__
    return None


def snapshot_sessions(database: Path) -> sessionmaker[Session]:
    """Sessions that read ``database`` without writing anything, not even WAL's ``-shm`` file.

    ``immutable=1`` skips the write-ahead log: commits still in a ``-wal`` file are not seen. On a full
    disk nothing new can be committed, so what is missing is at most what a writer had not checkpointed.
    """
    uri = f"file:{quote(str(database))}?mode=ro&immutable=1"
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
                           poolclass=StaticPool)
    return sessionmaker(engine, expire_on_commit=False)


def unread_wal(database: Path) -> bool:
    """Whether the database's write-ahead log holds commits a snapshot read does not see."""
    try:
        return Path(f"{database}-wal").stat().st_size > 0
    except OSError:
        return False
