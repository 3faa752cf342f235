"""The nodes a run keeps out of its jobs (``sbatch --exclude``): which are in force, recording one, lifting some.

Recorded in the transaction of the decision that made the exclusion (``Repository.apply``), with its event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from supervisor.domain import core, hostlist
from supervisor.domain.types import EventKind
from supervisor.store.models import ExcludedNode, Run

if TYPE_CHECKING:
    from supervisor.store.repository import Repository

EXCLUDE_FOR = timedelta(hours=24)


def in_force(session: Session, run_id: int, now: datetime) -> tuple[str, ...]:
    """The run's exclusions in force, as plain node names (a row an older version wrote as a whole
    allocation's host list, or a host no node is called, is never passed to sbatch)."""
    return in_force_by_run(session, [run_id], now).get(run_id, ())


def in_force_by_run(session: Session, run_ids: Sequence[int], now: datetime) -> dict[int, tuple[str, ...]]:
    """:func:`in_force` of many runs in one query; a run with none in force is absent."""
    found: dict[int, list[str]] = {}
    for run_id, node in session.execute(select(ExcludedNode.run_id, ExcludedNode.node).where(
            ExcludedNode.run_id.in_(list(run_ids)), ExcludedNode.until > now)):
        if hostlist.is_node_name(node):
            found.setdefault(run_id, []).append(node)
    return {run_id: tuple(sorted(nodes)) for run_id, nodes in found.items()}


def record(repo: Repository, session: Session, run: Run, action: core.ExcludeNode, now: datetime) -> None:
    """Exclude ``action.node`` for :data:`EXCLUDE_FOR` from now (a second time: from now again)."""
    until = now + EXCLUDE_FOR
    row = session.scalar(select(ExcludedNode).where(ExcludedNode.run_id == run.id,
                                                    ExcludedNode.node == action.node))
    if row is None:
        session.add(ExcludedNode(run_id=run.id, node=action.node, reason=action.reason, evidence=action.evidence,
                                 line=action.line, until=until))
    else:
        row.until, row.reason, row.evidence, row.line = until, action.reason, action.evidence, action.line
    repo.event(session, run, EventKind.EXCLUDED_NODE,
               f"node {action.node} excluded until {until:%Y-%m-%d %H:%M}Z: {action.reason}",
               data={"node": action.node, "reason": action.reason, "evidence": action.evidence,
                     "line": action.line, "until": until.isoformat()})


def lift(repo: Repository, run_id: int, nodes: Sequence[str], why: str, stage: str | None = None,
         attempt: int | None = None) -> list[str]:
    """Forget the run's exclusions of ``nodes`` (they made its jobs impossible); returns those lifted."""
    with repo.sessions.begin() as session:
        run = session.get(Run, run_id)
        if run is None:
            return []
        lifted = sorted(session.scalars(select(ExcludedNode.node).where(
            ExcludedNode.run_id == run_id, ExcludedNode.node.in_(list(nodes)))))
        if not lifted:
            return []
        session.execute(delete(ExcludedNode).where(ExcludedNode.run_id == run_id, ExcludedNode.node.in_(lifted)))
        repo.event(session, run, EventKind.EXCLUDED_NODE, f"exclusion of {', '.join(lifted)} lifted: {why}",
                   stage, attempt, {"lifted": lifted, "why": why})
        return lifted
