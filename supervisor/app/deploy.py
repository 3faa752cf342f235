"""Deployment files for *this* install: a scrontab entry, a tmux session, a systemd user unit.

The generators are pure (executable, state directory, options -> text or argv) so they are golden-tested
and nobody edits paths by hand. Only ``install_scrontab``/``remove_scrontab`` and ``tmux_start`` run
processes, all through ``run_tool``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from supervisor.domain.durations import format_duration
from supervisor.domain.errors import SupervisorError, UserError

TICK_JOB_NAME = "supervisor-tick"
DEFAULT_SESSION = "supervisor"
DAEMON_LOG = "daemon.log"
# %j: scrontab requeues the same job id for every run of an entry, so with --open-mode=append this is one
# growing file per entry. sbatch(1) "filename pattern" lists no %h: a home-relative path never expands.
SCRON_OUTPUT = "scron-%j.log"
_MINUTE_STEPS = [m for m in range(1, 60) if 60 % m == 0]
_HOUR_STEPS = [h for h in range(1, 25) if 24 % h == 0]
_SLURM_NAME = re.compile(r"[A-Za-z0-9_.,+@-]+")
_SESSION_NAME = re.compile(r"[A-Za-z0-9_-]+")
# A #SCRON line is split on whitespace by Slurm and a cron line's fields too; '%' is a filename pattern
# symbol in --output and a newline in classic cron.
_SCRON_UNSAFE = re.compile(r"[\s%]")


@dataclass(frozen=True)
class Install:
    """What a deployment file needs to start this supervisor: its argv prefix and its state directory."""

    command: tuple[str, ...]  # ("/venv/bin/supervisor",) or ("/venv/bin/python", "-m", "supervisor")
    home: Path

    def argv(self, *args: str) -> list[str]:
        return [*self.command, "--home", str(self.home), *args]


def running_command(argv0: str, executable: str, cwd: str) -> tuple[str, ...]:
    """The absolute command that started this process: the console script, or ``python -m supervisor``.

    Symlinks are kept: a venv's ``bin/python`` is a symlink whose target would leave the venv behind.
    """
    if Path(argv0).name in ("", "-c", "-m", "__main__.py"):
        return (executable, "-m", "supervisor")
    return (os.path.normpath(Path(cwd, argv0)),)


def _no_control(what: str, value: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UserError(f"{what} {value!r}: holds a control character")


def _checked_install(install: Install) -> None:
    for part in install.command:
        _no_control("executable", part)
    _no_control("state directory", str(install.home))


# ---- scrontab --------------------------------------------------------------------------------------------


def cron_schedule(seconds: float, flag: str = "--every") -> str:
    """The five cron fields that run something every ``seconds``; UserError when cron cannot say it.

    ``*/7`` is valid cron but restarts at every hour (…:49, :56, :00): only steps that divide the hour
    (or the day) run at equal intervals.
    """
    shown = _short(seconds)
    if seconds < 60 or seconds % 60:
        raise UserError(f"{flag} {shown}: cron runs at whole minutes, at most every minute")
    minutes = int(seconds // 60)
    if minutes in _MINUTE_STEPS:
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    if minutes % 60 == 0 and minutes // 60 in _HOUR_STEPS:
        hours = minutes // 60
        return {1: "0 * * * *", 24: "0 0 * * *"}.get(hours, f"0 */{hours} * * *")
    raise UserError(f"{flag} {shown}: cron cannot run at that interval; use minutes dividing 60 "
                    f"({', '.join(map(str, _MINUTE_STEPS))}) or hours dividing 24 "
                    f"({', '.join(map(str, _HOUR_STEPS))})")


def _short(seconds: float) -> str:
    """``5m``, ``2h``: how people write the durations cron can say."""
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"
    return format_duration(seconds)


def slurm_time(seconds: float, flag: str = "--time") -> str:
    """A Slurm time limit (``[D-]HH:MM:SS``), rounded up to whole minutes as Slurm does."""
    minutes = math.ceil(seconds / 60)
    if minutes < 1:
        raise UserError(f"{flag} {_short(seconds)}: must be more than 0")
    days, rest = divmod(minutes, 1440)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def _slurm_name(flag: str, value: str) -> str:
    if not _SLURM_NAME.fullmatch(value):
        raise UserError(f"{flag} {value!r}: expected a Slurm name (letters, digits, '_', '-', '.', ',')")
    return value


def block_markers(home: Path) -> tuple[str, str]:
    """The comment lines around this state directory's entry: ``--install`` replaces what lies between."""
    return f"# BEGIN supervisor --home {home}", f"# END supervisor --home {home}"


def scrontab_entry(install: Install, *, every_s: float = 300.0, time_s: float = 600.0,
                   partition: str | None = None, account: str | None = None) -> str:
    """The scrontab block that runs ``supervisor tick`` for ``install`` every ``every_s``."""
    _checked_install(install)
    for what, value in (("executable", install.command[0]), ("state directory", str(install.home))):
        if _SCRON_UNSAFE.search(value):
            raise UserError(f"{what} {value}: a scrontab entry cannot hold a path with whitespace or '%'")
    schedule = cron_schedule(every_s)
    options = [f"--job-name={TICK_JOB_NAME}"]
    if partition is not None:
        options.append(f"--partition={_slurm_name('--partition', partition)}")
    if account is not None:
        options.append(f"--account={_slurm_name('--account', account)}")
    options += [f"--time={slurm_time(time_s)}", f"--output={install.home / SCRON_OUTPUT}", "--open-mode=append"]
    given = (("--partition", partition), ("--account", account), ("--every", _short(every_s)),
             ("--time", _short(time_s)))
    flags = "".join(f" {flag} {value}" for flag, value in given if value is not None)
    begin, end = block_markers(install.home)
    lines = [
        begin,
        f"# Written by `supervisor scrontab{flags}`: regenerate it rather than edit it.",
        f"# `supervisor tick` every {_short(every_s)} in a Slurm job. The job runs on a compute node, so the",
        "# state directory must be on a filesystem the nodes share; while a daemon elsewhere holds it the tick",
        "# does nothing and says why in the output file below (a safety net behind a daemon in tmux).",
        *(f"#SCRON {option}" for option in options),
        f"{schedule} {shlex.join(install.argv('tick'))}",
        end,
    ]
    return "\n".join(lines) + "\n"


def parse_entry(block: str) -> tuple[list[str], str, str]:
    """(sbatch options, the five cron fields, the command) of the one entry in ``block``, as scrontab reads it."""
    options: list[str] = []
    for line in block.splitlines():
        stripped = line.strip()
        if stripped.startswith("#SCRON"):
            options += shlex.split(stripped[len("#SCRON"):])
        elif stripped and not stripped.startswith("#"):
            fields = stripped.split(None, 5)
            return options, " ".join(fields[:5]), fields[5]
    raise ValueError("no cron line in the block")


def merge_crontab(current: str, block: str, home: Path) -> str:
    """``current`` with this state directory's block replaced by ``block`` (or appended); other lines kept."""
    return _splice(current, block.splitlines(), home)


def remove_from_crontab(current: str, home: Path) -> str:
    return _splice(current, [], home, append=False)


def _splice(current: str, replacement: list[str], home: Path, *, append: bool = True) -> str:
    begin, end = block_markers(home)
    lines = current.splitlines()
    try:
        start = lines.index(begin)
    except ValueError:
        if not append or not replacement:
            return current
        separator = [""] if lines and lines[-1].strip() else []
        return "\n".join([*lines, *separator, *replacement]) + "\n"
    try:
        stop = lines.index(end, start)
    except ValueError:
        raise UserError(f"the installed scrontab has {begin!r} without its END line: fix it with `scrontab -e`"
                        ) from None
    if not replacement and start > 0 and not lines[start - 1].strip():
        start -= 1  # the blank line that appending put in front goes too
    kept = [*lines[:start], *replacement, *lines[stop + 1:]]
    return "\n".join(kept) + "\n" if kept else ""


def crontab_diff(current: str, new: str) -> str:
    return "".join(difflib.unified_diff(current.splitlines(keepends=True), new.splitlines(keepends=True),
                                        "installed scrontab", "new scrontab"))


# ---- tmux ------------------------------------------------------------------------------------------------


def session_name(value: str) -> str:
    # tmux reads '.' and ':' in a target as window/pane separators.
    if not _SESSION_NAME.fullmatch(value):
        raise UserError(f"--session {value!r}: expected letters, digits, '_' or '-'")
    return value


def tmux_pane_script(install: Install, poll: str) -> str:
    """The one-line /bin/sh script a tmux pane runs: the daemon, its log in the state directory (0600).

    The daemon writes to the log, never to the pane, and starts with SIGHUP ignored: `tmux kill-session`
    hangs the pane up, and the shell turns that into the SIGTERM on which the daemon finishes its tick and
    releases the lock (a hung-up daemon would die mid-tick, leaving its lock record to go stale).
    Ctrl-C in the pane does the same. ``tail`` only shows the log.
    """
    _checked_install(install)
    log = shlex.quote(str(install.home / DAEMON_LOG))
    daemon = shlex.join(install.argv("daemon", "--poll", poll))
    return (f"(umask 077 && : >> {log}) && chmod 600 {log} || exit 1; "
            f"trap '' HUP; {daemon} >> {log} 2>&1 < /dev/null & pid=$!; "
            "trap 'kill -TERM $pid 2>/dev/null' HUP INT TERM; "
            f"tail -n 20 -f --pid=$pid {log} & "
            'wait $pid; rc=$?; while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done; '
            'echo "supervisor daemon exited ($rc); press Enter to close"; read -r _')


def tmux_new_session_argv(session: str, script: str) -> list[str]:
    # One string: tmux before 3.0 takes a single shell-command, run by the user's shell (bash, zsh, tcsh),
    # which only has to pass it, single-quoted and on one line, to /bin/sh.
    return ["tmux", "new-session", "-d", "-s", session, f"exec /bin/sh -c {shlex.quote(script)}"]


def tmux_has_session_argv(session: str) -> list[str]:
    return ["tmux", "has-session", "-t", f"={session}"]  # '=': this exact name, not a prefix


def tmux_attach_argv(session: str, inside_tmux: bool) -> list[str]:
    # Attaching from inside tmux would nest a client; switching is what people mean there.
    return ["tmux", "switch-client" if inside_tmux else "attach-session", "-t", f"={session}"]


# ---- systemd ---------------------------------------------------------------------------------------------


def _systemd_word(arg: str) -> str:
    """One ExecStart argument: '%' (specifiers) and '$' (variables) literal, quoted where systemd splits."""
    word = arg.replace("%", "%%").replace("$", "$$")
    if word and not re.search(r"[\s\"'\\;]", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(install: Install, poll: str = "30s") -> str:
    _checked_install(install)
    exec_start = " ".join(_systemd_word(arg) for arg in install.argv("daemon", "--poll", poll))
    return f"""\
# systemd --user unit written by `supervisor systemd-unit`: regenerate it rather than edit it. Install:
#   mkdir -p ~/.config/systemd/user && supervisor systemd-unit > ~/.config/systemd/user/supervisor.service
#   systemctl --user daemon-reload && systemctl --user enable --now supervisor
#   loginctl enable-linger "$USER"   # keep it running after you log out
[Unit]
Description=SLURM LLM pipeline supervisor
After=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
# SIGTERM makes the daemon finish its tick and exit cleanly.
KillSignal=SIGTERM
TimeoutStopSec=60
Restart=on-failure
RestartSec=30

[Install]
WantedBy=default.target
"""


# ---- the parts that run processes ------------------------------------------------------------------------

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_tool(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)


def _require(tool: str, why: str = "") -> None:
    if shutil.which(tool) is None:
        raise UserError(f"{tool} is not installed on this host{why}")


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    text = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return text[-1] if text else f"exit status {done.returncode}"


def installed_scrontab(run: Runner = run_tool) -> str:
    """The user's scrontab as ``scrontab -l`` prints it; "" when there is none. Any other failure raises:
    an unreadable scrontab must never be taken for an empty one (installing would drop its entries)."""
    done = run(["scrontab", "-l"])
    if done.returncode == 0:
        return done.stdout
    if done.returncode == 1 and done.stdout.startswith("no crontab for "):
        return ""
    raise SupervisorError(f"scrontab -l failed: {_last_line(done)}", permanent=False)


@dataclass(frozen=True)
class ScrontabChange:
    diff: str  # "" when nothing changed
    installed: bool


def _write_scrontab(new: str, run: Runner) -> None:
    if not new.strip():
        done = run(["scrontab", "-r"])
    else:
        with tempfile.NamedTemporaryFile("w", prefix="scrontab-", suffix=".txt") as f:  # created 0600
            f.write(new)
            f.flush()
            done = run(["scrontab", f.name])
    if done.returncode != 0:
        raise SupervisorError(f"scrontab failed: {_last_line(done)}", permanent=False)


def install_scrontab(block: str, home: Path, run: Runner = run_tool) -> ScrontabChange:
    _require("scrontab", " (Debian's slurm-client 22.05 ships none): install the printed entry on the cluster")
    current = installed_scrontab(run)
    new = merge_crontab(current, block, home)
    if new == current:
        return ScrontabChange("", installed=False)
    _write_scrontab(new, run)
    return ScrontabChange(crontab_diff(current, new), installed=True)


def remove_scrontab(home: Path, run: Runner = run_tool) -> ScrontabChange:
    _require("scrontab")
    current = installed_scrontab(run)
    new = remove_from_crontab(current, home)
    if new == current:
        return ScrontabChange("", installed=False)
    _write_scrontab(new, run)
    return ScrontabChange(crontab_diff(current, new), installed=True)


def tmux_session_exists(session: str, run: Runner = run_tool) -> bool:
    _require("tmux")
    return run(tmux_has_session_argv(session)).returncode == 0


def tmux_start(install: Install, session: str, poll: str, run: Runner = run_tool) -> None:
    install.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    done = run(tmux_new_session_argv(session, tmux_pane_script(install, poll)))
    if done.returncode != 0:
        raise SupervisorError(f"tmux new-session failed: {_last_line(done)}", permanent=False)
