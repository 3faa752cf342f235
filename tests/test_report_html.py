"""`report --html` in a real headless Chromium (Debian package `chromium`): the page renders without a
console error, its charts exist, and a screenshot is kept under pytest's tmp dir.

Skipped where Chromium is absent, except under CI=true, where its absence is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import LOG, NOW, _checkpoints, _figures, _home

from supervisor.app import report as reporting
from supervisor.store import readmodels

_CONSOLE = re.compile(r":CONSOLE(?:\(\d+\))?:?\d*\]\s*(.*)")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (apt-get install -y chromium); CI must render the report")
        pytest.skip("chromium not installed here (Debian: apt-get install -y chromium)")
    return found


def headless(page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--enable-logging=stderr", "--v=0", "--window-size=1200,900", *mode, page.as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)


def console_messages(stderr: str) -> list[str]:
    return [m.group(1) for line in stderr.splitlines() if (m := _CONSOLE.search(line))]


def test_the_console_check_sees_a_script_error(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>missing();</script></body></html>")
    messages = console_messages(headless(page, tmp_path / "profile", "--dump-dom").stderr)
    assert any("missing is not defined" in m for m in messages)


def test_the_page_renders_its_charts_in_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "train-2.log"
    log.write_text(LOG)
    home, _ = _home(tmp_path, log=log)
    reader = readmodels.FileReader.open(home)
    assert reader is not None
    data = reader.report(now=NOW, checkpoints=_checkpoints, figures=_figures)
    page = tmp_path / "report.html"
    reporting.write_html(data, page)

    dom = headless(page, tmp_path / "profile", "--dump-dom")
    assert console_messages(dom.stderr) == []
    # The inline script ran and counted the charts: a timeline per run, the loss curves, waste by cause.
    assert re.search(r'<body data-charts="(\d+)"', dom.stdout).group(1) == "4"  # type: ignore[union-attr]
    assert dom.stdout.count('class="attempt"') == 5  # every attempt that started, in both runs' timelines
    assert dom.stdout.count('class="wasted"') == 3
    assert dom.stdout.count('class="curve"') == 1 and dom.stdout.count('class="cause"') == 3

    shot = tmp_path / "report.png"
    headless(page, tmp_path / "profile", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nreport screenshot: {shot}")
