"""The log watcher between tailer/scanner and the core: what it reports for one attempt's log."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from supervisor.domain import verdict
from supervisor.domain.errors import SignatureError
from supervisor.domain.types import LogMatch, Progress, SignatureAction, StageKind
from supervisor.logs.follow import PEEK_LIMIT, LogCursor, LogWatcher, worth_a_pass
from supervisor.logs.scanner import Catalogue, ScanResult
from supervisor.stages import kind_for


def test_reads_only_new_lines_and_reports_where_it_stopped(tmp_path: Path) -> None:
    log = tmp_path / "train-1-7.log"
    log.write_text(" 10%|#         | 10/100 [00:01<00:09,  1.67s/it]\rRuntimeError: NVCC timeout\n")
    watcher = LogWatcher()
    catalogue = watcher.catalogue("r", [])
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
    seen = watcher.read(watcher.catalogue("r", []), LogCursor(str(log), None, None),
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


# ---- what a log wake-up steps -------------------------------------------------------------------------

BAR = "  5%|#         | 50/1000 [00:10<03:10,  5.00it/s]\n"
OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
HINT = "Using /home/u/.cache/torch_extensions/py311_cu121 as PyTorch extensions root...\n"


def scanned(lines: str, entries: object = None) -> list[LogMatch]:
    return Catalogue.load(entries).scan(lines.encode(), 1)


def test_only_lines_the_core_acts_on_are_worth_a_pass() -> None:
    assert not worth_a_pass(scanned(BAR * 3 + "{'loss': 1.2, 'epoch': 0.1}\nSaving model checkpoint\n"), 200)
    assert worth_a_pass(scanned(BAR + OOM), 200)  # a root cause
    assert worth_a_pass(scanned("Training completed! Saving trained model to /out.\n"), 60)  # a finish
    assert worth_a_pass(scanned("torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"), 60)
    assert not worth_a_pass(scanned(HINT), 90)  # a hang hint explains a stall, which only time tells
    benign = [{"name": "benign", "patterns": ["harmless warning"], "action": "ignore"}]
    assert not worth_a_pass(scanned("a harmless warning\n", benign), 20)
    # Beyond PEEK_LIMIT unread bytes the pass reads them anyway: the stored offset never falls far behind.
    assert not worth_a_pass([], PEEK_LIMIT)
    assert worth_a_pass([], PEEK_LIMIT + 1)


class CountingCatalogue:
    """A real catalogue that counts the bytes it is asked to scan."""

    def __init__(self) -> None:
        self.catalogue = Catalogue.load()
        self.names_nodes = self.catalogue.names_nodes
        self.scanned = 0

    def scan_chunk(self, data: bytes, first_line: int) -> ScanResult:
        self.scanned += len(data)
        return self.catalogue.scan_chunk(data, first_line)


def test_peek_reads_each_new_line_once_and_says_when_the_run_needs_a_pass(tmp_path: Path) -> None:
    log = tmp_path / "train-1-L1.log"
    log.write_text(BAR * 2)
    watcher = LogWatcher()
    counting = CountingCatalogue()
    catalogue = cast(Catalogue, counting)
    cursor = LogCursor(str(log), None, None)  # nothing stored yet: no pass has read this log
    assert watcher.peek(cursor, lambda: catalogue) is False
    assert watcher.peek(cursor, lambda: catalogue) is False
    assert counting.scanned == 2 * len(BAR)  # the unchanged log was not read again
    with log.open("a") as out:
        out.write(BAR)
    assert watcher.peek(cursor, lambda: catalogue) is False
    assert counting.scanned == 3 * len(BAR)  # only the new line
    with log.open("a") as out:
        out.write(OOM)
    assert watcher.peek(cursor, lambda: catalogue) is True
    # Until a pass stores a new offset, the next peek starts over there: a pass that failed is asked again.
    assert watcher.peek(cursor, lambda: catalogue) is True
    assert counting.scanned == 3 * len(BAR) + len(OOM) + log.stat().st_size
    # The pass read the log to its end: what comes after that is all a peek looks at.
    seen = watcher.read(counting.catalogue, cursor, kind_for(StageKind.SCRIPT).progress)
    read_up_to = LogCursor(str(log), seen.tail["log_tail"], None)
    with log.open("a") as out:
        out.write(BAR)
    assert watcher.peek(read_up_to, lambda: catalogue) is False
    assert watcher.peek(LogCursor(str(tmp_path / "none.log"), None, None), lambda: catalogue) is False
    assert watcher.peek(LogCursor("train-%j.log", None, None), lambda: catalogue) is False


# The order a loaded 3-node job printed them in (CI, 2026-12-03): the batch host's line first, srun's later.
STEPD_NODE_FAILURE = ("slurmstepd-node01: error: *** JOB 239 ON node01 CANCELLED AT 2026-12-03T09:33:55 DUE TO "
                      "NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS ***\n")
SRUN_NODE_FAILURE = "srun: error: Node failure on node02\n"


def test_a_node_failure_line_naming_no_node_waits_for_the_line_that_names_it(tmp_path: Path) -> None:
    log = tmp_path / "train-1-L1.log"
    log.write_text("node01 up\nnode02 up\nnode03 up\n" + STEPD_NODE_FAILURE)
    watcher = LogWatcher()
    catalogue = watcher.catalogue("r", [])
    cursor = LogCursor(str(log), None, None)
    assert watcher.peek(cursor, lambda: catalogue) is False  # a pass now would not know which node died
    with log.open("a") as out:
        out.write(SRUN_NODE_FAILURE)
    assert watcher.peek(cursor, lambda: catalogue) is True
    seen = watcher.read(catalogue, cursor, kind_for(StageKind.SCRIPT).progress)
    cause = verdict.read(seen.matches).cause
    assert cause is not None and (cause.signature, cause.line, cause.node) == ("slurm_node_failure", 4, "node02")
    # Alone, the line still decides at the interval pass (which asks the scheduler which node is down).
    assert not worth_a_pass(scanned(STEPD_NODE_FAILURE), 200, catalogue.names_nodes)
    # A fault no line of its signature names a node for (an ECC error) needs no waiting.
    assert worth_a_pass(scanned("RuntimeError: CUDA error: uncorrectable ECC error encountered\n"), 80,
                        catalogue.names_nodes)
    assert verdict.read(scanned(STEPD_NODE_FAILURE)).cause is not None


def test_peek_of_a_chatty_log_asks_for_a_pass_once_enough_is_unread(tmp_path: Path) -> None:
    log = tmp_path / "train-1-L1.log"
    log.write_text(BAR * (PEEK_LIMIT // len(BAR)))
    watcher = LogWatcher()
    catalogue = watcher.catalogue("r", [])
    cursor = LogCursor(str(log), None, None)
    assert watcher.peek(cursor, lambda: catalogue) is False
    with log.open("a") as out:
        out.write(BAR * 2)
    assert watcher.peek(cursor, lambda: catalogue) is True


def test_runs_with_the_same_signatures_share_one_compiled_catalogue() -> None:
    watcher = LogWatcher()
    own = [{"name": "mine", "patterns": ["my own failure"], "action": "fail"}]
    assert watcher.catalogue("a", []) is watcher.catalogue("b", [])
    assert watcher.catalogue("a", own) is watcher.catalogue("b", [dict(own[0])])
    assert watcher.catalogue("a", own) is not watcher.catalogue("a", [])
    assert watcher.catalogue("a", own).spec("mine") is not None


def test_the_least_recently_used_catalogue_is_dropped_first() -> None:
    watcher = LogWatcher(catalogues=3)

    def own(i: int) -> Catalogue:
        return watcher.catalogue("r", [{"name": "mine", "patterns": [f"failure number {i}"], "action": "fail"}])

    builtin = watcher.catalogue("r", [])
    first, _ = own(1), own(2)
    assert watcher.catalogue("r", []) is builtin  # used again: the oldest is now own(1)
    own(3)
    assert watcher.catalogue("r", []) is builtin and own(1) is not first
    own(4), own(5)
    assert watcher.catalogue("r", []) is not builtin


def test_signatures_that_do_not_load_name_their_run_and_are_not_kept() -> None:
    watcher = LogWatcher()
    bad = [{"name": "Bad Name", "patterns": ["x"], "action": "fail"}]
    for name in ("first", "second"):
        with pytest.raises(SignatureError, match=f"run {name} signatures"):
            watcher.catalogue(name, bad)
