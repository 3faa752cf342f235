"""Bad run specs: one clear line naming the file and the problem, exit code 2, the database unchanged."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from supervisor.domain.durations import parse_duration

from harness import Harness

GOOD_STAGE = "  - name: a\n    command: [echo, hi]\n"

CORPUS = {
    "bad_yaml": ("name: x\nstages: [\n", "invalid YAML"),
    "not_a_mapping": ("- just\n- a list\n", "expected a YAML mapping"),
    "unknown_top_key": ("name: x\nstagez: []\nstages:\n" + GOOD_STAGE, "stagez: unknown key"),
    "unknown_stage_key": ("name: x\nstages:\n  - name: a\n    command: [echo]\n    retries: 3\n",
                          "stages[0].retries: unknown key"),
    "missing_script": ("name: x\nstages:\n  - name: a\n    script: nowhere.sbatch\n",
                       "stages[0].script: file not found: nowhere.sbatch"),
    "duplicate_stages": ("name: x\nstages:\n" + GOOD_STAGE + GOOD_STAGE, "duplicate stage name 'a'"),
    "bad_name": ("name: 'has space'\nstages:\n" + GOOD_STAGE, "name: 'has space' is not a valid name"),
    "long_name": ("name: " + "x" * 65 + "\nstages:\n" + GOOD_STAGE, "is not a valid name"),
    "no_stages": ("name: x\nstages: []\n", "stages:"),
    "script_and_command": ("name: x\nstages:\n  - name: a\n    command: [echo]\n    script: s.sh\n",
                           "exactly one of `script`"),
    "bad_duration": ("name: x\nstages:\n  - name: a\n    command: [echo]\n    stall_timeout: soon\n",
                     "stages[0].stall_timeout"),
    "bad_backend": ("name: x\nbackend: k8s\nstages:\n" + GOOD_STAGE, "backend:"),
    "zero_attempts": ("name: x\nstages:\n  - name: a\n    command: [echo]\n    max_attempts: 0\n",
                      "stages[0].max_attempts"),
}


def db_digest(h: Harness) -> str:
    """Every row of every table, so any write shows, wherever SQLite keeps it (main file or WAL)."""
    with sqlite3.connect(h.home / "supervisor.store.db") as conn:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_spec_is_one_clear_line_and_changes_nothing(harness: Harness, case: str) -> None:
    text, expected = CORPUS[case]
    harness.submit({"name": "existing", "backend": "local", "stages": [{"name": "a", "command": ["true"]}]})
    before = db_digest(harness)
    path = harness.root / f"{case}.yaml"
    path.write_text(text)
    result = harness.cli("submit", str(path), check=False)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert str(path) in lines[0] and expected in lines[0]
    assert "Traceback" not in result.err and result.out == ""
    assert db_digest(harness) == before
    assert [r["name"] for r in harness.status()] == ["existing"]


def test_axolotl_config_that_cannot_work_is_refused_at_submit(harness: Harness) -> None:
    (harness.root / "axolotl.yaml").write_text("base_model: x\ndataset_prepared_path: prepared\n")
    spec = harness.root / "spec.yaml"
    spec.write_text("name: ax\naxolotl_config: axolotl.yaml\nstages:\n  - {name: p, kind: prepare}\n")
    result = harness.cli("submit", str(spec), check=False)
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        f"error: {spec}: axolotl_config: {harness.root / 'axolotl.yaml'}: output_dir: expected a non-empty path"
    ]
    assert harness.status() == []


def test_unreadable_and_missing_files(harness: Harness) -> None:
    missing = harness.cli("submit", str(harness.root / "nope.yaml"), check=False)
    assert missing.code == 2 and "nope.yaml: file not found" in missing.err
    directory = harness.cli("submit", str(harness.root), check=False)
    assert directory.code == 2 and "cannot read" in directory.err
    if os.geteuid() != 0:  # root reads anything; the directory case above covers "unreadable" then
        locked = harness.root / "locked.yaml"
        locked.write_text("name: x\n")
        locked.chmod(0)
        result = harness.cli("submit", str(locked), check=False)
        assert result.code == 2 and "cannot read" in result.err


def test_duplicate_run_name_refused(harness: Harness) -> None:
    spec = {"name": "twice", "backend": "local", "stages": [{"name": "a", "command": ["true"]}]}
    harness.submit(spec)
    again = harness.cli("submit", str(harness.write_spec(spec, "again.yaml")), check=False)
    assert again.code == 2 and "already exists" in again.err


def test_unknown_run_is_exit_2(harness: Harness) -> None:
    for command in ("show", "cancel", "pause", "resume", "retry"):
        result = harness.cli(command, "ghost", check=False)
        assert result.code == 2 and "no run named 'ghost'" in result.err


def test_bad_poll_duration_is_exit_2(harness: Harness) -> None:
    result = harness.cli("daemon", "--poll", "often", check=False)
    assert result.code == 2 and "often" in result.err


def test_relative_paths_resolve_against_the_spec(harness: Harness, tmp_path: Path) -> None:
    sub = tmp_path / "specs"
    sub.mkdir()
    (sub / "job.sbatch").write_text("#!/bin/bash\necho hi\n")
    (sub / "rel.yaml").write_text("name: rel\nbackend: local\nworkdir: out\nstages:\n  - name: a\n"
                                  "    script: job.sbatch\n")
    harness.cli("submit", str(sub / "rel.yaml"))
    assert harness.show("rel")["workdir"] == str(sub / "out")


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400),
                                               ("45", 45), (12, 12), ("1.5h", 5400)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "-5", "h", "5m junk"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
