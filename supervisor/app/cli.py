"""The ``supervisor`` command: parse, call the library, render (supervisor/app/render.py).

Errors a user can cause are one line on stderr and exit with code 2; a full disk under the state
directory is one line ``disk full at PATH`` and exit code 1 (nothing the user wrote is wrong).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console, RenderableType

from supervisor import __version__
from supervisor.app import render
from supervisor.domain.durations import format_duration, parse_duration
from supervisor.domain.errors import SpecError

# rich_markup_mode=None: click's plain help. Typer's Rich help labels every flag `<bool>`, --help included.
app = typer.Typer(
    help="Babysit LLM fine-tuning pipelines on SLURM: submit, watch, resubmit, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
notify_app = typer.Typer(help="Notification channels of a run.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(notify_app, name="notify")

DEFAULT_HOME = Path("~/.local/state/supervisor")
# Commands whose output *is* a log (tmux, scrontab): their info lines are shown unless --log-level says less.
LOGGING_COMMANDS = {"daemon", "tick"}
DISK_FULL_EXIT = 1
# Rich leaves colour out when the stream is not a terminal (and honours NO_COLOR).
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


class State:
    home: Path = DEFAULT_HOME.expanduser()


state = State()


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False)
    raise typer.Exit(code)


def disk_full(exc: BaseException) -> str | None:
    """The one line for ``exc`` if it is a full disk, else None."""
    from supervisor.app.diskfull import disk_full_at

    where = disk_full_at(exc, state.home)
    return None if where is None else f"disk full at {where}"


def _storage_error(exc: BaseException) -> bool:
    """An OSError or SQLAlchemy's DBAPIError; the latter without importing SQLAlchemy to ask (`status`
    reads with the standard library's sqlite3, and a DBAPIError exists only once SQLAlchemy is loaded)."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    return isinstance(exc, OSError) or (sa_exc is not None and isinstance(exc, sa_exc.DBAPIError))


@contextmanager
def user_errors() -> Iterator[None]:
    from supervisor.domain.errors import UserError

    try:
        yield
    except (SpecError, UserError) as exc:
        fail(str(exc))
    except Exception as exc:
        if not _storage_error(exc) or (message := disk_full(exc)) is None:
            raise
        fail(message, code=DISK_FULL_EXIT)


def reading() -> Any:
    """The service for a command that only reads; on a full disk, one reading the database file as it is."""
    from supervisor.store.readmodels import FileReader

    # The standard library's sqlite3 on the file: no SQLAlchemy, no service, no notifier stack to import.
    if (direct := FileReader.open(state.home)) is not None:
        return direct
    from supervisor.app.diskfull import snapshot_sessions, unread_wal
    from supervisor.app.service import Supervisor
    from supervisor.store.db import DB_NAME

    try:
        return reader_obj()
    except Exception as exc:
        if not _storage_error(exc) or (message := disk_full(exc)) is None:
            raise
    database = state.home / DB_NAME
    missing = f"; the newest changes (in {database}-wal) may be missing" if unread_wal(database) else ""
    err.print(f"note: {message}: read without writing{missing}", markup=False, highlight=False)
    return Supervisor(state.home, sessions=snapshot_sessions(database))


def supervisor_obj() -> Any:
    from supervisor.app.service import Supervisor

    return Supervisor(state.home)


def reader_obj() -> Any:
    """For commands that only read: a home without a database is not given one."""
    from supervisor.app.service import Supervisor
    from supervisor.store.db import open_database

    return Supervisor(state.home, sessions=open_database(state.home, create=False))


def daemon_elsewhere() -> str | None:
    """One line when a live daemon of this state directory runs on another host, else None."""
    from supervisor.store.statedir import holder_elsewhere, this_host

    holder = holder_elsewhere(state.home)
    if holder is None:
        return None
    return (f"the supervisor daemon of this state directory runs on host {holder.host} (pid {holder.pid}),"
            f" not on this host ({this_host()})")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def show_all(renderables: list[RenderableType]) -> None:
    for renderable in renderables:
        out.print(renderable)


def _version(value: bool) -> None:
    if value:
        out.print(__version__)
        raise typer.Exit()


def _home(value: Path | None) -> Path:
    from supervisor.domain.paths import directory_problem

    home = (value or DEFAULT_HOME).expanduser()
    try:
        home = home.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        fail(f"--home {home}: not a usable path")
    # Writability of an existing home is left to the command: `status` reads a home it cannot write.
    problem = directory_problem(home, writable=not home.is_dir())
    if problem is not None:
        fail(f"--home {home}: {problem}")
    return home


@app.callback()
def main_options(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(
        "--home", envvar="SUPERVISOR_HOME", help="State directory (holds the database and the lock).",
        show_default="~/.local/state/supervisor", metavar="DIR")] = None,
    log_level: Annotated[str | None, typer.Option(
        "--log-level", metavar="LEVEL",
        help="debug, info, warning or error. Default: info for daemon and tick, warning otherwise.")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    from supervisor.app.logsetup import LEVELS, configure_logging

    if log_level is not None and log_level.strip().lower() not in LEVELS:
        fail(f"--log-level {log_level!r}: expected one of {', '.join(LEVELS)}")
    state.home = _home(home)
    # A command's own log lines (e.g. `registered`) belong in the daemon's log, not next to `submit`'s answer.
    default = "info" if ctx.invoked_subcommand in LOGGING_COMMANDS else "warning"
    configure_logging((log_level or default).strip().lower())


@app.command()
def submit(spec: Annotated[Path, typer.Argument(help="Run spec (YAML).", metavar="SPEC")]) -> None:
    """Validate a run spec and register the run; the daemon (or `tick`) starts it."""
    from supervisor.backends import default_backend

    with user_errors():
        name = supervisor_obj().register(spec, default_backend())
    out.print(name, markup=False, highlight=False)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """One row per run."""
    with user_errors():
        rows = reading().status()
    elsewhere = daemon_elsewhere()
    if elsewhere:
        err.print(f"note: {elsewhere}", markup=False, highlight=False)
    if as_json:
        print_json(rows)
        return
    out.print(render.status_table(rows))


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Run name.", metavar="RUN")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    all_events: Annotated[bool, typer.Option(
        "--all", help=f"Every event, not only the last {render.EVENTS_SHOWN}.")] = False,
) -> None:
    """Stages, attempts, events, excluded nodes and undelivered notifications of one run."""
    with user_errors():
        data = reading().show(name)
    if as_json:
        print_json(data)
        return
    show_all(render.show_renderables(data, all_events=all_events))


@app.command()
def report(
    since: Annotated[str | None, typer.Option(
        "--since", metavar="DATE",
        help="Only runs active since DATE (2026-12-01 or 2026-12-01T08:00; UTC unless it names a zone).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    html_file: Annotated[Path | None, typer.Option(
        "--html", metavar="FILE", help="Also write one self-contained HTML page: timelines, loss curves, waste.")
    ] = None,
) -> None:
    """Node-hours used and wasted per run and cause, failures by signature, wall time per stage."""
    from supervisor.app import report as reporting

    since_at = _since(since)
    with user_errors():
        data = _report_data(since_at)
    if html_file is not None:
        try:
            reporting.write_html(data, html_file)
        except OSError as exc:
            fail(f"--html {html_file}: {exc.strerror or exc}")
        err.print(f"wrote {html_file}", markup=False, highlight=False)
    if as_json:
        print_json(data)
    elif html_file is None:
        show_all(reporting.report_renderables(data))


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--since {value!r}: not a date (expected 2026-12-01 or 2026-12-01T08:00)")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _report_data(since: datetime | None) -> dict[str, Any]:
    from supervisor.app.report import checkpoint_times, scheduler_figures
    from supervisor.store.readmodels import FileReader

    options: dict[str, Any] = {"since": since, "checkpoints": checkpoint_times,
                               "figures": scheduler_figures(state.home)}
    if (direct := FileReader.open(state.home)) is not None:
        return direct.report(**options)
    from supervisor.store import readmodels

    with reader_obj().sessions() as session:
        return readmodels.report(session, **options)


def _simple(action: Callable[[Any, str], T], name: str, done: str) -> T:
    with user_errors():
        result = action(supervisor_obj(), name)
    out.print(done, markup=False, highlight=False)
    return result


@app.command()
def cancel(name: Annotated[str, typer.Argument(help="Run name.", metavar="RUN")]) -> None:
    """Cancel a run: its live jobs leave the queue and nothing new is submitted."""
    with user_errors():
        jobs = supervisor_obj().cancel_run(name)
    out.print(f"cancelled {name}" + (f" (jobs {', '.join(jobs)})" if jobs else ""), markup=False)


@app.command()
def retry(name: Annotated[str, typer.Argument(help="Run name.", metavar="RUN")]) -> None:
    """Run the failed stage again with a fresh attempt budget."""
    _simple(lambda s, n: s.retry(n), name, f"retrying {name}")


@app.command()
def pause(name: Annotated[str, typer.Argument(help="Run name.", metavar="RUN")]) -> None:
    """Stop new submissions (live jobs keep running and are still watched)."""
    with user_errors():
        changed = supervisor_obj().pause(name)
    out.print(f"paused {name}" if changed else f"{name} is already paused", markup=False, highlight=False)


@app.command()
def resume(name: Annotated[str, typer.Argument(help="Run name.", metavar="RUN")]) -> None:
    """Allow new submissions again."""
    with user_errors():
        changed = supervisor_obj().resume(name)
    out.print(f"resumed {name}" if changed else f"{name} is not paused: nothing to resume", markup=False,
              highlight=False)


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


@app.command()
def diagnose(
    logfile: Annotated[Path, typer.Argument(help="An archived job log.", metavar="LOG")],
    run: Annotated[str | None, typer.Option("--run", metavar="RUN",
                                            help="Also use this run's own `signatures:`.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Replay the failure-signature catalogue on a log: every match and the root cause (the verdict)."""
    from supervisor.logs.diagnose import diagnose as run_diagnose
    from supervisor.logs.scanner import Catalogue

    entries = None
    if run is not None:
        with user_errors():
            entries = reading().run_signatures(run)
    if not logfile.is_file():
        fail(f"{logfile}: file not found")
    try:
        result = run_diagnose(logfile, Catalogue.load(entries, source=f"run {run}"))
    except OSError as exc:
        fail(f"{logfile}: cannot read the file: {exc.strerror}")
    if as_json:
        print_json(result)
        return
    show_all(render.diagnose_renderables(result))


@notify_app.command("test")
def notify_test(
    name: Annotated[str, typer.Argument(help="Run name.", metavar="RUN")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Send a test message to every notification channel of a run, now."""
    from supervisor.domain.errors import NotifyConfigError

    with user_errors():
        try:
            results = supervisor_obj().notify_test(name)
        except NotifyConfigError as exc:
            fail(str(exc))
    if not results:
        fail(f"run {name!r} has no `notify:` channels")
    if as_json:
        rows = [{"channel": key, "delivered": problem is None, "error": problem} for key, problem in results.items()]
        print_json(rows)
    else:
        for key, problem in results.items():
            out.print(f"{key}: {'delivered' if problem is None else 'FAILED: ' + problem}", markup=False)
    if any(problem is not None for problem in results.values()):
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except Exception as exc:
        # The last boundary: a full disk met outside `user_errors` (the daemon's lock file, a log directory).
        message = disk_full(exc)
        if message is None:
            raise
        err.print(f"error: {message}", markup=False, highlight=False)
        sys.exit(DISK_FULL_EXIT)
