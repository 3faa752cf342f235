"""The state directory is private to the user, whoever created it and whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from harness import Harness


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_home_is_created_private(harness: Harness) -> None:
    old = os.umask(0o022)
    try:
        job = harness.script("job.sbatch", "echo ok\n")
        harness.cli("submit", str(harness.write_spec({"name": "p", "backend": "local",
                                                      "workdir": str(harness.root / "w"),
                                                      "stages": [{"name": "s", "script": str(job)}]})))
    finally:
        os.umask(old)
    assert _mode(harness.home) == 0o700
    assert _mode(harness.home / "supervisor.db") == 0o600


def test_an_existing_open_home_is_tightened(harness: Harness) -> None:
    harness.home.mkdir(mode=0o755)
    harness.home.chmod(0o755)
    harness.cli("tick")
    assert _mode(harness.home) == 0o700
