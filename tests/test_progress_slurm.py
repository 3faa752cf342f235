"""The ETA of a resumed attempt on the real cluster, against the time the job really took to finish."""

from __future__ import annotations

import shlex
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from supervisor.app.service import Supervisor

from fakes import ManualClock
from multinode_fixtures import Driven, driven
from slurm_fixtures import require_slurm

__all__ = ["driven"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.slurm

STEP_S = 0.25  # the resumed attempt's pace: one step every quarter of a second
TOTAL = 200
RESUME_AT = 100
STARTUP_S = 4  # what the resumed attempt spends before its first step (loading, compiling)


class WallClock(ManualClock):
    """The injected clock, moved to the wall clock's time at every tick: the job's pace is real time."""

    def advance(self, seconds: float) -> datetime:
        self.t = datetime.now(UTC)
        return self.t


def test_the_eta_of_a_resumed_attempt_is_within_a_fifth_of_the_real_remaining_time(driven: Driven) -> None:
    require_slurm()
    driven.clock = WallClock(datetime.now(UTC))
    driven.sv = Supervisor(driven.files.home, clusters={"slurm": driven.cluster}, clock=driven.clock)
    done_at = driven.root / "done_at"
    bar = f'printf "%3d%%|#         | %d/{TOTAL} [00:00<00:00,  4.00it/s]\\r" $((i * 100 / {TOTAL})) $i'
    script = driven.files.script("train.sbatch", f"""
#SBATCH --time=00:10:00
if [ "$SUPERVISOR_ATTEMPT" -eq 1 ]; then
    for i in $(seq 0 {RESUME_AT}); do {bar}; sleep 0.02; done
    echo; echo "crashed at step {RESUME_AT}"; exit 1
fi
sleep {STARTUP_S}
for i in $(seq {RESUME_AT} {TOTAL}); do {bar}; [ $i -lt {TOTAL} ] && sleep {STEP_S}; done
date +%s.%N > {shlex.quote(str(done_at))}
echo
""")
    driven.submit({"name": "eta", "backend": "slurm", "workdir": str(driven.root / "eta"),
                   "stages": [{"name": "s", "script": str(script), "retry_backoff": 0, "max_attempts": 3}]})

    def halfway() -> tuple[float, dict[str, Any]] | None:
        row = next(r for r in driven.sv.status() if r["name"] == "eta")
        progress = row["progress"]
        if row["attempt"] == 2 and row["eta"] and progress and progress["step"] >= RESUME_AT + 30:
            return time.time(), row
        return None

    asked_at, row = driven.tick_until(halfway, "the resumed attempt 30 steps past its resume point, with an ETA")
    predicted = datetime.fromisoformat(row["eta"]).timestamp() - asked_at
    driven.tick_until(lambda: driven.settled("eta"), "the run to finish")
    assert driven.show("eta")["state"] == "succeeded"
    real = float(done_at.read_text()) - asked_at
    assert real > 0 and abs(predicted - real) <= 0.2 * real, (predicted, real, row)
