"""Every built-in signature says where its text comes from, and every example line it quotes is recognised.

An example is a real line (tests/data/realworld/ records where it was read). Replaying it through the
scanner must produce the entry, and the line read alone must be decided by it: a pattern that drifts
from the text it was written for, or a new entry that steals another's lines, fails here.
"""

from __future__ import annotations

import pytest

from supervisor.domain.errors import SignatureError
from supervisor.logs.catalogue import SignatureSpec, load_builtin, parse_signatures
from supervisor.logs.scanner import Catalogue

BUILTIN = load_builtin()

# Entries whose text no source read so far shows in a real line (only the string in the code that
# prints it). Listed so that a new entry without examples fails the test below instead of slipping in.
WITHOUT_EXAMPLES = {"child_failed_error", "illegal_memory_access", "slurm_preempted"}

EXAMPLES = [(spec.name, example) for spec in BUILTIN for example in spec.examples]


@pytest.fixture(scope="module", params=["hyperscan", "regex"])
def catalogue(request: pytest.FixtureRequest) -> Catalogue:
    return Catalogue.load(engine=request.param)


def test_every_entry_names_its_source() -> None:
    assert [s.name for s in BUILTIN if not s.source.strip()] == []


def test_every_entry_but_the_listed_ones_quotes_a_real_line() -> None:
    assert {s.name for s in BUILTIN if not s.examples} == WITHOUT_EXAMPLES


@pytest.mark.parametrize(("name", "example"), EXAMPLES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EXAMPLES)])
def test_example_is_recognised_by_its_entry(catalogue: Catalogue, name: str, example: str) -> None:
    matches = catalogue.scan(example.encode() + b"\n", 1)
    assert name in [m.signature for m in matches], (name, example)
    spec = catalogue.spec(name)
    assert spec is not None
    if spec.hang_hint:
        return  # a hint never decides; being found is all it does
    verdict = catalogue.verdict(matches)
    assert verdict is not None and verdict.signature == name, [m.signature for m in matches]


def test_user_entries_may_carry_source_and_examples() -> None:
    [spec] = parse_signatures(
        [{"name": "site_xid", "patterns": ["Xid 79"], "action": "fail", "source": "site wiki",
          "examples": ["NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus."]}],
        "run.yaml",
    )
    assert spec == SignatureSpec(name="site_xid", patterns=("Xid 79",), action=spec.action, source="site wiki",
                                 examples=("NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.",))


def test_examples_must_be_a_list_of_strings() -> None:
    with pytest.raises(SignatureError, match=r"run\.yaml: signatures\[0\].*field 'examples"):
        parse_signatures([{"name": "x", "patterns": ["ok"], "action": "fail", "examples": [{"line": 1}]}], "run.yaml")
