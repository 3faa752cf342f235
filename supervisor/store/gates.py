"""What other runs say about a run's next submission: the campaign's job cap and budget, and prepares of the
same dataset or into the same directory. Read with plain SQL (the daemon's Session, or `show`'s read-only
file), turned into the core's :class:`~supervisor.domain.core.Gate`; the core decides what it means.

A prepare stage carries a share key and its resolved ``dataset_prepared_path`` from registration. Another
run's prepare stage with the same key that has attempts is the one the run follows: its dataset is on disk
(SUCCEEDED), being made (LIVE), or, for a run of the same campaign, gone for good (FAILED). A live prepare
with another key into the same directory holds the directory (BUSY): two ``axolotl preprocess`` never write
one directory at once, and a retry's cleanup never runs while another run's preprocess writes there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from supervisor.domain import accounting
from supervisor.domain.core.views import Gate, SharedPrepare, Sharing
from supervisor.domain.types import AttemptState, EventKind, RunState, StageKind, StageState
from supervisor.store.readmodels.rows import ATTEMPT_SELECT, Query, accounting_facts, attempt_row, campaign_settings

_LIVE = tuple(s.value for s in (AttemptState.SUBMITTING, AttemptState.QUEUED, AttemptState.RUNNING))
_LIVE_IN = ", ".join("?" * len(_LIVE))
_ACTIVE = tuple(s.value for s in (RunState.PENDING, RunState.RUNNING, RunState.PAUSED, RunState.NEEDS_ATTENTION))
_ACTIVE_IN = ", ".join("?" * len(_ACTIVE))

LIVE_JOBS_SQL = f"""
SELECT COUNT(*) FROM attempts AS a JOIN stages AS s ON s.id = a.stage_id JOIN runs AS r ON r.id = s.run_id
WHERE r.campaign = ? AND a.state IN ({_LIVE_IN})
"""
# The attempts that ran, of one run or of every run of one campaign: what their budget has paid for.
SPENT_SQL = f"""
SELECT s.run_id, s.name, s.kind, {ATTEMPT_SELECT}
FROM attempts AS a JOIN stages AS s ON s.id = a.stage_id JOIN runs AS r ON r.id = s.run_id
WHERE a.started_at IS NOT NULL AND {{}} = ?
"""
HUNG_SQL = """
SELECT e.run_id, e.stage, e.attempt FROM events AS e JOIN runs AS r ON r.id = e.run_id WHERE e.kind = ? AND {} = ?
"""
BUDGET_PAUSED_SQL = "SELECT COUNT(*) FROM runs WHERE campaign = ? AND state = ? AND reason LIKE 'budget:%'"
PREPARE_PEERS_SQL = f"""
SELECT r.name, r.campaign, r.state, s.state, s.share_key,
       (SELECT COUNT(*) FROM attempts WHERE stage_id = s.id),
       (SELECT COUNT(*) FROM attempts WHERE stage_id = s.id AND state IN ({_LIVE_IN})),
       (SELECT cause FROM attempts WHERE stage_id = s.id ORDER BY number DESC LIMIT 1)
FROM stages AS s JOIN runs AS r ON r.id = s.run_id
WHERE s.kind = ? AND s.run_id != ? AND (s.share_key = ? OR s.prepared_path = ?)
ORDER BY r.id
"""
OWN_PREPARES_SQL = """
SELECT name, share_key, prepared_path FROM stages
WHERE run_id = ? AND kind = ? AND share_key IS NOT NULL AND state != ?
"""


@dataclass(frozen=True)
class Peer:
    """Another run's prepare stage on the same dataset or directory."""

    run: str
    campaign: str | None
    run_state: str
    state: str
    same_dataset: bool
    attempts: int
    live: int
    cause: str | None


def sharing(peers: Iterable[Peer], campaign: str | None, present: bool) -> SharedPrepare | None:
    """Which other prepare a run's prepare stage follows or waits for; None when it goes ahead itself.
    ``present``: the dataset is on disk (a finished prepare whose dataset was deleted since is no source)."""
    found: dict[Sharing, SharedPrepare] = {}
    for peer in peers:
        if peer.same_dataset and peer.state == StageState.SUCCEEDED.value and present:
            found.setdefault(Sharing.SUCCEEDED, SharedPrepare(peer.run, Sharing.SUCCEEDED))
        elif peer.same_dataset and peer.state == StageState.RUNNING.value and peer.attempts \
                and peer.run_state in _ACTIVE:
            found.setdefault(Sharing.LIVE, SharedPrepare(peer.run, Sharing.LIVE))
        elif not peer.same_dataset and peer.live:
            found.setdefault(Sharing.BUSY, SharedPrepare(peer.run, Sharing.BUSY))
        elif peer.same_dataset and peer.state == StageState.FAILED.value and campaign is not None \
                and peer.campaign == campaign:
            found.setdefault(Sharing.FAILED, SharedPrepare(peer.run, Sharing.FAILED, peer.cause))
    for state in (Sharing.SUCCEEDED, Sharing.LIVE, Sharing.BUSY, Sharing.FAILED):
        if state in found:
            return found[state]
    return None


def prepare_peers(query: Query, run_id: int, key: str, prepared: str) -> list[Peer]:
    return [Peer(name, campaign, run_state, state, share_key == key, attempts, live, cause)
            for name, campaign, run_state, state, share_key, attempts, live, cause in query(
                PREPARE_PEERS_SQL, (*_LIVE, StageKind.PREPARE.value, run_id, key, prepared))]


def prepares_of(query: Query, run_id: int, campaign: str | None,
                present: Callable[[Path], bool]) -> dict[str, tuple[str, SharedPrepare | None]]:
    """Per prepare stage of the run not yet succeeded: its directory and what it follows or waits for."""
    out = {}
    for stage, key, prepared in query(OWN_PREPARES_SQL, (run_id, StageKind.PREPARE.value,
                                                         StageState.SUCCEEDED.value)):
        peers = prepare_peers(query, run_id, key, prepared)
        on_disk = any(p.same_dataset and p.state == StageState.SUCCEEDED.value for p in peers) \
            and present(Path(prepared))
        out[stage] = (prepared, sharing(peers, campaign, on_disk))
    return out


_OF = {"run": "r.id", "campaign": "r.campaign"}


def spent(query: Query, of: str, value: Any, now: datetime) -> accounting.Totals:
    """Node-seconds used and wasted by the attempts of one run (``of="run"``, its id) or of every run of one
    campaign (``of="campaign"``, its name)."""
    column = _OF[of]
    hung = {(r, s, n) for r, s, n in query(HUNG_SQL.format(column), (EventKind.STALLED.value, value))}
    costs = []
    for run_id, stage, kind, *columns in query(SPENT_SQL.format(column), (value,)):
        attempt = attempt_row(columns)
        if attempt is not None:
            facts = accounting_facts(attempt, kind, hung=(run_id, stage, attempt.number) in hung)
            costs.append(accounting.cost(facts, now))
    return accounting.total(costs)


def over_budget(budget: Any, used: accounting.Totals) -> str | None:
    """Says what was spent against which limit once a limit is reached; None while within the budget."""
    if not isinstance(budget, dict):
        return None
    limit, wasted_limit = budget.get("node_hours"), budget.get("wasted_node_hours")
    figures = (f"{_hours(used.node_seconds)} node-hours spent "
               f"({_hours(used.used)} used, {_hours(used.wasted)} wasted)")
    # Compared in node-seconds: the hours shown are rounded.
    if isinstance(limit, int | float) and used.node_seconds >= limit * 3600:
        return f"{figures} of a {limit:g} node-hour budget"
    if isinstance(wasted_limit, int | float) and used.wasted >= wasted_limit * 3600:
        return f"{figures}; the budget allows {wasted_limit:g} wasted"
    return None


def _hours(node_seconds: int) -> str:
    """Three significant digits: a small test budget is not shown as 0."""
    return f"{node_seconds / 3600:.3g}"


def gate_for(query: Query, run_id: int, campaign: str | None, run_budget: Any, now: datetime,
             present: Callable[[Path], bool]) -> Gate:
    """The gate of one run: read its campaign, its budget and its prepares' peers."""
    prepare = {stage: shared for stage, (_, shared) in prepares_of(query, run_id, campaign, present).items()
               if shared is not None}
    over = over_budget(run_budget, spent(query, "run", run_id, now)) if run_budget else None
    announce, wait = True, None
    if campaign is not None:
        campaign_spec = campaign_settings(query, campaign).get(campaign, {})
        if over is None and campaign_spec.get("budget"):
            over = over_budget(campaign_spec["budget"], spent(query, "campaign", campaign, now))
            if over is not None:
                over = f"campaign {campaign}: {over}"
                paused = next(iter(query(BUDGET_PAUSED_SQL, (campaign, RunState.PAUSED.value))))[0]
                announce = not paused
        cap = campaign_spec.get("max_live_jobs")
        if isinstance(cap, int):
            live = next(iter(query(LIVE_JOBS_SQL, (campaign, *_LIVE))))[0]
            if live >= cap:
                wait = f"campaign {campaign}: {live} of max_live_jobs {cap} jobs live"
    return Gate(wait=wait, over_budget=over, announce_budget=announce, prepare=prepare)

