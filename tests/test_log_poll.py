"""Detection where inotify sees nothing: the `--log-poll` cadence (stat, read only what grew).

A FUSE ``bindfs`` view of a directory behaves like Lustre/GPFS/NFS seen from the login node: appends made
to the underlying directory show up in the view but raise no inotify event there. The supervisor's workdir
is the view; the job writes its line into the underlying directory, as a job on a compute node would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.logs.follow import LogCursor, LogWatcher
from supervisor.logs.tailer import TailState

from harness import SUPERVISOR, Harness

LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_grown_says_yes_once_per_growth_and_nothing_for_read_logs(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("step 1\n")
    read_up_to = TailState(log, inode=log.stat().st_ino, offset=log.stat().st_size, line_no=1).to_dict()
    watcher = LogWatcher()
    cursor = LogCursor(str(log), read_up_to, None)
    assert watcher.grown([cursor]) is False  # read to its end
    with log.open("a") as out:
        out.write("step 2 with no newline yet")
    assert watcher.grown([cursor]) is True
    # The partial line stays unread (the offset does not move): it must not call for a pass every time.
    assert watcher.grown([cursor]) is False
    with log.open("a") as out:
        out.write("\n")
    assert watcher.grown([cursor]) is True
    # A log not created yet, and a path still waiting for its job id, are no growth.
    assert watcher.grown([LogCursor(str(tmp_path / "none.log"), None, None), LogCursor("x-%j.log", None, None)]) \
        is False
    # Another file at the path (same size, new inode) is a change: the next pass starts it over.
    log.unlink()
    log.write_text("step 1\n")
    replaced = LogCursor(str(log), {**read_up_to, "inode": read_up_to["inode"] + 1}, None)
    assert watcher.grown([replaced]) is True


def _fuse_unavailable() -> str | None:
    if shutil.which("bindfs") is None:
        return "bindfs is not installed (apt-get install -y bindfs)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not usable here"
    return None


@pytest.fixture
def bindfs_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(real, view): ``view`` is a bindfs mount of ``real``."""
    why = _fuse_unavailable()
    real, view = tmp_path / "real", tmp_path / "view"
    real.mkdir()
    view.mkdir()
    if why is None:
        mounted = subprocess.run(["bindfs", str(real), str(view)], capture_output=True, text=True, check=False)
        why = None if mounted.returncode == 0 else f"bindfs failed: {mounted.stderr.strip()}"
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield real, view
    finally:
        # Lazily when still busy (a job's working directory): detached now, gone once its last user exits.
        if subprocess.run(["umount", str(view)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(view)], check=False, capture_output=True)


def test_a_line_written_past_inotify_is_detected_by_the_log_cadence(
    harness: Harness, bindfs_view: tuple[Path, Path],
) -> None:
    real, view = bindfs_view
    # The job's own stdout goes through the view (the launcher opened it there); the line goes underneath.
    job = harness.script("job.sh", f"""sleep 2
for f in {real}/logs/*.log; do printf '%s\\n' '{LINE}' >> "$f"; done
date +%s.%N > {real}/written
sleep 120
""")
    harness.submit({"name": "fuse", "backend": "local", "workdir": str(view),
                    "stages": [{"name": "train", "script": str(job), "max_attempts": 1}]})
    # --poll 10m: the job's end or the log can only be noticed in time through --log-poll.
    with harness.daemon_log.open("ab") as out:
        harness.daemon = subprocess.Popen([*SUPERVISOR, "daemon", "--poll", "10m", "--log-poll", "0.5s"],
                                          env=harness.env, stdout=out, stderr=subprocess.STDOUT)

    def detected() -> bool:
        return any(e["kind"] == "signature" for e in harness.show("fuse")["events"])

    try:
        harness.wait_for(detected, 60, "the signature read through the bindfs view")
        assert (real / "written").exists()
        event = next(e for e in harness.show("fuse")["events"] if e["kind"] == "signature")
        assert "cuda_oom" in event["message"]
        (attempt,) = harness.attempts("fuse", "train")
        assert attempt["log"].startswith(str(view))  # the supervisor read the view, never the real directory
    finally:
        harness.stop_daemon()  # before the view is unmounted: it watches a directory in it
