"""The ``supervisor`` command's frame: the Typer app, its consoles and global options, and the helpers every
command uses (user errors as one line and exit code 2, a full disk as one line and exit code 1, the service
for reading or writing). The commands live beside it: runs.py, running.py, diagnosis.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, RenderableType

from supervisor import __version__
from supervisor.domain.errors import SpecError

try:
    # Plain strings, paths and numbers converted without importing pydantic (0.08 s): see coercion.py.
    from supervisor.app.cli.coercion import PlainTyper as Typer
except ImportError:  # a Typer without those internals: its own conversion
    from typer import Typer  # type: ignore[assignment]  # the same constructor, without the plain conversion

# rich_markup_mode=None: click's plain help. Typer's Rich help labels every flag `<bool>`, --help included.
app = Typer(
    help="Babysit LLM fine-tuning pipelines on SLURM: submit, watch, resubmit, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
notify_app = Typer(help="Notification channels of a run.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(notify_app, name="notify")

DEFAULT_HOME = Path("~/.local/state/supervisor")
# Commands whose output *is* a log (tmux, scrontab): their info lines are shown unless --log-level says less.
LOGGING_COMMANDS = {"daemon", "tick"}
# Commands that read the database file with sqlite3 (store/readmodels), or register with plain SQL (`submit`),
# and log nothing: their logging is configured only if they fall back to the service or to SQLAlchemy, which
# log (structlog costs them 0.07 s to import).
QUIET_COMMANDS = frozenset({"status", "show", "logs", "submit"})
DISK_FULL_EXIT = 1
# Rich leaves colour out when the stream is not a terminal (and honours NO_COLOR).
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class State:
    home: Path = DEFAULT_HOME.expanduser()
    log_level: str = "warning"
    logging_configured: bool = False


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

    logging_on()
    return Supervisor(state.home)


def reader_obj() -> Any:
    """For commands that only read: a home without a database is not given one."""
    from supervisor.app.service import Supervisor
    from supervisor.store.db import open_database

    logging_on()
    return Supervisor(state.home, sessions=open_database(state.home, create=False))


def logging_on() -> None:
    """structlog configured at the level the command line chose, once per command: before anything that logs."""
    from supervisor.app.logsetup import configure_logging

    if not state.logging_configured:
        configure_logging(state.log_level)
        state.logging_configured = True


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
    from supervisor.app.logsetup import LEVELS

    if log_level is not None and log_level.strip().lower() not in LEVELS:
        fail(f"--log-level {log_level!r}: expected one of {', '.join(LEVELS)}")
    state.home = _home(home)
    # A command's own log lines (e.g. `registered`) belong in the daemon's log, not next to `submit`'s answer.
    default = "info" if ctx.invoked_subcommand in LOGGING_COMMANDS else "warning"
    state.log_level = (log_level or default).strip().lower()
    state.logging_configured = False
    if ctx.invoked_subcommand not in QUIET_COMMANDS:
        logging_on()


