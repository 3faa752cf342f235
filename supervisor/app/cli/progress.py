"""Commands on a run's job output: logs (the job log without knowing its path) and plot (loss against step)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from supervisor.app.cli.base import app, err, fail, out, print_json, reading, user_errors

FOLLOW_POLL_S = 0.5  # how often `logs --follow` looks for more output
FOLLOW_STATE_EVERY = 4  # ... and asks the database, every this many looks, whether the attempt ended
ENDED = frozenset({"succeeded", "failed", "cancelled"})
PNG_SIZE = (10.0, 6.0)  # inches, at PNG_DPI: 1000 x 600 pixels
PNG_DPI = 100


def _pick(data: dict[str, Any], stage: str | None, attempt: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stage (default: the newest one with an attempt) and its attempt (default: the newest)."""
    stages = [s for s in data["stages"] if s["attempts"]]
    if stage is not None:
        named = [s for s in data["stages"] if s["name"] == stage]
        if not named:
            fail(f"run {data['name']!r} has no stage {stage!r} (stages: "
                 f"{', '.join(s['name'] for s in data['stages'])})")
        stages = [s for s in named if s["attempts"]]
        if not stages:
            fail(f"stage {stage!r} of run {data['name']!r} has no attempt yet")
    if not stages:
        fail(f"run {data['name']!r} has no attempt yet")
    chosen = stages[-1]
    attempts = chosen["attempts"]
    if attempt is None:
        return chosen, attempts[-1]
    found = next((a for a in attempts if a["number"] == attempt), None)
    if found is None:
        fail(f"stage {chosen['name']!r} of run {data['name']!r} has no attempt {attempt} "
             f"(attempts: {', '.join(str(a['number']) for a in attempts)})")
    return chosen, found


def _show(name: str) -> dict[str, Any]:
    with user_errors():
        data: dict[str, Any] = reading().show(name)
    return data


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="Run name.", metavar="RUN")],
    stage: Annotated[str | None, typer.Option("--stage", metavar="STAGE",
                                              help="Stage (default: the newest with an attempt).")] = None,
    attempt: Annotated[int | None, typer.Option("--attempt", metavar="N", help="Attempt (default: the newest).")
                       ] = None,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing what the log gains until the attempt ends (or Ctrl-C).")] = False,
) -> None:
    """Print the job log of a run's attempt, without knowing where it is."""
    chosen, picked = _pick(_show(name), stage, attempt)
    path = Path(picked["log"]) if picked.get("log") else None
    if path is None:
        fail(f"attempt {picked['number']} of stage {chosen['name']!r} has no log yet (state {picked['state']})")
    offset = 0
    if path.is_file():
        offset = _copy(path, 0)
    elif not follow:
        fail(f"{path}: the log of attempt {picked['number']} of stage {chosen['name']!r} does not exist (yet)")
    if not follow:
        return
    try:
        looks = 0
        while True:
            time.sleep(FOLLOW_POLL_S)
            if path.is_file():
                offset = _copy(path, offset)
            looks += 1
            if looks % FOLLOW_STATE_EVERY == 0 and _ended(name, chosen["name"], picked["number"]):
                if path.is_file():
                    _copy(path, offset)
                return
    except KeyboardInterrupt:
        return


def _copy(path: Path, offset: int) -> int:
    """Write what ``path`` holds past ``offset`` to stdout, as bytes; the new offset (0 after a truncation)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            if size < offset:
                offset = 0  # truncated or replaced: start again
            f.seek(offset)
            while chunk := f.read(1 << 20):
                sys.stdout.buffer.write(chunk)
                offset += len(chunk)
    except OSError as exc:
        fail(f"{path}: cannot read the log: {exc.strerror}")
    sys.stdout.buffer.flush()
    return offset


def _ended(name: str, stage: str, number: int) -> bool:
    data = _show(name)
    attempts: list[dict[str, Any]] = next((s["attempts"] for s in data["stages"] if s["name"] == stage), [])
    current = next((a for a in attempts if a["number"] == number), None)
    return current is None or current["state"] in ENDED or data["state"] in ENDED


def series(data: dict[str, Any], stage: str | None) -> dict[str, Any]:
    """The loss, learning rate and grad norm per step of every attempt of a stage (default: the run's train
    stage, else its newest with an attempt), read from the attempt logs and thinned per attempt."""
    from supervisor.logs.progress import metric_series

    if stage is None:
        trains = [s for s in data["stages"] if s["kind"] == "train" and s["attempts"]]
        stage = trains[-1]["name"] if trains else None
    chosen, _ = _pick(data, stage, None)
    attempts = []
    for a in chosen["attempts"]:
        log = Path(a["log"]) if a.get("log") else None
        try:
            points = metric_series(log.read_bytes()) if log is not None and log.is_file() else []
        except OSError as exc:
            err.print(f"note: {log}: cannot read the log: {exc.strerror}", markup=False, highlight=False)
            points = []
        attempts.append({"number": a["number"], "state": a["state"], "cause": a.get("cause"),
                         "outcome": a.get("outcome"), "log": a.get("log"),
                         "points": [vars(p) for p in points]})
    return {"run": data["name"], "stage": chosen["name"], "attempts": attempts}


@app.command()
def plot(
    name: Annotated[str, typer.Argument(help="Run name.", metavar="RUN")],
    stage: Annotated[str | None, typer.Option("--stage", metavar="STAGE",
                                              help="Stage (default: the train stage).")] = None,
    png: Annotated[Path | None, typer.Option("--png", metavar="FILE", help="Write the plot as a PNG image.")
                   ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The series, machine-readable.")] = False,
) -> None:
    """Loss (and learning rate) against step, attempt by attempt, with where each resubmission began and why."""
    from supervisor.app import plots

    data = series(_show(name), stage)
    if as_json:
        print_json(data)
        return
    if not any(a["points"] for a in data["attempts"]):
        fail(f"no loss logged yet in stage {data['stage']!r} of run {name!r}")
    if png is not None:
        try:
            plots.write_png(data, png, size=PNG_SIZE, dpi=PNG_DPI)
        except OSError as exc:
            fail(f"--png {png}: {exc.strerror or exc}")
        err.print(f"wrote {png}", markup=False, highlight=False)
        return
    width = out.size.width if out.is_terminal else 80
    # Rich's console knows whether colour is wanted (a terminal, NO_COLOR unset).
    color = out.is_terminal and not out.no_color
    sys.stdout.write(plots.terminal_plot(data, width=width, height=24, color=color) + "\n")
