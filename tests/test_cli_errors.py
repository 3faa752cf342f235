"""Option errors of the CLI: one line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import Harness


def one_line(result_err: str) -> str:
    lines = result_err.strip().splitlines()
    assert len(lines) == 1, result_err
    return lines[0]


@pytest.mark.parametrize("level", ["foo", "", "INFOO", "50"])
def test_unknown_log_level(harness: Harness, level: str) -> None:
    result = harness.cli("--log-level", level, "status", check=False)
    assert result.code == 2
    assert one_line(result.err).startswith(f"error: --log-level {level!r}: expected one of debug, info")


def test_log_level_is_case_insensitive(harness: Harness) -> None:
    assert harness.cli("--log-level", "WARNING", "status").code == 0


@pytest.mark.parametrize(("poll", "problem"), [("nan", "finite"), ("inf", "finite"), ("-inf", "finite"),
                                               ("0", "more than 0"), ("0s", "more than 0"),
                                               ("-5", "negative"), ("often", "not a duration")])
def test_bad_poll(harness: Harness, poll: str, problem: str) -> None:
    result = harness.cli("daemon", "--poll", poll, check=False)
    assert result.code == 2
    line = one_line(result.err)
    assert line.startswith(f"error: --poll {poll!r}: ") and problem in line
    assert not harness.home.exists()


def test_home_that_is_a_file(harness: Harness, tmp_path: Path) -> None:
    home = tmp_path / "home-file"
    home.write_text("not a directory\n")
    for command in (("status",), ("submit", "x.yaml"), ("daemon",)):
        result = harness.cli("--home", str(home), *command, check=False)
        assert result.code == 2
        assert one_line(result.err) == f"error: --home {home}: is not a directory"
    assert home.read_text() == "not a directory\n"


def test_home_under_a_file(harness: Harness, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    result = harness.cli("--home", str(tmp_path / "f" / "home"), "status", check=False)
    assert result.code == 2 and "cannot be created" in one_line(result.err)


@pytest.mark.parametrize("home", ["/proc/self/supervisor", "/sys/supervisor", "/proc"])
def test_home_under_proc_or_sys(harness: Harness, home: str) -> None:
    result = harness.cli("--home", home, "status", check=False)
    assert result.code == 2
    line = one_line(result.err)
    assert line.startswith("error: --home /") and ("is under /proc" in line or "is under /sys" in line)


def test_a_spec_with_an_error_writes_nothing(harness: Harness) -> None:
    result = harness.cli("submit", str(harness.write_spec({"name": "r1", "stages": "none"})), check=False)
    assert result.code == 2 and one_line(result.err).startswith("error: ")
    assert not harness.home.exists()
