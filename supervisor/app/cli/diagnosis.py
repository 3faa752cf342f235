"""Commands that look into a log or a channel: diagnose, notify test."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from supervisor.app import render
from supervisor.app.cli.base import (
    app,
    fail,
    notify_app,
    out,
    print_json,
    reading,
    show_all,
    supervisor_obj,
    user_errors,
)


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
            results = supervisor_obj().commands.notify_test(name)
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
