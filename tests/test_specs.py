"""Bad run specs: one clear line naming the file and the problem, exit code 2, the database unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from supervisor.domain.durations import parse_duration
from supervisor.store.db import DB_NAME

from harness import Harness

BAD_SPECS = Path(__file__).parent / "data" / "bad_specs"
EXPECTED: dict[str, dict[str, str]] = yaml.safe_load((BAD_SPECS / "expected.yaml").read_text())


def db_digest(h: Harness) -> str:
    """Every row of every table, so any write shows, wherever SQLite keeps it (main file or WAL)."""
    path = h.home / DB_NAME
    assert path.is_file(), path  # sqlite3.connect would create an empty one, and every digest would match
    with sqlite3.connect(path) as conn:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()


@pytest.fixture(scope="module")
def corpus_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, Path]]:
    """One state directory with one run, and a copy of the corpus (symlinks kept) for every case."""
    root = tmp_path_factory.mktemp("bad_specs")
    h = Harness(root)
    h.submit({"name": "existing", "backend": "local", "stages": [{"name": "a", "command": ["true"]}]})
    copy = root / "specs"
    shutil.copytree(BAD_SPECS, copy, symlinks=True)
    try:
        yield h, copy
    finally:
        h.close()


def test_every_corpus_file_has_an_expected_line() -> None:
    files = {p.name for p in BAD_SPECS.glob("*.yaml")} - {"expected.yaml"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_spec_is_one_clear_line_and_changes_nothing(corpus_harness: tuple[Harness, Path], case: str) -> None:
    harness, specs = corpus_harness
    before = db_digest(harness)
    path = specs / case
    result = harness.cli("submit", str(path), check=False)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert EXPECTED[case]["error"] in lines[0], lines[0]
    if "hidden" in EXPECTED[case]:
        assert EXPECTED[case]["hidden"] not in result.err
    assert result.out == ""
    assert db_digest(harness) == before


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


def test_millisecond_durations_are_accepted_at_submit(harness: Harness) -> None:
    spec = {"name": "ms", "backend": "local",
            "stages": [{"name": "a", "command": ["true"], "stall_timeout": "1500ms", "retry_backoff": "500ms"}]}
    assert harness.submit(spec) == "ms"


def test_relative_paths_resolve_against_the_spec(harness: Harness, tmp_path: Path) -> None:
    sub = tmp_path / "specs"
    sub.mkdir()
    (sub / "job.sbatch").write_text("#!/bin/bash\necho hi\n")
    (sub / "rel.yaml").write_text("name: rel\nbackend: local\nworkdir: out\nstages:\n  - name: a\n"
                                  "    script: job.sbatch\n")
    harness.cli("submit", str(sub / "rel.yaml"))
    assert harness.show("rel")["workdir"] == str(sub / "out")


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400),
                                               ("45", 45), (12, 12), ("1.5h", 5400), ("500ms", 0.5),
                                               ("1m30s", 90), ("2s500ms", 2.5), (0, 0)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "-5", "h", "5m junk", "inf", "nan", "-inf", "1e400",
                                  float("inf"), float("nan"), -1, True])
def test_bad_durations(text: str | float) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
