"""What `status`, `show`, `report` and the notifications read: plain, JSON-ready dictionaries built from the rows.

`status` and `show` are plain SQL over a DB-API connection: the daemon's Session hands its own, and the
CLI opens the file with the standard library's ``sqlite3`` (``FileReader``), so the command typed most
never imports SQLAlchemy (a third of a second of CPU, ten times what the answer costs). One query gives
every run of `status` with its current stage and attempt; `show` is one indexed query per table.

Modules: rows.py (the columns and SQL they share), views.py (`status`, `show`), reports.py (`report`),
filereader.py (the read-only ``sqlite3`` way in).
"""

from supervisor.store.readmodels.filereader import FileReader
from supervisor.store.readmodels.reports import CheckpointTimes, RunPlace, SchedulerFigures, report, report_from
from supervisor.store.readmodels.rows import DB_FILE, AttemptRow, accounting_facts, attempt_facts, attempts_of
from supervisor.store.readmodels.views import show, show_from, status_from, status_rows

__all__ = [
    "DB_FILE", "AttemptRow", "CheckpointTimes", "FileReader", "RunPlace", "SchedulerFigures", "accounting_facts",
    "attempt_facts", "attempts_of", "report", "report_from", "show", "show_from", "status_from", "status_rows",
]
