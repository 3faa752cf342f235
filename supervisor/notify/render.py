"""The channel-neutral notification: what happened, as plain data each channel formats its own way.

Pure functions only: no clock, no I/O. The dict returned by :func:`render` is what the outbox stores
(JSON), so it holds event data only and never a channel secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from supervisor.domain.types import EventKind

MESSAGE_VERSION = 1

# How many individual events a coalesced message lists before "and N more".
MAX_LISTED_ITEMS = 10
_MAX_LOG_LINE = 500
_MAX_MESSAGE = 1500

# Keyed by event kind; "test" is `supervisor notify test`, which is no event of a run.
_SEVERITY: dict[str, str] = {
    EventKind.CRASHED: "error",
    EventKind.FAILED: "error",
    EventKind.RETRIES_EXHAUSTED: "error",
    EventKind.STALLED: "warning",
    EventKind.RESUBMITTED: "warning",
    EventKind.PAUSED_BY_OPERATOR: "warning",
    EventKind.NEEDS_ATTENTION: "error",
    EventKind.BUDGET_EXCEEDED: "warning",
    EventKind.STAGE_SUCCEEDED: "success",
    EventKind.SUCCEEDED: "success",
    "test": "info",
}

_VERB: dict[str, str] = {
    EventKind.CRASHED: "crashed",
    EventKind.RESUBMITTED: "was resubmitted",
    EventKind.STALLED: "stalled",
    EventKind.STAGE_SUCCEEDED: "stage succeeded",
    EventKind.SUCCEEDED: "succeeded",
    EventKind.FAILED: "failed",
    EventKind.PAUSED_BY_OPERATOR: "was paused by an operator",
    EventKind.RETRIES_EXHAUSTED: "ran out of retries",
    EventKind.NEEDS_ATTENTION: "needs attention",
    EventKind.BUDGET_EXCEEDED: "was paused: node-hour budget spent",
    "test": "test notification",
}


def _cap(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = text.rstrip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def render(
    event_kind: str,
    run: str,
    stage: str | None,
    attempt: int | None,
    job_id: str | None,
    message: str,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the neutral message for one event.

    Recognised ``data`` keys (all optional): ``log_line`` (or ``line``/``match``: the log line that
    triggered the event), ``progress_step``, ``progress_total``, ``eta_s`` (seconds),
    ``node_hours`` (spent so far by the run), ``count`` (events already folded into this one).
    """
    data = data or {}
    log_line = data.get("log_line", data.get("line", data.get("match")))
    step = _int(data.get("progress_step"))
    total = _int(data.get("progress_total"))
    progress: dict[str, Any] | None = None
    if step is not None:
        percent = round(100.0 * step / total, 1) if total else None
        progress = {"step": step, "total": total, "percent": percent}
    count = _int(data.get("count")) or 1
    return {
        "version": MESSAGE_VERSION,
        "kind": event_kind,
        "severity": _SEVERITY.get(event_kind, "info"),
        "title": title(event_kind, run, stage, attempt, count),
        "run": run,
        "stage": stage,
        "attempt": attempt,
        "job_id": job_id,
        "message": _cap(message, _MAX_MESSAGE) or "",
        "log_line": _cap(str(log_line), _MAX_LOG_LINE) if log_line is not None else None,
        "progress": progress,
        "eta_s": _num(data.get("eta_s")),
        "node_hours": _num(data.get("node_hours")),
        "count": count,
        # Filled by the outbox: which events (ids, times) this message stands for.
        "events": [],
        "items": [],
    }


def title(event_kind: str, run: str, stage: str | None, attempt: int | None, count: int = 1) -> str:
    verb = _VERB.get(event_kind, event_kind.replace("_", " "))
    where = run if stage is None else f"{run} / {stage}"
    if count > 1:
        return f"{where}: {verb} ×{count}"
    suffix = f" (attempt {attempt})" if attempt is not None else ""
    return f"{where}: {verb}{suffix}"


def coalesce(messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Fold consecutive messages of one kind into one that counts them and lists each event.

    The newest message supplies the headline facts (stage, attempt, job, progress, node-hours);
    ``events`` keeps every folded event so each stays represented exactly once.
    """
    if not messages:
        raise ValueError("nothing to coalesce")
    if len(messages) == 1:
        return dict(messages[0])
    last = dict(messages[-1])
    events: list[Any] = []
    items: list[dict[str, Any]] = []
    for m in messages:
        events.extend(m.get("events", []))
        sub_items = m.get("items") or [_item(m)]
        items.extend(sub_items)
    count = sum(int(m.get("count", 1)) for m in messages)
    last.update(
        count=count,
        events=events,
        items=items,
        title=title(str(last["kind"]), str(last["run"]), last.get("stage"), last.get("attempt"), count),
    )
    return last


def _item(m: Mapping[str, Any]) -> dict[str, Any]:
    ev = m.get("events") or [{}]
    return {
        "at": ev[0].get("at"),
        "stage": m.get("stage"),
        "attempt": m.get("attempt"),
        "job_id": m.get("job_id"),
        "message": m.get("message"),
    }


def facts(msg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Label/value pairs every channel shows, in a fixed order, skipping unknown ones."""
    out: list[tuple[str, str]] = [("Run", str(msg["run"]))]
    if msg.get("stage"):
        out.append(("Stage", str(msg["stage"])))
    if msg.get("attempt") is not None:
        out.append(("Attempt", str(msg["attempt"])))
    if msg.get("job_id"):
        out.append(("Job", str(msg["job_id"])))
    progress = msg.get("progress")
    if progress:
        text = f"step {progress['step']}"
        if progress.get("total"):
            text += f"/{progress['total']}"
        if progress.get("percent") is not None:
            text += f" ({progress['percent']}%)"
        out.append(("Progress", text))
    if msg.get("eta_s") is not None:
        out.append(("ETA", format_duration(float(msg["eta_s"]))))
    if msg.get("node_hours") is not None:
        out.append(("Node-hours", f"{float(msg['node_hours']):.1f}"))
    return out


def listed_items(msg: Mapping[str, Any]) -> tuple[list[str], int]:
    """One line per folded event (for coalesced messages) and how many were left out."""
    items = list(msg.get("items") or [])
    if int(msg.get("count", 1)) <= 1 or not items:
        return [], 0
    lines = []
    for it in items[:MAX_LISTED_ITEMS]:
        parts = [p for p in (it.get("at"), it.get("stage"), _attempt(it), it.get("job_id")) if p]
        head = " ".join(str(p) for p in parts)
        lines.append(f"{head}: {it.get('message') or ''}".strip(": "))
    return lines, max(0, len(items) - MAX_LISTED_ITEMS)


def _attempt(item: Mapping[str, Any]) -> str | None:
    return f"attempt {item['attempt']}" if item.get("attempt") is not None else None


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    if hours >= 24:
        return f"{hours // 24}d {hours % 24}h"
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


__all__ = ["MESSAGE_VERSION", "coalesce", "facts", "format_duration", "listed_items", "render", "title"]
