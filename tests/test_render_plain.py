"""`status` above a few hundred runs: plain columns, the rows and layout of the Rich table, in 80 columns."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from supervisor.app import render


def rich_lines(rows: list[dict[str, Any]], width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(render.status_table(rows))
    return [line.rstrip() for line in console.export_text().splitlines()]


def row(name: str, **kw: Any) -> dict[str, Any]:
    data = {"name": name, "state": "running", "stage": "train", "attempt": 2, "job_id": "1234567",
            "updated_at": "2026-12-02T07:00:00+00:00", "backend": "slurm", "progress": None, "reason": None,
            "pending_reason": None, "queued_for_s": None}
    data.update(kw)
    return data


ROWS = [
    row("llama3-8b-sft-ultrachat", progress={"step": 800, "total": 1000, "fraction": 0.8}),
    row("r2", state="queued", stage="prepare-the-dataset", attempt=1,
        pending_reason="ReqNodeNotAvail,_UnavailableNodes:gpu[01-04]", queued_for_s=90061),
    row("r3", state="needs_attention", reason="stage train failed 3 times: [rank0] NCCL timeout"),
    row("r4", state="pending", stage=None, attempt=None, job_id=None),
    row("训练-任务", state="succeeded", stage="合并", progress={"step": 37, "total": None, "fraction": None}),
]


@pytest.mark.parametrize("width", [200, 120])
def test_plain_lines_are_the_rich_tables_lines(width: int) -> None:
    assert render.status_lines(ROWS, width) == rich_lines(ROWS, width)


def test_in_80_columns_typical_rows_fold_as_the_rich_table_folds() -> None:
    rows = [row(f"run-{i:05d}", job_id=f"{10000 + i}", progress={"step": 800, "total": 1000, "fraction": 0.8})
            for i in range(3)] + [row("run-00003", state="succeeded", stage="merge", attempt=1, job_id="10004")]
    lines = render.status_lines(rows, 80)
    assert lines == rich_lines(rows, 80) and len(lines) > len(rows) + 2


def test_plain_lines_fit_in_80_columns_and_keep_names_and_times_whole() -> None:
    rows = [row("llama3-8b-sft-ultrachat", stage="train-long", progress={"step": 800, "total": 1000, "fraction": 0.8}),
            row("r2", state="queued", stage="prepare", attempt=1, pending_reason="Priority", queued_for_s=3600),
            row("r3", state="needs_attention", reason="stage train failed 3 times: [rank0] NCCL timeout"),
            row("r4", state="pending", stage=None, attempt=None, job_id=None)]
    *table, note = render.status_lines(rows, 80)
    assert max(len(line) for line in table) <= 80
    rule = next(i for i, line in enumerate(table) if line.startswith("\u2500"))
    assert table[rule - 1].startswith("run ") and table[rule - 1].rstrip().endswith("updated")
    starts = [line for line in table[rule + 1:] if line[:1] != " "]
    assert [line.split()[0] for line in starts] == [r["name"] for r in rows]
    for r, first in zip(rows, starts, strict=True):
        assert "2026-12-02 " in first and (r["stage"] or "") in first
    assert note == "r3 needs attention: stage train failed 3 times: [rank0] NCCL timeout"


def test_a_cell_wider_than_its_column_continues_under_itself() -> None:
    lines = render.status_lines([row("r1", pending_reason="Priority", queued_for_s=5, state="queued")], 70)
    start, end = lines[0].index("progress"), lines[0].index("updated")
    under = [line[start:end].strip() for line in lines[2:]]
    assert len(under) > 1 and under == ["waiting:", "Priority", "5s"]


def test_names_too_long_for_the_width_fold_the_headers_not_the_names() -> None:
    long = row("a-run-whose-name-takes-most-of-the-line-by-itself", stage="a-stage-name-just-as-long")
    lines = render.status_lines([long], 80)
    rule = next(i for i, line in enumerate(lines) if line.startswith("\u2500"))
    assert rule > 1 and lines[rule - 1].startswith("run ")  # the headers end on the line above the rule
    assert lines[rule + 1].startswith(long["name"] + "  ") and long["stage"] in lines[rule + 1]
