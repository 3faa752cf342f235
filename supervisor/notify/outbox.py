"""The notification outbox: written with the state change, delivered later, at least once, in order.

Rules (see also docs/webhook-schema.md):

* :func:`enqueue` runs inside the caller's transaction, so an event and its notifications commit or
  vanish together.
* Per (run, channel) entries go out in id order. A transient failure (timeout, connection error,
  5xx, 429) blocks the later entries of that (run, channel) until it goes through; the retry waits
  ``base_delay_s * 2**(tries-1)`` capped at ``max_delay_s``, or the channel's Retry-After. A
  permanent failure (other 4xx) marks the entry ``failed`` and the queue moves on.
* Coalescing: when an entry is about to be sent, the consecutive pending entries right behind it
  that have the same kind and were created within ``coalesce_window_s`` of it are folded into one
  message that counts them and lists each event. A new entry whose kind equals that of the
  previous delivered entry of its (run, channel), created within the window of it, is held until
  the window after its own creation has passed, so a burst (20 resubmissions in a minute) produces
  the first message at once and one "x19" message at the end of the window.
* The batch is written to the DB (``payload._outbox``) before the first try, so a retry — also one
  after SIGKILL — sends exactly the same batch with the same idempotency key (Matrix txnId,
  ``Idempotency-Key``). Events folded into a batch are never sent again on their own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from supervisor.domain.errors import NotifyConfigError, NotifyError
from supervisor.domain.policy import Backoff
from supervisor.domain.ports import Channel, Clock, StatefulChannel
from supervisor.notify.config import build_channels
from supervisor.notify.queue import DELIVERED, FAILED, META, PENDING, idempotency_key, meta_of
from supervisor.notify.render import coalesce, render
from supervisor.store.models import ChannelState, OutboxEntry, Run

log = structlog.get_logger(__name__)


_SCAN = 500  # entries of one (run, channel) looked at per step: more than any sane batch


@dataclass(frozen=True)
class DeliveryPolicy:
    base_delay_s: float = 30.0
    max_delay_s: float = 3600.0
    coalesce_window_s: float = 60.0
    max_batch: int = 200
    # None: transient failures are retried for ever (at-least-once); a number gives up after it.
    max_tries: int | None = None
    # Upper bound on sends per deliver() call so one tick cannot stall on a huge backlog.
    max_sends: int | None = None


@dataclass
class DeliveryReport:
    delivered: int = 0  # outbox entries delivered (a batch of 5 counts 5)
    messages: int = 0  # messages actually sent
    failed: int = 0
    retrying: int = 0
    errors: list[str] = field(default_factory=list)


ChannelMap = Mapping[int, Mapping[str, Channel]] | Callable[[int], Mapping[str, Channel]]
SessionFactory = Callable[[], Session]


class RunChannels:
    """Channels per run built from ``runs.spec['notify']``, cached; secrets read from ``env``."""

    def __init__(self, session_factory: SessionFactory, env: Mapping[str, str] | None = None) -> None:
        self._session_factory = session_factory
        self._env: Mapping[str, str] = os.environ if env is None else env
        self._cache: dict[int, dict[str, Channel]] = {}

    def __call__(self, run_id: int) -> Mapping[str, Channel]:
        if run_id not in self._cache:
            with self._session_factory() as s:
                run = s.get(Run, run_id)
                specs = list((run.spec or {}).get("notify") or []) if run is not None else []
            self._cache[run_id] = build_channels(specs, self._env)
        return self._cache[run_id]


def _channels_for(channels: ChannelMap, run_id: int) -> Mapping[str, Channel]:
    if callable(channels):
        return channels(run_id)
    return channels.get(run_id, {})


def deliver(
    session_factory: SessionFactory,
    channels: ChannelMap,
    clock: Clock,
    *,
    policy: DeliveryPolicy | None = None,
    run_ids: Collection[int] | None = None,
) -> DeliveryReport:
    """Send what is due. Safe to call every tick and from a restarted process.

    ``channels`` maps run id -> channel key -> Channel (or is a callable doing so, e.g.
    :class:`RunChannels`). Entries whose channel is missing stay pending.
    """
    policy = policy or DeliveryPolicy()
    report = DeliveryReport()
    with session_factory() as s:
        query = select(OutboxEntry.run_id, OutboxEntry.channel).where(OutboxEntry.state == PENDING)
        if run_ids is not None:
            query = query.where(OutboxEntry.run_id.in_(list(run_ids)))
        groups = list(dict.fromkeys((r, c) for r, c in s.execute(query.order_by(OutboxEntry.id)).all()))
    broken: set[int] = set()
    for run_id, key in groups:
        if run_id in broken:
            continue
        try:
            channel = _channels_for(channels, run_id).get(key)
        except NotifyConfigError as exc:
            broken.add(run_id)
            _note_config_problem(session_factory, run_id, None, str(exc), report)
            continue
        if channel is None:
            _note_config_problem(session_factory, run_id, key, f"channel {key} is not configured", report)
            continue
        while policy.max_sends is None or report.messages < policy.max_sends:
            if not _step(session_factory, run_id, key, channel, clock, policy, report):
                break
    return report


def _note_config_problem(
    session_factory: SessionFactory, run_id: int, key: str | None, message: str, report: DeliveryReport
) -> None:
    # Not a delivery try: the entry stays pending and unblocked; the note is for `supervisor show`.
    log.warning("notify.channel_unavailable", run_id=run_id, channel=key, error=message)
    report.errors.append(message)
    with session_factory() as s, s.begin():
        query = update(OutboxEntry).where(OutboxEntry.run_id == run_id, OutboxEntry.state == PENDING)
        if key is not None:
            query = query.where(OutboxEntry.channel == key)
        s.execute(query.values(last_error=message))


def _message(entry: OutboxEntry) -> dict[str, Any]:
    return {k: v for k, v in entry.payload.items() if k != META}


def _held_until(s: Session, head: OutboxEntry, window: timedelta) -> datetime | None:
    """End of the burst window when ``head`` continues a burst that was already announced."""
    prev = s.scalars(
        select(OutboxEntry)
        .where(
            OutboxEntry.run_id == head.run_id,
            OutboxEntry.channel == head.channel,
            OutboxEntry.state == DELIVERED,
            OutboxEntry.id < head.id,
        )
        .order_by(OutboxEntry.id.desc())
        .limit(1)
    ).first()
    if prev is None or prev.kind != head.kind or head.created_at - prev.created_at > window:
        return None
    return head.created_at + window


@dataclass(frozen=True)
class _Claim:
    """One batch written down and its try counted (phase 1), ready to go out."""

    head_id: int
    tries: int
    ids: list[int]
    message: dict[str, Any]
    idempotency_key: str
    state: dict[str, Any] | None  # the channel's stored state; None for a channel without any


def _step(
    session_factory: SessionFactory,
    run_id: int,
    key: str,
    channel: Channel,
    clock: Clock,
    policy: DeliveryPolicy,
    report: DeliveryReport,
) -> bool:
    """Try the oldest pending entry of (run, channel). True when the queue may go on."""
    # Phase 1: pick the batch, write it down and count the try, before any byte goes out.
    claim = _claim(session_factory, run_id, key, channel, clock.now(), policy)
    if claim is None:
        return False
    bound = log.bind(run_id=run_id, channel=key, outbox_id=claim.head_id, kind=claim.message.get("kind"),
                     tries=claim.tries)
    # Phase 2: the network, outside any transaction (SQLite holds its write lock per transaction).
    outcome, new_state = _send(channel, claim, bound)
    # Phase 3: record the outcome.
    return _record(session_factory, run_id, key, channel, claim, outcome, new_state, clock.now(), policy, report,
                   bound)


def _claim(
    session_factory: SessionFactory, run_id: int, key: str, channel: Channel, now: datetime, policy: DeliveryPolicy
) -> _Claim | None:
    """The batch headed by the oldest pending entry, with its try counted; None when nothing is due."""
    with session_factory() as s, s.begin():
        pending = s.scalars(
            select(OutboxEntry)
            .where(OutboxEntry.run_id == run_id, OutboxEntry.channel == key, OutboxEntry.state == PENDING)
            .order_by(OutboxEntry.id)
            .limit(_SCAN)
        ).all()
        if not pending:
            return None
        head = pending[0]
        if head.next_try_at is not None and head.next_try_at > now:
            return None
        meta = meta_of(head)
        if "batch" not in meta and not _write_batch(s, head, pending, meta, now, policy):
            return None
        followers = _batch_members(s, pending, meta["batch"])
        claimed = s.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == head.id, OutboxEntry.tries == head.tries, OutboxEntry.state == PENDING)
            .values(tries=head.tries + 1)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]  # CursorResult at runtime
            # Another sender took it between our read and our write: leave the queue to it.
            return None
        state: dict[str, Any] | None = None
        if isinstance(channel, StatefulChannel):
            row = s.scalars(
                select(ChannelState).where(ChannelState.run_id == run_id, ChannelState.channel == key)
            ).first()
            state = dict(row.data) if row is not None else {}
        return _Claim(
            head_id=head.id,
            tries=head.tries + 1,
            ids=[head.id, *(e.id for e in followers)],
            message=coalesce([_message(head), *(_message(e) for e in followers)]),
            idempotency_key=idempotency_key(head),
            state=state,
        )


def _write_batch(
    s: Session, head: OutboxEntry, pending: Sequence[OutboxEntry], meta: dict[str, Any], now: datetime,
    policy: DeliveryPolicy,
) -> bool:
    """Fold the entries right behind ``head`` into its batch and store it (``meta["batch"]``).

    False when ``head`` continues an announced burst whose window is still open: it waits for it."""
    window = timedelta(seconds=policy.coalesce_window_s)
    held = _held_until(s, head, window)
    if held is not None and now < held:
        head.next_try_at = held
        return False
    followers: list[OutboxEntry] = []
    for entry in pending[1:]:
        if (
            entry.kind != head.kind
            or entry.created_at - head.created_at > window
            or len(followers) + 1 >= policy.max_batch
        ):
            break
        followers.append(entry)
    meta["batch"] = [e.id for e in followers]
    head.payload = {**head.payload, META: meta}
    for entry in followers:
        entry.payload = {**entry.payload, META: {"merged_into": head.id}}
        entry.next_try_at = None
    return True


def _batch_members(s: Session, pending: Sequence[OutboxEntry], batch: list[int]) -> list[OutboxEntry]:
    """The entries of a stored batch, in id order, also those beyond the ``_SCAN`` rows read."""
    by_id = {e.id: e for e in pending}
    followers = [by_id[i] for i in batch if i in by_id]
    if len(followers) != len(batch):
        missing = set(batch) - set(by_id)
        followers += list(s.scalars(select(OutboxEntry).where(OutboxEntry.id.in_(missing))).all())
        followers.sort(key=lambda e: e.id)
    return followers


def _send(
    channel: Channel, claim: _Claim, bound: structlog.typing.FilteringBoundLogger
) -> tuple[NotifyError | None, dict[str, Any] | None]:
    """Send the claimed batch: (None, new channel state or None) when it went out, (the error, None) else."""
    try:
        if claim.state is not None and isinstance(channel, StatefulChannel):
            return None, channel.send_with_state(claim.message, idempotency_key=claim.idempotency_key,
                                                 state=claim.state)
        channel.send(claim.message, idempotency_key=claim.idempotency_key)
        return None, None
    except NotifyError as exc:
        return exc, None
    except Exception as exc:  # a bug in a channel must not kill the sender loop
        # Only the type: the text of an arbitrary exception may quote a secret-bearing URL.
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else None
        bound.error("notify.channel_bug", error_type=type(exc).__name__, where=where)
        return NotifyError(f"{channel.kind}: unexpected {type(exc).__name__}", permanent=False), None


def _record(
    session_factory: SessionFactory,
    run_id: int,
    key: str,
    channel: Channel,
    claim: _Claim,
    outcome: NotifyError | None,
    new_state: dict[str, Any] | None,
    done: datetime,
    policy: DeliveryPolicy,
    report: DeliveryReport,
    bound: structlog.typing.FilteringBoundLogger,
) -> bool:
    """Write down how the try went. True when the queue may go on (delivered, or given up on)."""
    with session_factory() as s, s.begin():
        rows = {e.id: e for e in s.scalars(select(OutboxEntry).where(OutboxEntry.id.in_(claim.ids))).all()}
        head = rows[claim.head_id]
        if outcome is None:
            for entry in rows.values():
                entry.state = DELIVERED
                entry.delivered_at = done
                entry.next_try_at = None
                entry.last_error = None
            if new_state is not None:
                _save_state(s, run_id, key, new_state)
            report.delivered += len(rows)
            report.messages += 1
            bound.info("notify.delivered", count=len(rows))
            return True
        error = _scrubbed(channel, str(outcome))
        report.errors.append(error)
        give_up = outcome.permanent or (policy.max_tries is not None and claim.tries >= policy.max_tries)
        if give_up:
            for entry in rows.values():
                entry.state = FAILED
                entry.next_try_at = None
                entry.last_error = error if entry.id == claim.head_id else f"merged into #{claim.head_id}: {error}"
            report.failed += len(rows)
            bound.warning("notify.failed", error=error, permanent=outcome.permanent)
            return True
        delay = _backoff(policy, claim.tries, outcome.retry_after)
        head.next_try_at = done + timedelta(seconds=delay)
        head.last_error = error
        report.retrying += 1
        bound.info("notify.retry", error=error, delay_s=delay)
        return False


def _backoff(policy: DeliveryPolicy, tries: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return max(0.0, retry_after)
    return Backoff(base=policy.base_delay_s, cap=policy.max_delay_s).delay(max(1, tries))


def _scrubbed(channel: Channel, text: str) -> str:
    scrub = getattr(channel, "scrub", None)
    return scrub(text) if callable(scrub) else text


def _save_state(s: Session, run_id: int, key: str, data: dict[str, Any]) -> None:
    row = s.scalars(select(ChannelState).where(ChannelState.run_id == run_id, ChannelState.channel == key)).first()
    if row is None:
        s.add(ChannelState(run_id=run_id, channel=key, data=data))
    else:
        row.data = data


def send_test(run: Run | str, channels: Mapping[str, Channel], clock: Clock) -> dict[str, str | None]:
    """Send a test message to each channel now, bypassing the outbox.

    Returns channel key -> None when delivered, else the (secret-free) error text.
    """
    name = run if isinstance(run, str) else run.name
    at = clock.now()
    message = render("test", name, None, None, None, f"Test notification sent at {at.isoformat()}", {})
    message["events"] = []
    results: dict[str, str | None] = {}
    for key, channel in channels.items():
        try:
            channel.send(message, idempotency_key=f"test-{uuid.uuid4().hex}")
        except NotifyError as exc:
            results[key] = _scrubbed(channel, str(exc))
        else:
            results[key] = None
        log.info("notify.test", run=name, channel=key, ok=results[key] is None)
    return results


__all__ = [
    "ChannelMap",
    "DeliveryPolicy",
    "DeliveryReport",
    "RunChannels",
    "StatefulChannel",
    "deliver",
    "send_test",
]
