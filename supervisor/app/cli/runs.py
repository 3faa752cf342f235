"""Commands on runs: submit, status, show, report, cancel, retry, pause, resume."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from supervisor.app import render
from supervisor.app.cli.base import (
    app,
    daemon_elsewhere,
    err,
    fail,
    logging_on,
    out,
    print_json,
    reader_obj,
    reading,
    show_all,
    state,
    supervisor_obj,
    user_errors,
)

T = TypeVar("T")


@app.command()
def submit(spec: Annotated[Path, typer.Argument(
        help="Run spec or campaign spec (YAML).", metavar="SPEC")]) -> None:
    """Validate a run spec (or a campaign spec) and register the run (or all the campaign's runs, or none);
    prints each name registered, one per line. The daemon (or `tick`) starts them."""
    # What Supervisor.submit does, without importing the service: the tick's modules it imports (log watcher,
    # observer, poller, submitter) cost `submit` 0.13 s of CPU, and a registration uses none of them.
    from supervisor.app import campaigns
    from supervisor.backends import default_backend
    from supervisor.domain.ports import SystemClock
    from supervisor.store.sqlitefile import connect_at_head

    with user_errors():
        submitted = campaigns.read(spec, default_backend())  # before the database: a bad spec writes nothing
        now = SystemClock().now()
        # A database at head takes the registration's plain SQL directly: no SQLAlchemy, no logging set-up.
        conn = connect_at_head(state.home)
        if conn is not None:
            with contextlib.closing(conn):
                names = campaigns.register(conn, now, submitted)
        else:
            logging_on()
            from supervisor.store.db import open_database, plain_connection

            with plain_connection(open_database(state.home)) as conn:
                names = campaigns.register(conn, now, submitted)
    if state.log_level in ("debug", "info"):
        logging_on()
        campaigns.log_registered(names, spec)
    for name in names:
        out.print(name, markup=False, highlight=False)


@app.command()
def plan(
    spec: Annotated[Path, typer.Argument(help="Run spec or campaign spec (YAML).", metavar="SPEC")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Do not ask the cluster (sinfo, sacctmgr) about partitions, accounts and QoS.")] = False,
) -> None:
    """What `submit SPEC` would do, with nothing submitted or written: each stage's sbatch command line,
    script and derived axolotl config (a diff from yours), the prepares runs would share, and what the
    cluster would refuse (exit code 2 when anything would be)."""
    from supervisor.app import plan as planning
    from supervisor.backends import default_backend

    with user_errors():
        found = planning.plan(spec, default_backend(), None if offline else planning.ask_cluster)
    if as_json:
        print_json(found)
    else:
        out.print(planning.render_text(found), markup=False, highlight=False, end="", soft_wrap=True)
    if found["problems"]:
        raise typer.Exit(2)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    campaign: Annotated[str | None, typer.Option(
        "--campaign", metavar="NAME", help="Only the runs of this campaign, under a line of its totals.")] = None,
) -> None:
    """One row per run."""
    with user_errors():
        rows = reading().status()
        if campaign is not None:
            rows = [row for row in rows if row.get("campaign") == campaign]
            if not rows:
                fail(f"no campaign named {campaign!r} (see `supervisor status`)")
    elsewhere = daemon_elsewhere()
    if elsewhere:
        err.print(f"note: {elsewhere}", markup=False, highlight=False)
    if as_json:
        print_json(rows)
        return
    if campaign is not None:
        out.print(render.campaign_line(campaign, rows), markup=False, highlight=False)
    if len(rows) <= render.PLAIN_ROWS:
        out.print(render.status_table(rows))
        return
    rule = "\u2500" if out.encoding.lower().startswith("utf") else "-"  # as Rich draws it
    sys.stdout.write("\n".join(render.status_lines(rows, out.width, rule)) + "\n")


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
def cancel(name: Annotated[str, typer.Argument(help="Run or campaign name.", metavar="RUN")]) -> None:
    """Cancel a run (or every active run of a campaign): live jobs leave the queue, nothing new is submitted."""
    with user_errors():
        sv = supervisor_obj()
        _, names = sv.commands.runs_of(name)
        for run in names:
            jobs = sv.commands.cancel_run(run)
            out.print(f"cancelled {run}" + (f" (jobs {', '.join(jobs)})" if jobs else ""), markup=False)


@app.command()
def retry(name: Annotated[str, typer.Argument(help="Run name.", metavar="RUN")]) -> None:
    """Run the failed stage again with a fresh attempt budget."""
    _simple(lambda s, n: s.commands.retry(n), name, f"retrying {name}")


@app.command()
def pause(name: Annotated[str, typer.Argument(help="Run or campaign name.", metavar="RUN")]) -> None:
    """Stop new submissions of a run (or of every active run of a campaign); live jobs keep running, watched."""
    with user_errors():
        sv = supervisor_obj()
        _, names = sv.commands.runs_of(name)
        for run in names:
            changed = sv.commands.pause(run)
            out.print(f"paused {run}" if changed else f"{run} is already paused", markup=False, highlight=False)


@app.command()
def resume(name: Annotated[str, typer.Argument(help="Run or campaign name.", metavar="RUN")]) -> None:
    """Allow new submissions again (of a run, or of every paused run of a campaign)."""
    with user_errors():
        sv = supervisor_obj()
        _, names = sv.commands.runs_of(name)
        for run in names:
            changed = sv.commands.resume(run)
            out.print(f"resumed {run}" if changed else f"{run} is not paused: nothing to resume", markup=False,
                      highlight=False)

