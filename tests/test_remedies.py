"""Hang remedies: the stale PyTorch extension-build lock, from the unit to a real run."""

from __future__ import annotations

from pathlib import Path

from supervisor.domain.types import StageKind
from supervisor.logs.follow import LogCursor, LogWatcher
from supervisor.stages import kind_for
from supervisor.stages.remedies import clear_extension_locks

from harness import Harness


def extensions_root(tmp_path: Path) -> Path:
    root = tmp_path / "torch_extensions" / "py311_cu124"
    for name in ("fused_adam", "cpu_adam"):
        (root / name).mkdir(parents=True)
        (root / name / "build.ninja").write_text("rule cxx\n")
    (root / "fused_adam" / "lock").write_text("")
    return root


def test_only_the_build_locks_of_the_named_root_are_removed(tmp_path: Path) -> None:
    root = extensions_root(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "lock").write_text("")
    removed = clear_extension_locks(f"Using {root} as PyTorch extensions root...")
    assert removed == [root / "fused_adam" / "lock"]
    assert not (root / "fused_adam" / "lock").exists()
    assert (root / "fused_adam" / "build.ninja").exists() and (tmp_path / "elsewhere" / "lock").exists()
    assert clear_extension_locks("Using relative/path as PyTorch extensions root...") == []
    assert clear_extension_locks("no hint here") == []


def test_hint_lasts_while_the_log_stays_near_it(tmp_path: Path) -> None:
    log = tmp_path / "train-1-1.log"
    watcher = LogWatcher()
    catalogue = watcher.catalogue("r", [])
    cursor = LogCursor(str(log), None, None)

    def read(text: str) -> dict[str, object] | None:
        nonlocal cursor
        with log.open("a") as fh:
            fh.write(text)
        seen = watcher.read(catalogue, cursor, kind_for(StageKind.SCRIPT).progress)
        cursor = LogCursor(str(log), seen.tail["log_tail"], seen.tail["hang_hint"])
        return cursor.hang_hint

    hint = read("[INFO] starting\nUsing /tmp/ext as PyTorch extensions root...\n")
    assert hint is not None and hint["signature"] == "extension_build_hang"
    assert read("Emitting ninja build file /tmp/ext/fused_adam/build.ninja...\n") == hint
    assert read("".join(f"step {i}\n" for i in range(12))) is None


def test_a_run_stuck_on_a_stale_build_lock_is_unlocked_and_resubmitted(harness: Harness, tmp_path: Path) -> None:
    root = extensions_root(tmp_path)
    job = harness.script(
        "train.sbatch",
        f"""
if [[ $SUPERVISOR_ATTEMPT == 1 ]]; then
    echo "Using {root} as PyTorch extensions root..."
    sleep 300   # waits on {root}/fused_adam/lock forever
fi
echo "built fused_adam"
""",
    )
    harness.submit(
        {
            "name": "ext",
            "backend": "local",
            "workdir": str(harness.root / "w"),
            "stages": [{"name": "train", "script": str(job), "stall_timeout": 3, "retry_backoff": 0}],
        }
    )
    harness.start_daemon(poll="0.5s")
    data = harness.wait_state("ext", "succeeded", timeout=90)
    first, second = data["stages"][0]["attempts"]
    assert first["state"] == "cancelled" and first["cause"] == "extension_build_hang"
    assert second["state"] == "succeeded"
    assert not (root / "fused_adam" / "lock").exists()
    cleared = [e for e in data["events"] if e["kind"] == "lock_cleared"]
    assert len(cleared) == 1 and str(root / "fused_adam" / "lock") in cleared[0]["message"]
