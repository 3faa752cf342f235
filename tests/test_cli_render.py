"""What people read: log text is data, names never truncate, local time with a zone, no colour in a pipe."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from supervisor.store.db import open_database
from supervisor.store.models import Event, ExcludedNode, Run

from harness import Harness

# Lines as PyTorch and the NVCC extension builder print them; each one broke `show` or lost its prefix.
NVCC = "RuntimeError: NVCC timeout while building [/home/user/.cache/torch_extensions/fused_adam]"
RANK = ("[rank0]:[E1228 10:02:07.123456 2001 ProcessGroupNCCL.cpp:616] [Rank 0] Watchdog caught collective "
        "operation timeout: WorkNCCL(SeqNum=12, OpType=ALLREDUCE) ran for 600000 milliseconds")
AT = datetime(2025, 1, 31, 13, 2, 7, tzinfo=UTC)
ANSI = re.compile(r"\x1b\[")


def add_events(h: Harness, name: str, messages: list[str], *, stage: str = "a", attempt: int = 1) -> None:
    sessions = open_database(h.home)
    with sessions.begin() as session:
        run_id = session.scalar(select(Run.id).where(Run.name == name))
        for i, message in enumerate(messages):
            session.add(Event(run_id=run_id, at=AT + timedelta(seconds=i), kind="log_match", stage=stage,
                              attempt=attempt, message=message, data={}))


def run_spec(name: str = "r1", stage: str = "a") -> dict[str, object]:
    return {"name": name, "backend": "local", "stages": [{"name": stage, "command": ["true"]}]}


def test_log_text_with_brackets_is_shown_verbatim(harness: Harness) -> None:
    harness.submit(run_spec())
    add_events(harness, "r1", [NVCC, RANK])
    shown = harness.cli("show", "r1", "--all")
    flat = " ".join(shown.out.split())  # the message column folds; compare without the line breaks
    assert "[/home/user/.cache/torch_extensions/fused_adam]" in flat.replace(" ", "")
    assert "[rank0]:[E1228" in flat
    assert "[Rank0]Watchdog" in flat.replace(" ", "")


def test_diagnose_prints_bracketed_lines(harness: Harness, tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_text(f"starting\n{NVCC}\n{RANK}\n")
    result = harness.cli("diagnose", str(log))
    squeezed = "".join(result.out.split())
    assert "[/home/user/.cache/torch_extensions/fused_adam]" in squeezed
    assert "[rank0]:[E1228" in squeezed
    assert json.loads(harness.cli("diagnose", str(log), "--json").out)["matches"]


def test_status_in_80_columns_keeps_names_and_dates_whole(harness: Harness) -> None:
    harness.env["COLUMNS"] = "80"
    name, stage = "llama3-8b-sft-ultrachat", "train-long"
    harness.submit(run_spec(name, stage))
    result = harness.cli("status")
    assert all(len(line) <= 80 for line in result.out.splitlines()), result.out
    rows = [line for line in result.out.splitlines() if name in line]
    assert len(rows) == 1 and stage in rows[0]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z+\-0-9]+", rows[0]), rows[0]


@pytest.mark.parametrize(("tz", "shown"), [("UTC0", "2025-01-31 13:02:07 UTC"),
                                           ("ABC-3", "2025-01-31 16:02:07 ABC"),
                                           ("XYZ+5", "2025-01-31 08:02:07 XYZ")])
def test_tables_show_local_time_and_json_keeps_the_offset(harness: Harness, tz: str, shown: str) -> None:
    harness.env["TZ"] = tz
    harness.submit(run_spec())
    add_events(harness, "r1", ["hello"])
    assert shown in harness.cli("show", "r1").out
    events = harness.show("r1")["events"]
    assert events[-1]["at"] == "2025-01-31T13:02:07+00:00"


def test_events_table_has_attempts_and_says_what_it_leaves_out(harness: Harness) -> None:
    harness.env["COLUMNS"] = "200"
    harness.submit(run_spec())
    add_events(harness, "r1", [f"event number {i}" for i in range(40)], attempt=7)
    total = len(harness.show("r1")["events"])
    assert total == 41  # "registered" and the 40 above
    short = harness.cli("show", "r1").out
    header = next(line for line in short.splitlines() if line.lstrip().startswith("at "))
    assert header.split() == ["at", "kind", "stage", "attempt", "message"]
    assert "event number 39" in short and "event number 9" not in short
    assert f"last 30 of {total} events; --all for every one" in short
    row = next(line for line in short.splitlines() if "event number 39" in line)
    assert " 7 " in row
    full = harness.cli("show", "r1", "--all").out
    assert "event number 0" in full and "--all for every one" not in full


def test_show_lists_excluded_nodes(harness: Harness) -> None:
    harness.env["COLUMNS"] = "200"
    harness.submit(run_spec())
    sessions = open_database(harness.home)
    with sessions.begin() as session:
        run_id = session.scalar(select(Run.id).where(Run.name == "r1"))
        session.add(ExcludedNode(run_id=run_id, node="gpu-node-17", reason="[xid 79] fell off the bus",
                                 until=AT + timedelta(hours=6)))
    out = harness.cli("show", "r1").out
    row = next(line for line in out.splitlines() if "gpu-node-17" in line)
    assert "[xid 79] fell off the bus" in row


def test_show_json_lists_each_exclusions_reason_evidence_and_expiry(harness: Harness) -> None:
    from supervisor.app.service import Supervisor
    from supervisor.domain import core
    from supervisor.domain.types import RunState

    harness.submit(run_spec())
    line = "srun: error: gpu-node-17: task 3: Bus error"
    recorded = Supervisor(harness.home).apply(1, RunState.PENDING, [
        core.ExcludeNode("gpu-node-17", "bus_error in a attempt 1: named in the line", evidence=line, line=12)])
    assert recorded
    (excluded,) = json.loads(harness.cli("show", "r1", "--json").out)["excluded_nodes"]
    assert excluded["node"] == "gpu-node-17" and excluded["reason"].endswith("named in the line")
    assert (excluded["evidence"], excluded["line"]) == (line, 12)
    assert datetime.fromisoformat(excluded["until"]) > datetime.now(UTC)


def test_no_colour_when_not_a_terminal(harness: Harness) -> None:
    harness.submit(run_spec())
    for args in (("status",), ("show", "r1"), ("--help",)):
        result = harness.cli(*args)
        assert not ANSI.search(result.out + result.err), args


def test_help_shows_flags_without_a_type(harness: Harness) -> None:
    for command in ("status", "show", "daemon", "diagnose"):
        text = harness.cli(command, "--help").out
        assert "<bool>" not in text, text
        assert "--json" in text or "--exit-when-idle" in text


def test_submit_prints_the_name_and_nothing_else(harness: Harness) -> None:
    spec = harness.write_spec(run_spec())
    result = harness.cli("submit", str(spec))
    assert result.out == "r1\n" and result.err == ""
    asked = harness.cli("--log-level", "info", "submit", str(harness.write_spec(run_spec("r2"), "r2.yaml")))
    assert asked.out == "r2\n" and "registered" in asked.err


def test_status_of_many_runs_is_plain_columns_in_80_columns(harness: Harness) -> None:
    from supervisor.app.render import PLAIN_ROWS, STATUS_HEADERS

    harness.submit(run_spec("run-0000", "train"))
    with sqlite3.connect(harness.home / "supervisor.db") as conn:  # the same run under other names
        for i in range(1, PLAIN_ROWS + 1):
            conn.execute("INSERT INTO runs (name, uid, state, backend, spec_path, spec, workdir, reason, created_at,"
                         " updated_at) SELECT ?, uid, state, backend, spec_path, spec, workdir, reason, created_at,"
                         " updated_at FROM runs WHERE id = 1", (f"run-{i:04d}",))
            conn.execute("INSERT INTO stages (run_id, position, name, kind, state, budget_start, updated_at)"
                         " SELECT last_insert_rowid(), position, name, kind, state, budget_start, updated_at"
                         " FROM stages WHERE run_id = 1")
    harness.env["COLUMNS"] = "80"
    out = harness.cli("status").out
    lines = out.splitlines()
    assert not ANSI.search(out) and max(len(line) for line in lines) <= 80
    assert lines[0].split() == list(STATUS_HEADERS) and set(lines[1]) == {"\u2500"}
    assert [line.split()[:3] for line in lines[2:]] == [[r["name"], r["state"], r["stage"]] for r in harness.status()]
