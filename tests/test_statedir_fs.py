"""The state directory on cluster filesystems: which mount holds it, and who holds its lock from which host.

The mount table lines are real ones (NFS home, Lustre scratch, GPFS, CIFS, sshfs, ...). A second host
cannot be had here: SUPERVISOR_HOSTNAME plays it, with real daemon and CLI processes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from supervisor.store.db import DB_NAME, JOURNAL_ENV, journal_mode_for, open_database
from supervisor.store.filesystem import is_network_fs, mount_of, parse_mountinfo
from supervisor.store.statedir import LOCK_NAME, STALE_AFTER_S, Holder, blocks, parse_record, read_holder

from harness import Harness

MOUNTINFO = "\n".join([
    r"22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro",
    r"25 22 0:23 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,inode64",
    r"88 22 0:45 / /tmp rw,nosuid,nodev shared:40 - tmpfs tmpfs rw,size=8388608k,inode64",
    r"91 22 259:3 / /scratch/local rw,relatime shared:45 - xfs /dev/nvme1n1 rw,attr2,inode64,noquota",
    r"95 22 0:46 / /lustre/scratch rw,relatime shared:52 - lustre 10.10.0.1@o2ib:10.10.0.2@o2ib:/scratch "
    r"rw,flock,lazystatfs,encrypt",
    r"120 22 0:60 / /gpfs/fs1 rw,relatime shared:70 - gpfs fs1 rw",
    r"130 22 0:0 / /mnt/beegfs rw,relatime shared:80 - beegfs beegfs_nodev rw,cfgFile=/etc/beegfs/beegfs-client.conf",
    r"140 22 0:61 / /mnt/cephfs rw,relatime shared:90 - ceph 10.0.0.1:6789,10.0.0.2:6789:/ rw,name=admin,acl",
    r"300 22 0:70 / /mnt/my\040share rw,relatime shared:150 - cifs //nas/share rw,vers=3.1.1,cache=strict,uid=1000",
    r"310 22 0:71 / /mnt/gluster rw,relatime shared:160 - fuse.glusterfs gfs1:/vol0 rw,user_id=0,group_id=0",
    r"600 22 0:51 / /home rw,relatime shared:300 - autofs /etc/auto.home rw,fd=7,pgrp=1234,timeout=300,direct",
    r"612 600 0:54 / /home/alice rw,relatime shared:318 - nfs4 fs01:/export/home/alice rw,vers=4.2,hard,"
    r"proto=tcp,timeo=600,sec=sys,clientaddr=10.1.2.3,local_lock=none,addr=10.1.0.5",
    r"700 612 0:80 / /home/alice/remote rw,nosuid,nodev,relatime shared:400 - fuse.sshfs alice@dtn:/data "
    r"rw,user_id=1000,group_id=1000",
    r"710 22 0:81 / /run/user/1000/doc rw,nosuid,nodev,relatime shared:410 - fuse.portal portal rw,user_id=1000",
    r"800 22 0:90 / /data rw,relatime shared:500 - ext4 /dev/sdb1 rw",
    r"801 22 0:91 / /data rw,relatime shared:501 - nfs nas:/data rw,vers=3,hard,proto=tcp",
])


@pytest.mark.parametrize(("path", "point", "fstype", "network"), [
    ("/home/alice/.local/state/supervisor", "/home/alice", "nfs4", True),
    ("/home/alice", "/home/alice", "nfs4", True),
    ("/home/alice/remote/x", "/home/alice/remote", "fuse.sshfs", True),
    ("/home/bob/x", "/home", "autofs", False),  # bob's home not mounted: the autofs trigger itself
    ("/homework/x", "/", "ext4", False),  # a prefix by characters is not a parent directory
    ("/lustre/scratch/u/state", "/lustre/scratch", "lustre", True),
    ("/gpfs/fs1/u", "/gpfs/fs1", "gpfs", True),
    ("/mnt/beegfs/u", "/mnt/beegfs", "beegfs", True),
    ("/mnt/cephfs/u", "/mnt/cephfs", "ceph", True),
    ("/mnt/my share/u", "/mnt/my share", "cifs", True),
    ("/mnt/gluster/u", "/mnt/gluster", "fuse.glusterfs", True),
    ("/run/user/1000/doc/x", "/run/user/1000/doc", "fuse.portal", False),
    ("/tmp/supervisor", "/tmp", "tmpfs", False),
    ("/scratch/local/u", "/scratch/local", "xfs", False),
    ("/data/u", "/data", "nfs", True),  # mounted over the ext4 one: the later line wins
    ("/", "/", "ext4", False),
])
def test_mount_of_a_path_is_its_longest_parent_mount(path: str, point: str, fstype: str, network: bool) -> None:
    mount = mount_of(path, MOUNTINFO)
    assert mount is not None
    assert (mount.point, mount.fstype, mount.network) == (point, fstype, network)


def test_mount_table_lines_that_are_not_mounts_are_skipped() -> None:
    text = MOUNTINFO.splitlines()[0] + "\n612 600 0:54 / /home/alice rw,rela\n\n"
    assert [(m.point, m.fstype) for m in parse_mountinfo(text)] == [("/", "ext4")]
    assert mount_of("/home/alice/x", text).fstype == "ext4"  # type: ignore[union-attr]


@pytest.mark.parametrize(("fstype", "network"), [
    ("NFS4", True), ("smb3", True), ("fuse.s3fs", True), ("fuse", False), ("fuse.sshfsx", False), ("btrfs", False),
    ("overlay", False), ("zfs", False),
])
def test_network_filesystem_types(fstype: str, network: bool) -> None:
    assert is_network_fs(fstype) is network


def test_this_machines_state_directory_gets_wal_unless_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(JOURNAL_ENV, raising=False)
    local = mount_of(os.path.realpath(tmp_path), Path("/proc/self/mountinfo").read_text())
    assert local is not None and not local.network, f"tests need a local tmp_path, got {local}"
    assert journal_mode_for(tmp_path) == "wal"
    monkeypatch.setenv(JOURNAL_ENV, "DELETE")
    assert journal_mode_for(tmp_path) == "delete"
    monkeypatch.setenv(JOURNAL_ENV, "truncate")  # not one we support: detection decides
    assert journal_mode_for(tmp_path) == "wal"


def test_a_wal_database_moved_to_a_network_filesystem_leaves_wal(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(JOURNAL_ENV, raising=False)
    open_database(tmp_path).kw["bind"].dispose()
    monkeypatch.setenv(JOURNAL_ENV, "delete")  # what detection says on NFS
    sessions = open_database(tmp_path)
    with sessions() as session:
        session.connection().exec_driver_sql("SELECT count(*) FROM runs")
    sessions.kw["bind"].dispose()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not (tmp_path / f"{DB_NAME}-wal").exists()


# ---- who holds the lock ----------------------------------------------------------------------------

def test_lock_records() -> None:
    assert parse_record(b"4242 login1\n", 5.0) == Holder(4242, "login1", 5.0)
    assert parse_record(b"4242\n", 5.0) == Holder(4242, None, 5.0)  # written before hosts were recorded
    assert parse_record(b"", 5.0) is None
    assert parse_record(b"garbage", 5.0) is None


@pytest.mark.parametrize(("host", "os_locked", "age", "alive", "expected"), [
    ("login1", True, 1.0, True, False),  # our flock won on this host: the holder crashed
    ("login1", False, 1.0, True, True),  # no flock on this filesystem: a live pid here holds it
    ("login1", False, 1.0, False, False),
    (None, True, 1.0, True, False),
    ("login2", True, 1.0, False, True),  # another host, beating: our flock proves nothing
    ("login2", True, STALE_AFTER_S + 1, False, False),  # another host, silent for long: gone
])
def test_which_recorded_holder_keeps_a_newcomer_out(host: str | None, os_locked: bool, age: float, alive: bool,
                                                    expected: bool) -> None:
    now = 1_000_000.0
    holder = Holder(pid=1, host=host, beat=now - age)
    assert blocks(holder, me="login1", os_locked=os_locked, now=now, alive=alive) is expected
    assert blocks(None, me="login1", os_locked=os_locked, now=now, alive=alive) is False


def as_host(h: Harness, host: str) -> Harness:
    other = Harness(h.root)
    other.env = {**h.env, "SUPERVISOR_HOSTNAME": host}
    return other


def test_tick_and_status_on_another_host_than_the_daemon(tmp_path: Path) -> None:
    login = as_host(Harness(tmp_path), "login1")
    compute = as_host(login, "compute7")
    try:
        login.start_daemon(poll="1s")
        assert login.daemon is not None
        pid = login.daemon.pid
        login.wait_for(lambda: read_holder(login.home) is not None, 60, "the daemon's lock record")
        assert read_holder(login.home) == Holder(pid, "login1", (login.home / LOCK_NAME).stat().st_mtime)

        tick = compute.cli("tick")
        assert tick.err.strip().splitlines() == [
            f"the supervisor daemon of this state directory runs on host login1 (pid {pid}), not on this host"
            " (compute7); nothing to do here"]
        status = compute.cli("status", "--json")
        assert status.out.strip() == "[]"
        assert status.err.strip() == (f"note: the supervisor daemon of this state directory runs on host login1"
                                      f" (pid {pid}), not on this host (compute7)")
        assert login.cli("status", "--json").err == ""  # on the daemon's own host: nothing to note
        second = compute.cli("daemon", check=False)  # a second daemon elsewhere is refused too
        assert second.code == 1 and f"(pid {pid} on host login1)" in second.err

        assert login.stop_daemon() == 0
        assert (login.home / LOCK_NAME).read_bytes() == b""  # a clean exit leaves no holder behind
        assert compute.cli("status").err == ""
    finally:
        login.close()


def test_a_record_from_another_host_is_honoured_until_it_goes_stale(tmp_path: Path) -> None:
    """A daemon killed outright leaves its flock released and its record behind: exactly what a daemon
    on another host looks like where flock does not reach across hosts."""
    login = as_host(Harness(tmp_path), "login1")
    compute = as_host(login, "compute7")
    try:
        login.start_daemon(poll="1h")
        login.wait_for(lambda: read_holder(login.home) is not None, 60, "the daemon's lock record")
        login.stop_daemon(sig=signal.SIGKILL)
        lock = login.home / LOCK_NAME
        record = lock.read_bytes()
        name = compute.submit({"name": "r", "backend": "local", "workdir": str(tmp_path / "w"),
                               "stages": [{"name": "a", "command": ["true"]}]})

        tick = compute.cli("tick")
        assert "runs on host login1" in tick.err and "nothing to do here" in tick.err
        assert lock.read_bytes() == record
        assert compute.attempts(name, "a") == []

        aged = time.time() - STALE_AFTER_S - 60  # injected age: the heartbeat stopped that long ago
        os.utime(lock, (aged, aged))
        compute.cli("tick")
        assert compute.attempts(name, "a"), "the tick took over from the stale record and started the run"
        assert compute.cli("status").err == ""
    finally:
        login.close()
