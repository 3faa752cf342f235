"""The catalogue against lines from the field: tests/data/realworld/*.yaml.

Each record is a line as printed by PyTorch, NCCL, Slurm, CUDA, huggingface_hub, ... and pasted into a
public issue (or taken from this project's own real runs), with where it was read and what an
experienced operator would do about it. Records with ``expected: null`` are the benign corpus: INFO
chatter, warnings a healthy run prints, the lines that follow a failure without being its cause.

Recall is the share of failure lines whose verdict (the line read alone) is the expected signature, or,
for a hang hint, on which the hint is found. A benign line must produce no match at all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.domain import core
from supervisor.domain.core import AttemptView, Observation, Outcome, RunView, StageView
from supervisor.domain.types import AttemptState, LogMatch, RunState, SignatureAction, StageState
from supervisor.logs.catalogue import load_builtin
from supervisor.logs.diagnose import diagnose
from supervisor.logs.scanner import Catalogue

CORPUS = Path(__file__).parent / "data" / "realworld"
HEALTHY_RUN = Path(__file__).parent / "fixtures" / "logs" / "axolotl_real_train.log"
MIN_RECALL = 0.95
REACTIONS = {a.value for a in SignatureAction} | {"none"}
FIELDS = {"line", "source", "expected", "reaction", "node", "end_of_training_hang", "interleaved", "note"}
# The hang wordings a stuck final merge can end with (the seed's watchdog line and its relatives).
HANG_SIGNATURES = {"nccl_watchdog_timeout", "nccl_heartbeat_timeout", "nccl_communicator_aborted", "gloo_timeout"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Record:
    family: str
    index: int
    line: str
    source: str
    expected: str | None
    reaction: str
    node: str | None
    end_of_training_hang: bool
    interleaved: bool

    @property
    def id(self) -> str:
        return f"{self.family}-{self.index}"


def _load() -> list[Record]:
    records = []
    for path in sorted(CORPUS.glob("*.yaml")):
        raw: list[dict[str, Any]] = yaml.safe_load(path.read_text(encoding="utf-8"))
        for i, entry in enumerate(raw):
            assert set(entry) <= FIELDS, (path.name, i, set(entry) - FIELDS)
            records.append(Record(
                family=path.stem, index=i, line=entry["line"], source=entry["source"],
                expected=entry["expected"], reaction=entry["reaction"], node=entry.get("node"),
                end_of_training_hang=bool(entry.get("end_of_training_hang")),
                interleaved=bool(entry.get("interleaved")),
            ))
    return records


RECORDS = _load()
FAILURES = [r for r in RECORDS if r.expected is not None]
BENIGN = [r for r in RECORDS if r.expected is None]
HANGS = [r for r in FAILURES if r.end_of_training_hang]


@pytest.fixture(scope="module", params=["hyperscan", "regex"])
def catalogue(request: pytest.FixtureRequest) -> Catalogue:
    return Catalogue.load(engine=request.param)


def _scan(catalogue: Catalogue, line: str) -> list[LogMatch]:
    return catalogue.scan(line.encode() + b"\n", 1)


def _recognised(catalogue: Catalogue, record: Record, matches: list[LogMatch]) -> bool:
    spec = catalogue.spec(record.expected or "")
    if spec is not None and spec.hang_hint:
        return record.expected in [m.signature for m in matches]
    verdict = catalogue.verdict(matches)
    return verdict is not None and verdict.signature == record.expected


def test_corpus_is_well_formed() -> None:
    names = {s.name for s in load_builtin()}
    assert len(RECORDS) >= 150
    for r in RECORDS:
        assert r.line.strip() and r.source.strip(), r.id
        assert "://" not in r.source, r.id  # provenance is "owner/repo path" or "owner/repo issue #N"
        assert r.reaction in REACTIONS, r.id
        assert (r.expected is None) == (r.reaction == "none"), r.id
        assert r.expected is None or r.expected in names, r.id
    # Every family is a file of its own, and none is only benign or only failures.
    assert len({r.family for r in RECORDS}) >= 6


def test_recall_and_false_positives(catalogue: Catalogue) -> None:
    missed = [r for r in FAILURES if not _recognised(catalogue, r, _scan(catalogue, r.line))]
    noisy = [(r.id, [m.signature for m in _scan(catalogue, r.line)]) for r in BENIGN if _scan(catalogue, r.line)]
    agree = sum(1 for r in FAILURES if (spec := catalogue.spec(r.expected or "")) and spec.action.value == r.reaction)
    recall = 1 - len(missed) / len(FAILURES)
    per_family = Counter(r.family for r in FAILURES)
    missed_per_family = Counter(r.family for r in missed)
    found = len(FAILURES) - len(missed)
    print(f"\n[{catalogue.engine_name}] real-world recall {found}/{len(FAILURES)} = {recall:.1%}; "
          f"benign lines with a match {len(noisy)}/{len(BENIGN)}; "
          f"catalogue action = operator's reaction for {agree}/{len(FAILURES)}")
    for family, total in sorted(per_family.items()):
        print(f"  {family}: {total - missed_per_family[family]}/{total}")
    for r in missed:
        print(f"  missed {r.id} ({r.expected}): {r.line[:120]}")
    assert recall >= MIN_RECALL, [r.id for r in missed]
    assert noisy == []


@pytest.mark.parametrize("record", [r for r in FAILURES if r.node is not None], ids=lambda r: r.id)
def test_named_host_is_captured(catalogue: Catalogue, record: Record) -> None:
    [match] = [m for m in _scan(catalogue, record.line) if m.signature == record.expected]
    assert match.node == record.node


def test_healthy_real_run_gives_only_its_finish(catalogue: Catalogue) -> None:
    result = diagnose(HEALTHY_RUN, catalogue)
    assert [(m["signature"], m["action"]) for m in result["matches"]] == [("training_completed", "finish")]


def _splice_point(catalogue: Catalogue, record: Record) -> int:
    """Where rank B's line can go into ``record.line`` without cutting the wording looked for: the first
    space after the match, else (the match ends the line) right before it."""
    [sig] = [s for s in catalogue.signatures if s.name == record.expected]
    found = next(m for m in (rx.search(record.line) for rx in sig.regexes) if m is not None)
    space = record.line.find(" ", found.end())
    return space if space >= 0 else found.start()


def test_two_ranks_interleaved_in_one_line_are_both_recognised(catalogue: Catalogue) -> None:
    """Rank B's whole line lands inside rank A's line with no newline between: both causes are read."""
    # One record per signature keeps the pairs few (about 30 x 30) while covering every entry.
    firsts = list({r.expected: r for r in reversed(FAILURES) if not r.interleaved}.values())
    lost = []
    for a in firsts:
        at = _splice_point(catalogue, a)
        for b in firsts:
            if b.expected == a.expected:
                continue
            line = a.line[:at] + b.line + a.line[at:]
            got = {m.signature for m in _scan(catalogue, line)}
            if not {a.expected, b.expected} <= got:
                lost.append((a.id, b.id, sorted(got)))
    assert lost == []


def test_the_real_interleaved_lines_are_recognised(catalogue: Catalogue) -> None:
    interleaved = [r for r in FAILURES if r.interleaved]
    assert interleaved
    assert [r.id for r in interleaved if not _recognised(catalogue, r, _scan(catalogue, r.line))] == []


def test_every_hang_wording_is_in_the_corpus() -> None:
    assert {r.expected for r in HANGS} == HANG_SIGNATURES


@pytest.mark.parametrize("record", HANGS, ids=lambda r: r.id)
def test_hang_after_training_completed_is_a_finish(catalogue: Catalogue, record: Record) -> None:
    completed = "[2026-11-28 01:26:20,494] [INFO] [axolotl.train] Training completed! Saving trained model to out."
    matches = catalogue.scan(f"{completed}\n{record.line}\n".encode(), 1)
    assert record.expected in [m.signature for m in matches]
    verdict = catalogue.verdict(matches)
    assert verdict is not None and verdict.action is SignatureAction.FINISH


def _run() -> RunView:
    attempt = AttemptView(number=1, state=AttemptState.RUNNING, job_id="101", started_at=T0)
    train = StageView(name="train", state=StageState.RUNNING, max_attempts=3, attempts=(attempt,), retry_backoff=0.0)
    merge = StageView(name="merge", state=StageState.PENDING, max_attempts=3)
    return RunView("r", RunState.RUNNING, (train, merge))


@pytest.mark.parametrize("record", HANGS, ids=lambda r: r.id)
def test_hang_wording_finishes_the_stage_once_the_final_checkpoint_is_complete(
    catalogue: Catalogue, record: Record
) -> None:
    assert record.expected is not None
    [match] = [m for m in _scan(catalogue, record.line) if m.signature == record.expected]
    done = core.observe(_run(), {("train", 1): Observation(matches=(match,), work_finished=True)}, T0)
    assert core.Cancel("train", 1, Outcome.FINISH, record.expected) in done
    mid_run = core.observe(_run(), {("train", 1): Observation(matches=(match,))}, T0)
    assert core.Cancel("train", 1, Outcome.RESUBMIT, record.expected) in mid_run
