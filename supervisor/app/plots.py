"""`plot`: a run's loss and learning rate against step, in the terminal (plotext) or as a PNG (matplotlib).

The input is :func:`supervisor.app.cli.progress.series`: per attempt, its points and how it ended. Each
attempt after the first starts with a marker line labelled with the attempt number and what ended the one
before (its cause), so a resubmission shows where the curve picked up again. Both libraries are imported
only here, only by `plot`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def boundaries(data: Mapping[str, Any]) -> list[tuple[float, str]]:
    """(step, label) where each attempt after the first begins: "attempt 2 after nccl_error"."""
    marks: list[tuple[float, str]] = []
    previous: Mapping[str, Any] | None = None
    for attempt in data["attempts"]:
        steps = _steps(attempt["points"])
        if previous is not None and steps:
            why = previous.get("cause") or previous.get("state") or "?"
            marks.append((steps[0], f"attempt {attempt['number']} after {why}"))
        if steps:
            previous = attempt
    return marks


def _steps(points: Sequence[Mapping[str, Any]]) -> list[float]:
    return [float(p["step"]) for p in points if p.get("step") is not None and p.get("loss") is not None]


def _xy(points: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(float(p["step"]), float(p[key])) for p in points if p.get("step") is not None and p.get(key) is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def terminal_plot(data: Mapping[str, Any], *, width: int, height: int, color: bool) -> str:
    """The plot as text for a terminal of ``width`` columns; ANSI colours only with ``color``."""
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(max(width, 40), max(height, 12))
    for attempt in data["attempts"]:
        xs, ys = _xy(attempt["points"], "loss")
        if xs:
            plt.plot(xs, ys, label=f"loss, attempt {attempt['number']}", marker="braille")
        lx, ly = _xy(attempt["points"], "learning_rate")
        if lx:
            plt.plot(lx, ly, yside="right", label=f"learning rate, attempt {attempt['number']}", marker="dot")
    for step, label in boundaries(data):
        plt.vline(step)
        plt.text(label, step, _top(data), alignment="left")
    plt.title(f"{data['run']}: {data['stage']}")
    plt.xlabel("step")
    plt.ylabel("loss", yside="left")
    text = str(plt.build())
    return text if color else str(plt.uncolorize(text))


def _top(data: Mapping[str, Any]) -> float:
    losses = [float(p["loss"]) for a in data["attempts"] for p in a["points"] if p.get("loss") is not None]
    return max(losses) if losses else 0.0


def write_png(data: Mapping[str, Any], path: Path, *, size: tuple[float, float], dpi: int) -> None:
    """The plot as a PNG at ``path``: loss on the left axis, learning rate on the right, attempt markers."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    try:
        lr_ax = ax.twinx()
        for attempt in data["attempts"]:
            xs, ys = _xy(attempt["points"], "loss")
            if xs:
                ax.plot(xs, ys, label=f"loss, attempt {attempt['number']}")
            lx, ly = _xy(attempt["points"], "learning_rate")
            if lx:
                lr_ax.plot(lx, ly, linestyle=":", label=f"learning rate, attempt {attempt['number']}")
        for step, label in boundaries(data):
            ax.axvline(step, color="grey", linestyle="--")
            ax.annotate(label, (step, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                        fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        lr_ax.set_ylabel("learning rate")
        ax.set_title(f"{data['run']}: {data['stage']}")
        handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
        if handles:
            ax.legend(handles=handles, loc="upper right", fontsize=8)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
