"""The log watcher between tailer/scanner and the core: what it reports for one attempt's log."""

from __future__ import annotations

from pathlib import Path

from supervisor.domain import verdict
from supervisor.domain.types import LogMatch, Progress, SignatureAction, StageKind
from supervisor.logs.follow import LogCursor, LogWatcher
from supervisor.logs.scanner import Catalogue
from supervisor.stages import kind_for


def test_reads_only_new_lines_and_reports_where_it_stopped(tmp_path: Path) -> None:
    log = tmp_path / "train-1-7.log"
    log.write_text(" 10%|#         | 10/100 [00:01<00:09,  1.67s/it]\rRuntimeError: NVCC timeout\n")
    watcher = LogWatcher()
    catalogue = watcher.catalogue(1, "r", [])
    progress = kind_for(StageKind.SCRIPT).progress
    seen = watcher.read(catalogue, LogCursor(str(log), None, None), progress)
    assert [m.signature for m in seen.matches] == ["nvcc_timeout"] and seen.new_output
    assert seen.progress == Progress(step=10, total=100)
    again = watcher.read(catalogue, LogCursor(str(log), seen.tail["log_tail"], None), progress)
    assert again.matches == () and not again.new_output and again.tail == {}


def test_transfer_progress_comes_from_rsync(tmp_path: Path) -> None:
    log = tmp_path / "transfer-1-L1.log"
    log.write_text(
        "  1,234,567  45%  1.23MB/s  0:00:12 (xfr#3, to-chk=5/10)\r"
        "  2,000,000  80%  1.20MB/s  0:00:03 (xfr#4, to-chk=2/10)\n"
    )
    watcher = LogWatcher()
    seen = watcher.read(watcher.catalogue(1, "r", []), LogCursor(str(log), None, None),
                        kind_for(StageKind.TRANSFER).progress)
    assert seen.progress == Progress(step=80, total=100)


def m(name: str, action: SignatureAction, line: int) -> LogMatch:
    return LogMatch(signature=name, action=action, line=line, text=name)


def test_actionable_keeps_finishes_and_the_root_cause() -> None:
    catalogue = Catalogue.load()

    def actionable(matches: list[LogMatch]) -> tuple[LogMatch, ...]:
        return verdict.read(catalogue.with_roles(matches)).matches

    matches = [
        m("child_failed_error", SignatureAction.RESUBMIT, 9),
        m("extension_build_hang", SignatureAction.RESUBMIT, 1),
        m("nccl_watchdog_timeout", SignatureAction.RESUBMIT, 5),
        m("training_completed", SignatureAction.FINISH, 3),
    ]
    assert [x.signature for x in actionable(matches)] == ["training_completed", "nccl_watchdog_timeout"]
    wrapper_only = [m("child_failed_error", SignatureAction.RESUBMIT, 9)]
    assert [x.signature for x in actionable(wrapper_only)] == ["child_failed_error"]
    hint_only = [m("extension_build_hang", SignatureAction.RESUBMIT, 1)]
    assert actionable(hint_only) == ()
