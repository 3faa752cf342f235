"""Which runs a log wake-up steps, and whether any live log grew: the daemon's cheap checks between polls.

A wake-up (inotify, or the ``--log-poll`` cadence) does not step every run whose log grew: the lines added
since the last look are peeked at (supervisor.logs.follow.LogWatcher.peek, the stored offset untouched), and
only a run whose new lines call for a reaction is stepped at once; the others wait for the interval pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, sessionmaker

from supervisor.logs.follow import LogCursor, LogWatcher
from supervisor.logs.scanner import Catalogue
from supervisor.store.db import Commits
from supervisor.store.models import Attempt, Run, Stage
from supervisor.store.repository import ACTIVE, POLLED

_ACTIVE = [s.value for s in ACTIVE]
_POLLED = [s.value for s in POLLED]


class WakeUps:
    def __init__(self, sessions: sessionmaker[Session], logs: LogWatcher) -> None:
        self.sessions = sessions
        self.logs = logs
        self.commits = Commits(sessions)
        # The last rows read, with the data version they were read at.
        self._kept: tuple[int, list[tuple[int, str | None, dict[str, Any] | None]]] | None = None
        # Per active run, its name and `signatures:` (for the peek at its logs).
        self._signatures: dict[int, tuple[str, list[Mapping[str, Any]]]] = {}
        # Every active run with its live attempts' logs (none: one row of NULLs). Built once: building the
        # statement took a third of the query's time, and a wake-up pass runs it up to five times a second.
        self._live_logs = (
            select(Run.id, Attempt.log_path, Attempt.log_tail).select_from(Run).join(Stage)
            .outerjoin(Attempt, and_(Attempt.stage_id == Stage.id, Attempt.state.in_(_POLLED)))
            .where(Run.state.in_(_ACTIVE)).order_by(Run.id))

    def _rows(self) -> Sequence[tuple[int, str | None, dict[str, Any] | None]]:
        """Every active run with its live attempts' logs and their stored offsets: read again only when
        somebody committed since the last read (store.db.Commits). Between two interval passes nothing is
        written unless a run was stepped, so most wake-ups and log checks cost no query and no JSON decoding."""
        version = self.commits.version()  # before the query: a commit during it is seen next time
        kept = self._kept
        if version is not None and kept is not None and kept[0] == version:
            return kept[1]
        with self.sessions() as session:
            rows = [(run_id, path, tail) for run_id, path, tail in session.execute(self._live_logs)]
        self._kept = None if version is None else (version, rows)
        return rows

    def news(self) -> list[int]:
        """The active runs a log wake-up steps: those with a live log whose new lines are worth a pass
        (supervisor.logs.follow.worth_a_pass), and those with no live log at all (between attempts, a new
        run), whose pass reads nothing and may submit at once, as every wake-up pass did before. Only the logs
        inotify named since the last pass are peeked at (LogWatcher.touched), all of them after the
        ``--log-poll`` cadence asked. At most one query."""
        rows = self._rows()
        touched = self.logs.touched()
        run_ids = list(dict.fromkeys(run_id for run_id, _, _ in rows))
        self._signatures = {r: self._signatures[r] for r in run_ids if r in self._signatures}
        worth: set[int] = set()
        logged: set[int] = set()
        for run_id, path, tail in rows:
            if not path or "%j" in path:
                continue
            logged.add(run_id)
            if run_id in worth or (touched is not None and Path(path).name not in touched):
                continue
            try:
                if self.logs.peek(LogCursor(path, tail, None), partial(self._catalogue, run_id)):
                    worth.add(run_id)
            except Exception:
                # Stepped: its own pass runs inside its error boundary and reports the error there, once.
                worth.add(run_id)
        self.logs.forget_peeks(path for _, path, _ in rows if path)
        return [r for r in run_ids if r in worth or r not in logged]

    def _catalogue(self, run_id: int) -> Catalogue:
        """The run's catalogue; its `signatures:` are read once (a registered run's spec never changes)."""
        if run_id not in self._signatures:
            with self.sessions() as session:
                name, spec = session.execute(select(Run.name, Run.spec).where(Run.id == run_id)).one()
            self._signatures[run_id] = (name, list(spec.get("signatures") or []))
        name, entries = self._signatures[run_id]
        return self.logs.catalogue(name, entries)

    def logs_grew(self) -> bool:
        """Whether a live attempt's log changed since it was read: the daemon's test before a log-only pass
        where inotify sees nothing (Lustre, GPFS, NFS). The offsets as :meth:`news` reads them, one ``stat``
        per log."""
        return self.logs.grown(LogCursor(path, tail, None) for _, path, tail in self._rows() if path)
