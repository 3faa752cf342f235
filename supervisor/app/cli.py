"""The ``supervisor`` command: parse, call the library, render. Errors a user can cause exit with code 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from supervisor import __version__
from supervisor.domain.durations import format_duration, parse_duration
from supervisor.domain.errors import SpecError

app = typer.Typer(
    help="Babysit LLM fine-tuning pipelines on SLURM: submit, watch, resubmit, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
notify_app = typer.Typer(help="Notification channels of a run.", no_args_is_help=True)
app.add_typer(notify_app, name="notify")

DEFAULT_HOME = Path("~/.local/state/supervisor")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


class State:
    home: Path = DEFAULT_HOME.expanduser()


state = State()


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    from supervisor.domain.errors import UserError

    try:
        yield
    except (SpecError, UserError) as exc:
        fail(str(exc))


def supervisor_obj() -> Any:
    from supervisor.app.service import Supervisor

    return Supervisor(state.home)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _version(value: bool) -> None:
    if value:
        out.print(__version__)
        raise typer.Exit()


@app.callback()
def main_options(
    home: Annotated[Path | None, typer.Option(
        "--home", envvar="SUPERVISOR_HOME", help="State directory (holds the database and the lock).",
        show_default="~/.local/state/supervisor")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    from supervisor.app.logsetup import configure_logging

    state.home = (home or DEFAULT_HOME).expanduser().resolve()
    configure_logging(log_level)


@app.command()
def submit(spec: Annotated[Path, typer.Argument(help="Run spec (YAML).")]) -> None:
    """Validate a run spec and register the run; the daemon (or `tick`) starts it."""
    from supervisor.backends import default_backend

    with user_errors():
        name = supervisor_obj().register(spec, default_backend())
    out.print(name, markup=False, highlight=False)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """One row per run."""
    rows = supervisor_obj().status()
    if as_json:
        print_json(rows)
        return
    table = Table("run", "state", "stage", "attempt", "job", "progress", "updated")
    for row in rows:
        progress = row["progress"]
        shown = ""
        if progress:
            shown = f"{progress['step']}/{progress['total']}" if progress["total"] else str(progress["step"])
        table.add_row(row["name"], row["state"], row["stage"] or "", str(row["attempt"] or ""),
                      row["job_id"] or "", shown, row["updated_at"][:19].replace("T", " "))
    out.print(table)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Run name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Stages, attempts and events of one run."""
    with user_errors():
        data = supervisor_obj().show(name)
    if as_json:
        print_json(data)
        return
    out.print(f"[bold]{data['name']}[/bold]  {data['state']}  ({data['backend']}, {data['workdir']})")
    table = Table("stage", "state", "attempt", "job", "attempt state", "exit", "nodes", "cause")
    for stage in data["stages"]:
        if not stage["attempts"]:
            table.add_row(stage["name"], stage["state"], "", "", "", "", "", "")
        for a in stage["attempts"]:
            table.add_row(stage["name"], stage["state"], str(a["number"]), a["job_id"] or "", a["state"],
                          "" if a["exit_code"] is None else str(a["exit_code"]), a["nodes"] or "",
                          a["cause"] or "")
    out.print(table)
    events = Table("at", "kind", "stage", "message")
    for e in data["events"][-30:]:
        events.add_row(e["at"][:19].replace("T", " "), e["kind"], e["stage"] or "", e["message"])
    out.print(events)
    if data.get("notifications"):
        pending = Table("notification", "channel", "kind", "state", "tries", "last error")
        for n in data["notifications"]:
            pending.add_row(str(n["id"]), n["channel"], n["kind"], n["state"], str(n["tries"]),
                            n["last_error"] or "")
        out.print(pending)


def _simple(action: Callable[[Any, str], T], name: str, done: str) -> T:
    with user_errors():
        result = action(supervisor_obj(), name)
    out.print(done, markup=False, highlight=False)
    return result


@app.command()
def cancel(name: Annotated[str, typer.Argument(help="Run name.")]) -> None:
    """Cancel a run: its live jobs leave the queue and nothing new is submitted."""
    with user_errors():
        jobs = supervisor_obj().cancel_run(name)
    out.print(f"cancelled {name}" + (f" (jobs {', '.join(jobs)})" if jobs else ""), markup=False)


@app.command()
def retry(name: Annotated[str, typer.Argument(help="Run name.")]) -> None:
    """Run the failed stage again with a fresh attempt budget."""
    _simple(lambda s, n: s.retry(n), name, f"retrying {name}")


@app.command()
def pause(name: Annotated[str, typer.Argument(help="Run name.")]) -> None:
    """Stop new submissions (live jobs keep running and are still watched)."""
    _simple(lambda s, n: s.pause(n), name, f"paused {name}")


@app.command()
def resume(name: Annotated[str, typer.Argument(help="Run name.")]) -> None:
    """Allow new submissions again."""
    _simple(lambda s, n: s.resume(n), name, f"resumed {name}")


def _poll_seconds(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise typer.BadParameter("must be more than 0")
    return seconds


@app.command()
def daemon(
    poll: Annotated[str, typer.Option("--poll", help="Time between ticks: 90s, 30m, 2h or seconds.")] = "30s",
    exit_when_idle: Annotated[bool, typer.Option(
        "--exit-when-idle", help="Exit once no run is pending, running or paused (demos, batch use).")] = False,
) -> None:
    """Supervise every active run until SIGTERM/SIGINT (one daemon per state directory)."""
    from supervisor.app.daemon import Daemon, instance_lock
    from supervisor.domain.errors import AlreadyRunning

    seconds = _poll_seconds(poll)
    try:
        with instance_lock(state.home):
            Daemon(supervisor_obj(), seconds, exit_when_idle=exit_when_idle).run()
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
        err.print("a supervisor daemon is running for this state directory; nothing to do", markup=False)


@app.command()
def diagnose(
    logfile: Annotated[Path, typer.Argument(help="An archived job log.")],
    run: Annotated[str | None, typer.Option("--run", help="Also use this run's own `signatures:`.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Replay the failure-signature catalogue on a log: every match and the root cause (the verdict)."""
    from supervisor.logs.diagnose import diagnose as run_diagnose
    from supervisor.logs.scanner import Catalogue

    entries = None
    if run is not None:
        with user_errors():
            entries = supervisor_obj().run_signatures(run)
    if not logfile.is_file():
        fail(f"{logfile}: file not found")
    try:
        result = run_diagnose(logfile, Catalogue.load(entries, source=f"run {run}"))
    except OSError as exc:
        fail(f"{logfile}: cannot read the file: {exc.strerror}")
    if as_json:
        print_json(result)
        return
    table = Table("line", "signature", "action", "text")
    for m in result["matches"]:
        table.add_row(str(m["line"]), m["signature"], m["action"], m["text"])
    out.print(table)
    verdict = result["verdict"]
    out.print("verdict: " + (f"{verdict['signature']} -> {verdict['action']}" if verdict else "no known failure"),
              markup=False)


@notify_app.command("test")
def notify_test(
    name: Annotated[str, typer.Argument(help="Run name.")],
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
    app()
