"""Which filesystem holds the state directory, and whether SQLite's WAL mode is safe on it.

Login-node homes on clusters are NFS, Lustre, GPFS or the like. WAL keeps its index in shared memory
(mmap of the ``-shm`` file), which other hosts never see, and some of these mounts make ``flock`` a
no-op across hosts. The decision is a pure function over the text of ``/proc/self/mountinfo``;
:func:`filesystem_of` is the one reader of the real table.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")

# Filesystems whose files other hosts can open at the same time (network and shared-disk cluster ones).
NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "ceph", "beegfs", "glusterfs", "afs", "panfs",
    "pvfs2", "orangefs", "wekafs", "dvs", "ocfs2", "gfs2", "quobyte", "9p", "virtiofs", "davfs", "coda",
})
# FUSE mounts are typed "fuse.<daemon>"; these daemons serve files kept elsewhere.
NETWORK_FUSE_TYPES = frozenset({
    "sshfs", "glusterfs", "ceph-fuse", "s3fs", "rclone", "gcsfuse", "juicefs", "mfs", "lizardfs", "beegfs",
    "gvfsd-fuse", "smbnetfs", "curlftpfs",
})

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    source: str

    @property
    def network(self) -> bool:
        return is_network_fs(self.fstype)


def is_network_fs(fstype: str) -> bool:
    kind = fstype.lower()
    if kind.startswith("fuse."):
        return kind.removeprefix("fuse.") in NETWORK_FUSE_TYPES
    return kind in NETWORK_FS_TYPES


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as octal escapes (\040 ...).
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Every mount in table order. See proc(5): fields before " - " are fixed but for optional tags."""
    mounts = []
    for line in text.splitlines():
        fixed, sep, rest = line.partition(" - ")
        head, tail = fixed.split(), rest.split()
        if not sep or len(head) < 5 or len(tail) < 2:
            continue  # not a mount line (a truncated read): skip rather than guess
        mounts.append(Mount(point=_unescape(head[4]), fstype=tail[0], source=_unescape(tail[1])))
    return mounts


def mount_of(path: str, mountinfo: str) -> Mount | None:
    """The mount that holds the absolute, resolved ``path``: the longest mount point that is a prefix of
    it by whole components. A later line wins a tie: it was mounted over the earlier one."""
    best: Mount | None = None
    best_len = -1
    for mount in parse_mountinfo(mountinfo):
        point = mount.point.rstrip("/") or "/"
        inside = point == "/" or path == point or path.startswith(point + "/")
        if inside and len(point) >= best_len:
            best, best_len = mount, len(point)
    return best


def filesystem_of(path: Path) -> Mount | None:
    """The mount holding ``path`` (or its nearest existing parent); None where the table cannot be read."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        text = MOUNTINFO.read_text()
    except OSError:
        return None  # not Linux, or /proc not mounted: nothing known, nothing assumed
    return mount_of(os.path.realpath(probe), text)
