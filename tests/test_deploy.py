"""The deployment generators (golden files: the examples in deploy/), and `supervisor tmux` in a real tmux.

The scrontab entry run through Slurm is in test_deploy_slurm.py.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger

from supervisor.app import deploy
from supervisor.app.deploy import Install
from supervisor.domain.errors import UserError
from supervisor.store.statedir import LOCK_NAME, read_holder

from harness import Harness

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
# The examples in deploy/ are these inputs' output: they cannot drift from what the commands print.
EXAMPLE = Install(("/home/alice/.venvs/supervisor/bin/supervisor",), Path("/home/alice/.local/state/supervisor"))


def check_golden(path: Path, text: str) -> None:
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path.name} changed; rerun with UPDATE_GOLDEN=1 if intended"


def test_scrontab_example_is_the_generated_entry() -> None:
    check_golden(REPO / "deploy" / "supervisor.scrontab", deploy.scrontab_entry(EXAMPLE, partition="lrd_all_serial"))


def test_the_readme_shows_the_generated_entry() -> None:
    entry = deploy.scrontab_entry(EXAMPLE, partition="lrd_all_serial")
    assert textwrap.indent(entry, "  ") in (REPO / "README.md").read_text()


def test_systemd_example_is_the_generated_unit() -> None:
    check_golden(REPO / "deploy" / "supervisor.service", deploy.systemd_unit(EXAMPLE))


def test_tmux_pane_script_golden() -> None:
    check_golden(GOLDEN / "tmux-pane.sh", deploy.tmux_pane_script(EXAMPLE, "30s") + "\n")


def test_the_entry_names_this_install_and_an_output_slurm_expands() -> None:
    options, schedule, command = deploy.parse_entry(
        deploy.scrontab_entry(EXAMPLE, every_s=600, time_s=90, partition="p1", account="proj_a"))
    assert options == ["--job-name=supervisor-tick", "--partition=p1", "--account=proj_a", "--time=00:02:00",
                       "--output=/home/alice/.local/state/supervisor/scron-%j.log", "--open-mode=append"]
    assert schedule == "*/10 * * * *"
    assert command == "/home/alice/.venvs/supervisor/bin/supervisor --home /home/alice/.local/state/supervisor tick"


@pytest.mark.parametrize("minutes", [1, 2, 5, 15, 30, 60, 120, 180, 480, 720, 1440])
def test_every_becomes_a_cron_line_firing_at_equal_intervals(minutes: int) -> None:
    schedule = deploy.cron_schedule(minutes * 60.0)
    trigger = CronTrigger.from_crontab(schedule, timezone=UTC)  # a cron parser that is not ours
    fired: list[datetime] = []
    now = datetime(2025, 3, 1, 0, 0, 30, tzinfo=UTC)
    while len(fired) < 3 * 1440 // minutes:
        nxt = trigger.get_next_fire_time(fired[-1] if fired else None, now)
        assert nxt is not None
        fired.append(nxt)
        now = nxt + timedelta(seconds=1)
    assert {b - a for a, b in itertools.pairwise(fired)} == {timedelta(minutes=minutes)}


@pytest.mark.parametrize("every", [30.0, 90.0, 420.0, 45 * 60.0, 5 * 3600.0, 48 * 3600.0])
def test_what_cron_cannot_repeat_evenly_is_refused(every: float) -> None:
    with pytest.raises(UserError, match=r"^--every "):
        deploy.cron_schedule(every)


@pytest.mark.parametrize(("seconds", "expected"), [(1, "00:01:00"), (600, "00:10:00"), (3 * 3600 + 1, "03:01:00"),
                                                    (86400 + 120, "1-00:02:00")])
def test_time_limits_are_slurm_time_strings(seconds: float, expected: str) -> None:
    assert deploy.slurm_time(seconds) == expected


def test_a_path_scrontab_cannot_hold_is_refused() -> None:
    for install in (Install(("/opt/my venv/bin/supervisor",), EXAMPLE.home), Install(EXAMPLE.command, Path("/s/50%"))):
        with pytest.raises(UserError, match="whitespace or '%'"):
            deploy.scrontab_entry(install)
    with pytest.raises(UserError, match="--partition 'a b'"):
        deploy.scrontab_entry(EXAMPLE, partition="a b")


OTHER = "# my backups\nMAILTO=alice\n#SCRON --time=5\n0 3 * * * /home/alice/backup.sh\n"


def test_installing_keeps_other_entries_and_replaces_only_this_state_directorys_block() -> None:
    first = deploy.scrontab_entry(EXAMPLE)
    merged = deploy.merge_crontab(OTHER, first, EXAMPLE.home)
    assert merged == OTHER + "\n" + first
    second_home = Install(EXAMPLE.command, Path("/scratch/alice/sv"))
    both = deploy.merge_crontab(merged, deploy.scrontab_entry(second_home), second_home.home)
    changed = deploy.merge_crontab(both, deploy.scrontab_entry(EXAMPLE, every_s=900), EXAMPLE.home)
    assert changed == both.replace(first, deploy.scrontab_entry(EXAMPLE, every_s=900))
    assert deploy.merge_crontab(changed, deploy.scrontab_entry(EXAMPLE, every_s=900), EXAMPLE.home) == changed
    removed = deploy.remove_from_crontab(deploy.remove_from_crontab(changed, EXAMPLE.home), second_home.home)
    assert removed == OTHER
    assert deploy.remove_from_crontab(first, EXAMPLE.home) == ""


def test_a_block_without_its_end_line_is_left_to_the_user() -> None:
    begin, _ = deploy.block_markers(EXAMPLE.home)
    with pytest.raises(UserError, match="without its END line"):
        deploy.merge_crontab(f"{begin}\n*/5 * * * * true\n", deploy.scrontab_entry(EXAMPLE), EXAMPLE.home)


def test_the_running_command_is_absolute_and_keeps_the_venv() -> None:
    assert deploy.running_command("/v/bin/supervisor", "/v/bin/python", "/x") == ("/v/bin/supervisor",)
    assert deploy.running_command("bin/supervisor", "/v/bin/python", "/v") == ("/v/bin/supervisor",)
    assert deploy.running_command("/src/supervisor/__main__.py", "/v/bin/python", "/x") == (
        "/v/bin/python", "-m", "supervisor")


def test_systemd_words_keep_specifiers_and_spaces_literal() -> None:
    unit = deploy.systemd_unit(Install(("/opt/my venv/bin/supervisor",), Path("/s/100%$x")))
    assert 'ExecStart="/opt/my venv/bin/supervisor" --home /s/100%%$$x daemon --poll 30s\n' in unit


def test_the_commands_print_this_install(tmp_path: Path) -> None:
    """The console script names itself; the module form names its interpreter."""
    home = tmp_path / "state"
    script = Path(sys.executable).parent / "supervisor"
    done = subprocess.run([str(script), "--home", str(home), "scrontab"], capture_output=True, text=True, check=True)
    assert f"*/5 * * * * {script} --home {home} tick\n" in done.stdout
    assert home.is_dir(), "Slurm opens the output file in the state directory before the tick runs"
    h = Harness(tmp_path)
    unit = h.cli("--home", str(home), "systemd-unit", "--poll", "1m").out
    assert f"ExecStart={sys.executable} -m supervisor --home {home} daemon --poll 1m\n" in unit


def test_refusals_are_one_line_exit_2(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for args, message in [(["scrontab", "--every", "7m"], "error: --every 7m: cron cannot run at that interval"),
                          (["scrontab", "--every", "soon"], "error: --every 'soon': not a duration"),
                          (["scrontab", "--partition", "a;b"], "error: --partition 'a;b': expected a Slurm name"),
                          (["tmux", "--session", "a.b"], "error: --session 'a.b': expected letters"),
                          (["systemd-unit", "--poll", "0"], "error: --poll '0': must be more than 0")]:
        done = h.cli(*args, check=False)
        assert (done.code, done.out) == (2, ""), args
        assert done.err.splitlines() == [done.err.strip()] and done.err.startswith(message), done.err


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "supervisor.service"
    script = Path(sys.executable).parent / "supervisor"
    unit.write_text(deploy.systemd_unit(Install((str(script),), tmp_path / "state")))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # Unknown keys and bad values are only warnings (exit 0): any output is a finding.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    unit.write_text(deploy.systemd_unit(Install((str(tmp_path / "missing"),), tmp_path / "state")))
    assert subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, timeout=60).returncode != 0


# ---- tmux ------------------------------------------------------------------------------------------------


@pytest.fixture
def tmux_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    # A tmux server of the test's own (its socket under TMUX_TMPDIR), never the user's.
    socket_dir = Path("/tmp") / f"sv-tmux-{os.getpid()}-{tmp_path.name}"[:60]
    socket_dir.mkdir(mode=0o700)
    env = {**os.environ, "TMUX_TMPDIR": str(socket_dir)}
    env.pop("TMUX", None)
    try:
        yield env
    finally:
        subprocess.run(["tmux", "kill-server"], env=env, capture_output=True, timeout=30)
        shutil.rmtree(socket_dir, ignore_errors=True)


def _daemons_of(home: Path) -> list[int]:
    """Processes running `... --home HOME daemon ...`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"daemon" in argv and str(home).encode() in argv:
            found.append(int(entry.name))
    return found


def _wait(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_tmux_starts_one_daemon_attaches_to_it_and_kill_session_stops_it_cleanly(
        tmp_path: Path, tmux_env: dict[str, str]) -> None:
    h = Harness(tmp_path, extra_env=tmux_env)
    os.umask(umask := os.umask(0o022))
    assert umask & 0o077 != 0o077  # the log's privacy must not come from the test's own umask
    started = h.cli("tmux", "--session", "sv-test", "--poll", "1h")
    assert started.out.startswith("supervisor daemon started in tmux session 'sv-test'"), started
    assert subprocess.run(["tmux", "has-session", "-t", "=sv-test"], env=tmux_env, timeout=30).returncode == 0
    _wait(lambda: read_holder(h.home) is not None, "the daemon's lock record")
    daemons = _daemons_of(h.home)
    assert len(daemons) == 1 and read_holder(h.home).pid == daemons[0]  # type: ignore[union-attr]

    again = h.cli("tmux", "--session", "sv-test")
    assert again.out.strip() == "tmux session 'sv-test' already runs; attach with: tmux attach-session -t =sv-test"
    assert _daemons_of(h.home) == daemons

    log = h.home / deploy.DAEMON_LOG
    assert log.stat().st_mode & 0o777 == 0o600
    subprocess.run(["tmux", "kill-session", "-t", "=sv-test"], env=tmux_env, check=True, timeout=30)
    _wait(lambda: not _daemons_of(h.home), "the daemon to exit")
    # A clean exit empties the lock record; a daemon killed by the hang-up would have left it.
    assert (h.home / LOCK_NAME).read_bytes() == b""
    assert '"event": "daemon_stopped"' in log.read_text()


# ---- --install through a stand-in scrontab ---------------------------------------------------------------
# No scrontab exists here (test_deploy_slurm.py uses a real one where there is): this stand-in answers as
# src/scrontab/scrontab.c does: `-l` prints the file or "no crontab for USER" with exit 1, `FILE` sets it.
STAND_IN = """#!/bin/sh
store="$SCRONTAB_STORE"
case "$1" in
  -l) if [ -n "$SCRONTAB_BROKEN" ]; then
        echo "scrontab: fatal: slurm_request_crontab failed: Unable to contact slurm controller" >&2; exit 1
      fi
      if [ -f "$store" ]; then cat "$store"; else echo "no crontab for $(id -un)"; exit 1; fi ;;
  -r) rm -f "$store" ;;
  *) cp "$1" "$store" ;;
esac
"""


def test_install_shows_the_difference_keeps_other_entries_and_never_overwrites_an_unread_scrontab(
        tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scrontab").write_text(STAND_IN)
    (bin_dir / "scrontab").chmod(0o755)
    store = tmp_path / "installed"
    h = Harness(tmp_path, extra_env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "SCRONTAB_STORE": str(store)})
    begin, end = deploy.block_markers(h.home)

    first = h.cli("scrontab", "--install")
    assert f"+{begin}\n" in first.out and first.out.endswith(f"installed the scrontab entry for {h.home}\n")
    entry = h.cli("scrontab").out
    assert store.read_text() == entry

    store.write_text(OTHER + "\n" + entry)
    changed = h.cli("scrontab", "--install", "--every", "10m")
    assert "-*/5 * * * * " in changed.out and "+*/10 * * * * " in changed.out
    assert store.read_text() == OTHER + "\n" + h.cli("scrontab", "--every", "10m").out
    assert h.cli("scrontab", "--install", "--every", "10m").out == (
        f"the scrontab entry for {h.home} is already installed\n")

    broken = Harness(tmp_path, extra_env={**h.env, "SCRONTAB_BROKEN": "1"})
    before = store.read_text()
    refused = broken.cli("scrontab", "--install", "--every", "5m", check=False)
    assert (refused.code, refused.err) == (
        1, "error: scrontab -l failed: scrontab: fatal: slurm_request_crontab failed: Unable to contact slurm"
           " controller\n")
    assert store.read_text() == before

    assert h.cli("scrontab", "--uninstall").out.endswith(f"removed the scrontab entry for {h.home}\n")
    assert store.read_text() == OTHER
    assert end not in store.read_text()
