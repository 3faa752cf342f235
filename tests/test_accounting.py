"""The node-hour accounting of attempts (supervisor/domain/accounting.py): its rules and its sum invariant."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from supervisor.domain.accounting import AttemptCost, AttemptFacts, SchedulerUsage, cost, hours, total

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=2)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_a_succeeded_attempt_is_all_used() -> None:
    c = cost(AttemptFacts("succeeded", at(0), at(60), nodes="lrdn[0101-0104]", first_step_at=at(5)), NOW)
    assert (c.node_seconds, c.used, c.wasted, c.cause) == (4 * 3600, 4 * 3600, 0, None)


def test_the_schedulers_figures_win_over_the_recorded_times() -> None:
    # sacct says 3000 s on 8 nodes, whatever the supervisor saw of start and end.
    c = cost(AttemptFacts("succeeded", at(0), at(60), nodes="n1", usage=SchedulerUsage(3000, 8)), NOW)
    assert c.node_seconds == 24000


def test_a_signature_wastes_the_work_since_the_last_complete_checkpoint() -> None:
    facts = AttemptFacts("cancelled", at(0), at(100), nodes="n[1-2]", cause="nccl_error", steps_expected=True,
                         first_step_at=at(10), checkpoint_at=at(70), last_output_at=at(99))
    c = cost(facts, NOW)
    assert (c.wasted, c.used, c.cause, c.hung) == (30 * 60 * 2, 70 * 60 * 2, "nccl_error", 0)


def test_without_a_checkpoint_waste_runs_from_the_first_step() -> None:
    facts = AttemptFacts("failed", at(0), at(100), nodes="n1", exit_code=1, steps_expected=True, first_step_at=at(10))
    c = cost(facts, NOW)
    assert (c.wasted, c.cause) == (90 * 60, "exit 1")


def test_a_stage_without_steps_wastes_it_all_when_it_fails() -> None:
    c = cost(AttemptFacts("failed", at(0), at(30), nodes="n1", exit_code=3), NOW)
    assert (c.wasted, c.used, c.cause) == (1800, 0, "exit 3")


def test_a_startup_that_never_reached_a_step_is_all_wasted() -> None:
    facts = AttemptFacts("cancelled", at(0), at(40), nodes="n[1-4]", cause="nvcc_timeout", steps_expected=True,
                         last_output_at=at(5))
    c = cost(facts, NOW)
    assert (c.wasted, c.used, c.cause, c.startup) == (4 * 2400, 0, "startup", True)


def test_a_hang_is_wasted_from_the_checkpoint_and_the_quiet_time_is_counted_as_hung() -> None:
    facts = AttemptFacts("cancelled", at(0), at(120), nodes="n[1-2]", cause="stall_timeout", steps_expected=True,
                         first_step_at=at(5), checkpoint_at=at(60), last_output_at=at(80))
    c = cost(facts, NOW)
    assert (c.wasted, c.hung, c.cause) == (60 * 60 * 2, 40 * 60 * 2, "hang/stall_timeout")


def test_a_hang_hint_names_the_hang() -> None:
    facts = AttemptFacts("cancelled", at(0), at(50), nodes="n1", cause="torch_extensions_lock", hung=True,
                         steps_expected=False, last_output_at=at(20))
    c = cost(facts, NOW)
    assert (c.wasted, c.hung, c.cause) == (3000, 1800, "hang/torch_extensions_lock")


def test_a_hang_after_the_work_was_done_wastes_only_the_hung_time() -> None:
    # The end-of-training merge hang: the final checkpoint was complete; the NCCL watchdog ends it later.
    facts = AttemptFacts("succeeded", at(0), at(300), nodes="n[1-4]", cause="stall_timeout", work_done=True,
                         steps_expected=True, first_step_at=at(5), last_output_at=at(280))
    c = cost(facts, NOW)
    assert (c.wasted, c.hung, c.used) == (4 * 1200, 4 * 1200, 4 * 280 * 60)


def test_a_live_attempt_is_measured_up_to_now_and_wastes_nothing() -> None:
    c = cost(AttemptFacts("running", at(0), None, nodes="n1"), at(30))
    assert (c.node_seconds, c.wasted) == (1800, 0)


def test_an_attempt_that_never_started_costs_nothing() -> None:
    assert cost(AttemptFacts("cancelled", None, at(3), cause="cannot_start"), NOW) == AttemptCost(0, 0, 0, None)


def _random_facts(rng: random.Random) -> AttemptFacts:
    started = rng.random() < 0.9
    start = at(rng.uniform(0, 1000)) if started else None
    length = rng.uniform(0, 600)
    end = (start or T0) + timedelta(minutes=length) if rng.random() < 0.9 else None

    def inside() -> datetime | None:
        # Some facts fall outside the attempt (clock skew between hosts, an old checkpoint): clipped.
        return (start or T0) + timedelta(minutes=rng.uniform(-50, length + 50)) if rng.random() < 0.6 else None

    nodes = rng.choice([None, "", "n1", "n[1-4]", "a[01-03,07],b9"])
    usage = SchedulerUsage(rng.randrange(0, 40000), rng.randrange(0, 64)) if rng.random() < 0.3 else None
    return AttemptFacts(
        state=rng.choice(["submitting", "queued", "running", "succeeded", "failed", "cancelled"]),
        started_at=start, ended_at=end, nodes=nodes, usage=usage,
        cause=rng.choice([None, "nccl_error", "stall_timeout", "startup_timeout", "cancelled"]),
        exit_code=rng.choice([None, 0, 1, 137]), work_done=rng.random() < 0.2, steps_expected=rng.random() < 0.5,
        first_step_at=inside(), last_output_at=inside(), checkpoint_at=inside(), hung=rng.random() < 0.2,
    )


@pytest.mark.parametrize("seed", range(20))
def test_used_plus_wasted_is_the_sum_over_attempts_always(seed: int) -> None:
    rng = random.Random(seed)
    costs = [cost(_random_facts(rng), NOW) for _ in range(200)]
    for c in costs:
        assert c.used + c.wasted == c.node_seconds
        assert 0 <= c.hung <= c.wasted
        assert c.used >= 0 and c.wasted >= 0
        assert (c.cause is None) == (c.wasted == 0)
    summed = total(costs)
    assert summed.used + summed.wasted == summed.node_seconds == sum(c.node_seconds for c in costs)
    assert sum(amount for _, amount in summed.by_cause) == summed.wasted


def test_hours_are_rounded_only_for_display() -> None:
    assert hours(5400) == 1.5
