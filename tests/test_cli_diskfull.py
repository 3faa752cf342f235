"""A full disk under the state directory, on a real (tmpfs) filesystem: one line, and reads still work."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Harness

SIZE = "2m"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> None:
    """Write until the filesystem refuses; what is left is less than one block."""
    with (mount / "filler").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    with (mount / "filler-tail").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass


def test_full_disk_is_one_line_and_reads_still_work(small_fs: Path, tmp_path: Path) -> None:
    h = Harness(tmp_path, extra_env={"SUPERVISOR_HOME": str(small_fs / "home")})
    spec = {"name": "r1", "backend": "local", "workdir": str(tmp_path / "work"),
            "stages": [{"name": "a", "command": ["true"]}]}
    h.submit(spec)
    before = h.status()
    fill(small_fs)

    status = h.cli("status", "--json", check=False)
    assert status.code == 0, status.err
    assert json.loads(status.out) == before
    assert h.cli("status", check=False).code == 0
    show = h.cli("show", "r1", "--json", check=False)
    assert show.code == 0 and json.loads(show.out)["name"] == "r1"
    assert "r1" in h.cli("show", "r1").out

    other = h.write_spec({**spec, "name": "r2"}, "r2.yaml")
    for command in (("submit", str(other)), ("pause", "r1"), ("cancel", "r1"), ("tick",)):
        result = h.cli(*command, check=False)
        assert result.code == 1, (command, result)
        assert result.err.strip().splitlines() == [f"error: disk full at {small_fs / 'home'}"], (command, result)

    for leftover in small_fs.glob("filler*"):
        leftover.unlink()
    assert [r["name"] for r in h.status()] == ["r1"]
