"""What `status` and `show` say about a job that waits, and about a run that needs a person."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from supervisor.app import render


def _text(renderable: Any, width: int = 120) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def _row(**kw: Any) -> dict[str, Any]:
    row = {"name": "llama-8b", "state": "running", "stage": "train", "attempt": 1, "job_id": "42",
           "updated_at": "2026-12-02T07:00:00+00:00", "backend": "slurm", "progress": None, "reason": None,
           "pending_reason": None, "queued_for_s": None}
    row.update(kw)
    return row


def test_status_shows_what_a_queued_job_waits_for_and_since_when() -> None:
    out = _text(render.status_table([_row(pending_reason="PartitionNodeLimit", queued_for_s=125)]))
    assert "waiting: PartitionNodeLimit 2m05s" in out


def test_progress_wins_over_the_wait_once_the_job_runs() -> None:
    out = _text(render.status_table([_row(progress={"step": 5, "total": 10}, pending_reason="Resources")]))
    assert "5/10" in out and "waiting" not in out


def test_a_run_that_needs_attention_says_why_under_the_table() -> None:
    why = "job 42 cannot start: PartitionNodeLimit (more nodes than the partition has)"
    out = _text(render.status_table([_row(state="needs_attention", reason=why), _row(name="other")]))
    assert f"llama-8b needs attention: {why}" in " ".join(out.split())
    assert "other needs attention" not in out
