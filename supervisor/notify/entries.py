"""What the outbox gets for one event, decided without a database: one message per channel that wants it.

:func:`supervisor.notify.queue.enqueue` writes these through the ORM in the event's transaction;
`submit` writes them with plain SQL (:mod:`supervisor.store.registration`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from supervisor.notify.config import NotifyChannelSpec, parse_specs
from supervisor.notify.render import render


@dataclass(frozen=True)
class NewEntry:
    channel: str  # "<index>:<kind>" in the run's notify list
    payload: dict[str, Any]


@dataclass(frozen=True)
class EventFacts:
    id: int
    at: datetime
    kind: str
    stage: str | None
    attempt: int | None
    message: str
    data: Mapping[str, Any]


def entries_for(run_name: str, event: EventFacts,
                notify_specs: Sequence[NotifyChannelSpec | Mapping[str, Any]]) -> list[NewEntry]:
    """The rendered neutral message, for each channel that wants ``event.kind``. Payloads hold event data only,
    never channel secrets (those are resolved at send time)."""
    data = dict(event.data)
    job_id = data.get("job_id")
    entries: list[NewEntry] = []
    for index, spec in enumerate(parse_specs(notify_specs)):
        if not spec.wants(event.kind):
            continue
        message = render(event.kind, run_name, event.stage, event.attempt,
                         None if job_id is None else str(job_id), event.message, data)
        message["events"] = [
            {"id": event.id, "at": event.at.isoformat(), "stage": event.stage, "attempt": event.attempt}
        ]
        entries.append(NewEntry(channel=f"{index}:{spec.kind}", payload=message))
    return entries
