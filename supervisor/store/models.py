"""The SQLite schema, as SQLAlchemy 2 ORM classes. Alembic migrations in ``migrations/`` create it."""

from __future__ import annotations

from datetime import UTC as UTC_TZ
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """SQLite keeps no time zone: store naive UTC, hand back aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC_TZ).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC_TZ)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Random per registration; part of every job name so two supervisors never claim each other's jobs.
    uid: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    backend: Mapped[str] = mapped_column(String(16))
    spec_path: Mapped[str] = mapped_column(Text)
    # The validated spec as submitted: later edits of the file do not change a registered run.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    workdir: Mapped[str] = mapped_column(Text)
    # Why the run needs attention (or why it was paused by the supervisor itself); None otherwise.
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The campaign it was submitted with (campaigns.name), or None for a run of its own.
    campaign: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    stages: Mapped[list[Stage]] = relationship(
        back_populates="run", order_by="Stage.position", cascade="all, delete-orphan"
    )


class Stage(Base):
    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("run_id", "position"), UniqueConstraint("run_id", "name"))

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    # `retry` gives a fresh budget: attempts numbered below this do not count against max_attempts.
    budget_start: Mapped[int] = mapped_column(Integer, default=1)
    # prepare: the resolved dataset_prepared_path, and a key equal for stages that prepare the same dataset
    # there (stages/datasets.py `share_key`), both taken when the run was registered.
    share_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    prepared_path: Mapped[str | None] = mapped_column(Text, nullable=True, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    run: Mapped[Run] = relationship(back_populates="stages")
    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="stage", order_by="Attempt.number", cascade="all, delete-orphan"
    )


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("stage_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    tag: Mapped[str] = mapped_column(String(200), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    backend: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    nodes: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When the cluster first gave the current pending reason: a reason waiting never clears counts from here.
    reason_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The signature (or stall/operator) that ended this attempt, when the supervisor ended it.
    cause: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set before scancel so an attempt the supervisor cancelled is not taken for an operator's cancel.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The reaction chosen when the supervisor cancelled it (resubmit, fail, finish, ...).
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # A `finish` signature (e.g. "Training completed!") was seen: the stage's work is done.
    work_done: Mapped[bool] = mapped_column(Boolean, default=False)
    # Log tail position, so a restarted supervisor never re-reacts to an old line.
    log_tail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The last lines read were a hang hint (e.g. "Using X as PyTorch extensions root..."): a stall now has a
    # known cause and remedy. {"signature", "text", "line"}; cleared when more output follows.
    hang_hint: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    last_output_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    first_step_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    progress_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The step the attempt's first progress line showed (a resumed attempt starts past 0) and when the latest
    # step was seen: the step rate counts between the two, in this attempt only.
    first_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)  # the last finite training loss logged
    # Once it ended: its node-seconds used and wasted as `status` counts them (recorded times, no scheduler
    # figures), so `status` sums them in SQL. NULL until settled, and again whenever its row changes.
    settled_used_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    settled_wasted_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Identifies the newest checkpoint seen (its save time); a different one later is a sign of life.
    saved_mark: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The newest checkpoint when the attempt was submitted: a time limit after a different one was progress.
    start_mark: Mapped[str | None] = mapped_column(Text, nullable=True)

    stage: Mapped[Stage] = relationship(back_populates="attempts")


class Campaign(Base):
    """Runs submitted together from one campaign spec: a cap on their live jobs and a node-hour budget."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    spec_path: Mapped[str] = mapped_column(Text)
    # max_live_jobs, budget, allocation_node_hours as validated (the runs keep their own specs).
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Event(Base):
    """Append-only history of a run."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ExcludedNode(Base):
    __tablename__ = "excluded_nodes"
    __table_args__ = (UniqueConstraint("run_id", "node"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    node: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    # The log line that was the evidence against the node, and its number in the attempt's log.
    evidence: Mapped[str | None] = mapped_column(Text, nullable=True)
    line: Mapped[int | None] = mapped_column(nullable=True)
    until: Mapped[datetime] = mapped_column(UTCDateTime())


class OutboxEntry(Base):
    """A notification to deliver, written in the same transaction as the event that caused it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(64))  # "<index>:<kind>" in the run's notify list
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    tries: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ChannelState(Base):
    """Per run and channel memory a channel needs across restarts (e.g. the Matrix thread root)."""

    __tablename__ = "channel_state"
    __table_args__ = (UniqueConstraint("run_id", "channel"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


__all__ = ["Attempt", "Base", "Campaign", "ChannelState", "Event", "ExcludedNode", "OutboxEntry", "Run", "Stage"]
