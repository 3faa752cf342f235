"""User signatures cannot stall the scan: nested quantifiers run in linear time, the rest is refused at load.

Python's backtracking `re` took 22 s to reject `(a+)+b` on 27 `a`s and `cab`, twice as long per extra
`a`; the lines below have 40 and 200,000. Each scan runs in a child process whose timeout only a hang
can reach: it bounds the test, it is not a claim about speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.domain.errors import SignatureError
from supervisor.logs.scanner import Catalogue

HANG_S = 120

ADVERSARIAL = (
    "a" * 40 + "cab",  # line 1: matches `...b` patterns at its end, after exponential work for `re`
    "a" * 200_000 + "cab",  # line 2
    ("a" + "x" * 30) * 11,  # line 3: eleven `a`s, so `(.*a){12}` fails after ~31^11 tries for `re`
    "node7 " + "a" * 50_000 + "c",  # line 4: no `b`
    "node7 aaab",  # line 5
)

# pattern -> the lines it matches (what a correct engine finds, however long it takes)
FAMILY = {
    r"(a+)+b": [1, 2, 5],
    r"(a*)*b": [1, 2, 5],
    r"(a|aa)+b": [1, 2, 5],
    r"(a|a?)+b": [1, 2, 5],
    r"(.*a){12}": [1, 2, 4],
    r"(\w+\s?)+b": [1, 2, 5],
    r"(?P<node>node\d+) (a+)+b": [5],
}

CHILD = """
import json, sys
from pathlib import Path
from supervisor.logs.diagnose import diagnose
from supervisor.logs.scanner import Catalogue
pattern, engine, log = sys.argv[1:]
entry = {"name": "user_sig", "patterns": [pattern], "action": "fail"}
catalogue = Catalogue.load([entry], engine=engine)
found = diagnose(Path(log), catalogue)
print(json.dumps(sorted(m["line"] for m in found["matches"] if m["signature"] == "user_sig")))
"""


@pytest.fixture(scope="module")
def adversarial_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("linear") / "job.log"
    path.write_text("\n".join(ADVERSARIAL) + "\n")
    return path


@pytest.mark.parametrize("engine", ["hyperscan", "regex"])
@pytest.mark.parametrize("pattern", list(FAMILY))
def test_nested_quantifiers_scan_adversarial_lines_to_the_end(pattern: str, engine: str, adversarial_log: Path) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, pattern, engine, str(adversarial_log)],
            capture_output=True,
            text=True,
            timeout=HANG_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"scanning with {pattern!r} ({engine}) did not finish within {HANG_S} s", pytrace=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == FAMILY[pattern]


def test_the_node_is_still_read_from_a_named_group() -> None:
    catalogue = Catalogue.load(
        [{"name": "user_sig", "patterns": [r"(?P<node>node\d+) (a+)+b"], "action": "resubmit_exclude_node"}]
    )
    [match] = [m for m in catalogue.scan(b"x\nnode12 aaab\n", 1) if m.signature == "user_sig"]
    assert (match.line, match.node) == (2, "node12")


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(?>a+)b", "invalid perl operator"),  # an atomic group: Python's re has them, RE2 does not
        (r"a++b", "bad repetition operator"),  # possessive
        (r"(?=a)b", "lookarounds"),
        (r"(?P<node>x)(?P=node)", "back-references"),
    ],
)
def test_constructs_without_a_linear_time_match_are_refused_in_one_line(pattern: str, why: str) -> None:
    with pytest.raises(SignatureError) as caught:
        Catalogue.load([{"name": "user_sig", "patterns": ["fine", pattern], "action": "fail"}], source="spec.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("spec.yaml: signatures[0] (name='user_sig'): field 'patterns'")
    assert f"patterns[1] {pattern!r}" in message and why in message
