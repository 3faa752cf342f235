"""The outbox's queue side: entries written in the event's own transaction, and what is still to send.

:func:`enqueue` runs inside the caller's transaction, so an event and its notifications commit or vanish
together; :mod:`supervisor.notify.outbox` delivers them later. An entry is ``pending`` until it is
``delivered`` or ``failed`` (a permanent refusal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from supervisor.notify.config import NotifyChannelSpec
from supervisor.notify.entries import EventFacts, entries_for
from supervisor.store.models import Event, OutboxEntry, Run

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


META = "_outbox"  # delivery bookkeeping inside the payload; stripped before rendering


def idempotency_key(entry: OutboxEntry) -> str:
    """Stable per entry across retries and restarts, distinct across databases.

    The creation time (microseconds) is part of it so that a fresh database reusing entry ids cannot
    hit the homeserver's txnId memory and have a new message swallowed as a repeat.
    """
    stamp = int(entry.created_at.timestamp() * 1_000_000)
    return f"sv-{entry.run_id}-{entry.id}-{stamp:x}"


def enqueue(
    session: Session,
    run: Run,
    event: Event,
    notify_specs: Sequence[NotifyChannelSpec | Mapping[str, Any]],
) -> list[OutboxEntry]:
    """Add one outbox entry per channel that wants ``event.kind``. Call inside the event's transaction.

    ``event`` must be flushed (its id known). The payload is the rendered neutral message; it holds
    event data only, never channel secrets (those are resolved at send time).
    """
    if event.id is None:
        raise ValueError("enqueue needs a flushed event (event.id is None)")
    facts = EventFacts(id=event.id, at=event.at, kind=event.kind, stage=event.stage, attempt=event.attempt,
                       message=event.message, data=event.data or {})
    entries = [OutboxEntry(run_id=run.id, channel=new.channel, event_id=event.id, kind=event.kind,
                           payload=new.payload, state=PENDING, tries=0, created_at=event.at)
               for new in entries_for(run.name, facts, notify_specs)]
    session.add_all(entries)
    return entries


def meta_of(entry: OutboxEntry) -> dict[str, Any]:
    meta = entry.payload.get(META)
    return dict(meta) if isinstance(meta, dict) else {}


def pending_count(session: Session) -> int:
    """Entries of every run still waiting for delivery (not delivered, not given up on)."""
    return session.scalar(select(func.count()).select_from(OutboxEntry).where(OutboxEntry.state == PENDING)) or 0


def undelivered(session: Session, run_id: int) -> list[dict[str, Any]]:
    """Entries of a run not (yet) delivered, oldest first, for ``supervisor show`` (JSON-ready)."""
    rows = session.scalars(
        select(OutboxEntry).where(OutboxEntry.run_id == run_id, OutboxEntry.state != DELIVERED).order_by(OutboxEntry.id)
    ).all()
    return [
        {
            "id": e.id,
            "channel": e.channel,
            "kind": e.kind,
            "state": e.state,
            "tries": e.tries,
            "last_error": e.last_error,
            "next_try_at": e.next_try_at.isoformat() if e.next_try_at is not None else None,
            "merged_into": meta_of(e).get("merged_into"),
        }
        for e in rows
    ]
