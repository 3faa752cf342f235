"""Defaults of a run spec's knobs that the core also applies, in a module light enough for `submit` to import
(the core package costs it 0.06 s)."""

from __future__ import annotations

# How long a job may wait for a reason that never clears before a person is asked (spec `pending_grace`).
PENDING_GRACE_S = 600.0

# How long a job whose work is done (the final checkpoint complete) may stay quiet before it is ended as
# finished (spec `finish_grace`): well inside the NCCL watchdog's 10 minutes of the end-of-training hang.
FINISH_GRACE_S = 180.0

# How many nodes one run may keep excluded at once (spec `max_excluded_nodes`); past it a person is told.
MAX_EXCLUDED_NODES = 4
