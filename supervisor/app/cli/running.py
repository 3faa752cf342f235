"""Commands that keep the supervisor running: daemon, tick, and the scrontab, tmux and systemd recipes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from supervisor.app.cli.base import app, daemon_elsewhere, err, fail, out, state, supervisor_obj, user_errors
from supervisor.domain.durations import format_duration, parse_duration


def _poll_seconds(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        fail(f"--poll {value!r}: {exc}")
    if seconds <= 0:
        fail(f"--poll {value!r}: must be more than 0")
    return seconds


@app.command()
def daemon(
    poll: Annotated[str, typer.Option("--poll", metavar="DURATION",
                                      help="Time between ticks: 90s, 30m, 2h or seconds.")] = "30s",
    log_poll: Annotated[str, typer.Option(
        "--log-poll", metavar="DURATION",
        help="How often live logs are checked for growth without asking the cluster (for filesystems "
             "without inotify: Lustre, GPFS, NFS); 0 turns it off.")] = "2s",
    exit_when_idle: Annotated[bool, typer.Option(
        "--exit-when-idle", help="Exit once no run is pending, running or paused (demos, batch use).")] = False,
) -> None:
    """Supervise every active run until SIGTERM/SIGINT (one daemon per state directory)."""
    from supervisor.app.daemon import Daemon, instance_lock
    from supervisor.domain.errors import AlreadyRunning

    seconds = _poll_seconds(poll)
    try:
        log_seconds = parse_duration(log_poll)
    except ValueError as exc:
        fail(f"--log-poll {log_poll!r}: {exc}")
    try:
        with instance_lock(state.home):
            Daemon(supervisor_obj(), seconds, log_poll=log_seconds, exit_when_idle=exit_when_idle).run()
    except AlreadyRunning as exc:
        fail(str(exc), code=1)
    err.print(f"supervisor daemon stopped (poll was {format_duration(seconds)})", markup=False)


@app.command()
def tick() -> None:
    """One reconciliation pass (for scrontab). Does nothing when a daemon is running."""
    from supervisor.app.daemon import instance_lock
    from supervisor.domain.errors import AlreadyRunning

    try:
        with instance_lock(state.home):
            sv = supervisor_obj()
            sv.tick()
            sv.flush_outbox()
    except AlreadyRunning:
        elsewhere = daemon_elsewhere()
        err.print(f"{elsewhere}; nothing to do here" if elsewhere
                  else "a supervisor daemon is running for this state directory; nothing to do", markup=False)


def _this_install() -> Any:
    from supervisor.app.deploy import Install, running_command

    return Install(running_command(sys.argv[0], sys.executable, str(Path.cwd())), state.home)


def _duration(flag: str, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        fail(f"{flag} {value!r}: {exc}")


@app.command("scrontab")
def scrontab_cmd(
    partition: Annotated[str | None, typer.Option("--partition", metavar="P",
                                                  help="Partition of the tick job (default: the cluster's).")] = None,
    account: Annotated[str | None, typer.Option("--account", metavar="A", help="Account to charge.")] = None,
    time_limit: Annotated[str, typer.Option("--time", metavar="DURATION", help="Time limit of a tick job.")] = "10m",
    every: Annotated[str, typer.Option("--every", metavar="DURATION",
                                       help="Time between ticks: minutes dividing 60 or hours dividing 24.")] = "5m",
    install: Annotated[bool, typer.Option(
        "--install", help="Put it in your scrontab (other entries kept), showing the difference.")] = False,
    uninstall: Annotated[bool, typer.Option("--uninstall", help="Take it out of your scrontab.")] = False,
) -> None:
    """Print a scrontab entry running `tick` for this install and state directory (or install it)."""
    from supervisor.app import deploy
    from supervisor.domain.errors import SupervisorError

    if install and uninstall:
        fail("--install and --uninstall: choose one")
    every_s, time_s = _duration("--every", every), _duration("--time", time_limit)
    with user_errors():
        try:
            block = deploy.scrontab_entry(_this_install(), every_s=every_s, time_s=time_s, partition=partition,
                                          account=account)
            if not (install or uninstall):
                # Slurm opens the output file, in the state directory, before the tick could create it.
                state.home.mkdir(parents=True, exist_ok=True, mode=0o700)
                sys.stdout.write(block)
                return
            if install:
                state.home.mkdir(parents=True, exist_ok=True, mode=0o700)
                change = deploy.install_scrontab(block, state.home)
            else:
                change = deploy.remove_scrontab(state.home)
        except SupervisorError as exc:
            if exc.permanent:
                raise
            fail(str(exc), code=1)
    sys.stdout.write(change.diff)  # raw: Rich would read `:name:` as an emoji code
    what = f"the scrontab entry for {state.home}"
    if not change.installed:
        out.print(f"{what} is already installed" if install else f"no {what} is installed; nothing to remove",
                  markup=False, highlight=False)
    else:
        out.print(f"installed {what}" if install else f"removed {what}", markup=False, highlight=False)


@app.command("tmux")
def tmux_cmd(
    session: Annotated[str, typer.Option("--session", envvar="SUPERVISOR_SESSION", metavar="NAME",
                                         help="tmux session name.")] = "supervisor",
    poll: Annotated[str, typer.Option("--poll", metavar="DURATION", help="The daemon's --poll.")] = "30s",
) -> None:
    """Start the daemon in a detached tmux session, logging to the state directory; attach if it runs."""
    import os

    from supervisor.app import deploy
    from supervisor.domain.errors import SupervisorError

    _poll_seconds(poll)
    with user_errors():
        name = deploy.session_name(session)
        try:
            if deploy.tmux_session_exists(name):
                attach = deploy.tmux_attach_argv(name, inside_tmux=bool(os.environ.get("TMUX")))
                if sys.stdin.isatty() and sys.stdout.isatty():
                    os.execvp(attach[0], attach)
                out.print(f"tmux session {name!r} already runs; attach with: {' '.join(attach)}", markup=False,
                          highlight=False)
                return
            deploy.tmux_start(_this_install(), name, poll)
        except SupervisorError as exc:
            if exc.permanent:
                raise
            fail(str(exc), code=1)
    out.print(f"supervisor daemon started in tmux session {name!r} (attach: tmux attach -t {name});"
              f" log: {state.home / deploy.DAEMON_LOG}", markup=False, highlight=False)


@app.command("systemd-unit")
def systemd_unit_cmd(
    poll: Annotated[str, typer.Option("--poll", metavar="DURATION", help="The daemon's --poll.")] = "30s",
) -> None:
    """Print a systemd --user unit running the daemon of this install and state directory."""
    from supervisor.app import deploy

    _poll_seconds(poll)
    with user_errors():
        unit = deploy.systemd_unit(_this_install(), poll)
    sys.stdout.write(unit)
