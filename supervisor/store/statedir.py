"""Who holds a state directory: the instance lock's record of pid and host, and this host's name.

``flock`` tells whether a process on *this* host holds the lock. On some network filesystems (Lustre
mounted ``localflock``, some NFS setups) it tells nothing about other hosts, so the holder also writes
``"<pid> <host>"`` into the lock file and refreshes the file's mtime while it runs. A process on another
host reads that record to tell a live daemon elsewhere from one a crash left behind.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "supervisor.lock"
HOSTNAME_ENV = "SUPERVISOR_HOSTNAME"
HEARTBEAT_S = 60.0
# Generous: hosts' clocks differ a little, and NFS clients cache attributes for up to a minute.
STALE_AFTER_S = 600.0
_RECORD_MAX = 512


def this_host() -> str:
    """This host's name as the lock records it. ``SUPERVISOR_HOSTNAME`` overrides it: for hosts whose
    names clash, and for tests that play a second host."""
    return os.environ.get(HOSTNAME_ENV) or socket.gethostname()


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str | None  # None: a record from before hosts were recorded (the pid alone)
    beat: float  # the lock file's mtime: the holder's last sign of life, as a Unix time

    def describe(self) -> str:
        return f"{self.pid} on host {self.host}" if self.host else str(self.pid)

    def fresh(self, now: float) -> bool:
        return now - self.beat < STALE_AFTER_S


def format_record(pid: int, host: str) -> bytes:
    return f"{pid} {host}\n".encode()


def parse_record(data: bytes, beat: float) -> Holder | None:
    """None for an empty file (nobody, or a clean exit) or one this code did not write."""
    fields = data.decode(errors="replace").split()
    if not fields or not fields[0].isdigit():
        return None
    return Holder(pid=int(fields[0]), host=fields[1] if len(fields) > 1 else None, beat=beat)


def read_holder_fd(fd: int) -> Holder | None:
    return parse_record(os.pread(fd, _RECORD_MAX, 0), os.fstat(fd).st_mtime)


def read_holder(home: Path) -> Holder | None:
    """The recorded holder of ``home``'s lock, without taking it (``status`` must not block a daemon)."""
    path = home / LOCK_NAME
    try:
        with path.open("rb") as f:
            return parse_record(f.read(_RECORD_MAX), os.fstat(f.fileno()).st_mtime)
    except OSError:
        return None  # no lock file (nobody ever held it), or one we may not read: nothing to report


def holder_elsewhere(home: Path, now: float | None = None) -> Holder | None:
    """A live holder on another host than this one (what ``status`` and ``tick`` warn about), else None."""
    holder = read_holder(home)
    me = this_host()
    if holder is None or holder.host is None or holder.host == me:
        return None
    return holder if holder.fresh(time.time() if now is None else now) else None


def blocks(holder: Holder | None, *, me: str, os_locked: bool, now: float, alive: bool) -> bool:
    """Whether ``holder``, found in the file after our flock attempt, still keeps us out.

    ``os_locked``: our flock succeeded, so no process on this host holds it (a record of this host is a
    crash's leftover). ``alive``: whether the recorded pid runs here (only asked when flock is unsupported).
    A record of another host counts while its heartbeat is recent, whatever flock said.
    """
    if holder is None or (holder.pid == os.getpid() and holder.host in (None, me)):
        return False
    if holder.host is None or holder.host == me:
        return not os_locked and alive
    return holder.fresh(now)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # somebody else's process: alive
    return True


def write_record(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, format_record(os.getpid(), this_host()), 0)
    # On NFS other hosts see the bytes only once they reach the server; the file stays open meanwhile.
    os.fsync(fd)


@contextlib.contextmanager
def heartbeat(fd: int, interval: float = HEARTBEAT_S) -> Iterator[None]:
    """Touch the lock file every ``interval`` seconds while the body runs: the record stays fresh."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(OSError):  # a hiccup of the mount; the next beat tries again
                os.utime(fd)

    thread = threading.Thread(target=beat, name="lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def make_private_dir(path: Path) -> None:
    """Create the state directory (and its parents) and make it private to the user: run specs, events and
    job records in it can hold what only the user may read. An existing directory is tightened too."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
