"""Progress in a chunk of a training log: the trainer's tqdm bar and its metric dicts.

Both are searched backwards from the chunk's end (the newest bar wins), in windows that grow, so a chunk
of a million lines costs a few small decodes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from supervisor.domain.types import Progress
from supervisor.logs.text import MAX_TEXT, line_end, line_start

_BACKWARD_PROBES = 32  # how many trailing bars/dicts to look at before giving up on a chunk
_PROGRESS_WINDOW = 64 * 1024
_PROGRESS_FIRST_WINDOW = 4 * 1024
# Per attempt in `plot` and the report page: a picture, not a metrics store; a run's series is bounded by
# its attempts however long each ran.
MAX_SERIES_POINTS = 400

TQDM_BAR_RE = re.compile(r"(?P<pct>[0-9]{1,3})%\|[^|]*\|\s*(?P<n>[0-9]+)/(?P<total>[0-9]+|\?)\s*\[[^\]]*\]")


_TQDM_NOTOTAL_RE = re.compile(r"(?:^|\s)(?P<n>[0-9]+)it \[[^\]]*\]")


_METRIC_PAIR_RE = re.compile(r"'(?P<key>[^']+)':\s*(?:'(?P<q>[^']*)'|(?P<v>[^,}\s]+))")


_METRIC_KEYS = frozenset({"loss", "eval_loss", "train_loss", "train_runtime", "epoch", "grad_norm"})


def last_progress(data: bytes) -> Progress | None:
    """The last tqdm bar without a description (the trainer's, not `Tokenizing Prompts` or `Map`)."""
    probes = 0
    hi = len(data)
    # The last bar is nearly always in the last few lines: a small first window keeps an absent needle
    # ("it/s]" where bars print "s/it]") from costing a search of 64 KiB on every chunk.
    window = _PROGRESS_FIRST_WINDOW
    while hi > 0 and probes < _BACKWARD_PROBES:
        # Backwards in windows: a needle absent from the chunk must not cost a scan of all of it per probe.
        lo = max(0, hi - window)
        window = min(4 * window, _PROGRESS_WINDOW)
        limit = hi
        while probes < _BACKWARD_PROBES:
            pos = max(data.rfind(b"it]", lo, limit), data.rfind(b"it/s]", lo, limit))
            if pos == -1:
                break
            probes += 1
            start = line_start(data, pos)
            segment = data[start : min(pos + 5, start + 4 * MAX_TEXT)].decode("utf-8", errors="replace")
            found = _parse_bar(segment)
            if found is not None:
                return found
            limit = start
        # Overlap by a needle's length so a needle straddling the window edge is still seen.
        hi = min(lo + 4, limit) if lo > 0 else 0
    return None


def _parse_bar(segment: str) -> Progress | None:
    bar = TQDM_BAR_RE.search(segment)
    if bar is not None:
        if segment[: bar.start()].strip() or bar.group("total") == "?":
            return None  # a described bar (dataset map, tokenising) or one without a total
        return Progress(step=int(bar.group("n")), total=int(bar.group("total")))
    plain = _TQDM_NOTOTAL_RE.search(segment)
    if plain is not None and not segment[: plain.start()].strip():
        return Progress(step=int(plain.group("n")))
    return None


def last_metrics(data: bytes) -> dict[str, float] | None:
    """The chunk's last metric dict of any kind (a training step's, an evaluation's, the summary)."""
    return next(_metric_dicts_backwards(data), None)


def last_loss(data: bytes) -> float | None:
    """The chunk's last finite training loss (an evaluation or summary dict after it does not hide it)."""
    return next((loss for m in _metric_dicts_backwards(data) if (loss := training_loss(m)) is not None), None)


def _metric_dicts_backwards(data: bytes) -> Iterator[dict[str, float]]:
    """The chunk's metric dicts from the last one back, at most _BACKWARD_PROBES candidates looked at."""
    limit = len(data)
    for _ in range(_BACKWARD_PROBES):
        pos = data.rfind(b"{'", 0, limit)
        if pos == -1:
            return
        close = data.find(b"}", pos, line_end(data, pos))
        if close != -1:
            metrics = parse_metrics(data[pos : close + 1].decode("utf-8", errors="replace"))
            if metrics is not None:
                yield metrics
        limit = pos


def parse_metrics(text: str) -> dict[str, float] | None:
    """A Trainer metric dict (values quoted, as recent versions print them, or bare; nan/inf kept)."""
    values: dict[str, float] = {}
    for pair in _METRIC_PAIR_RE.finditer(text):
        raw = pair.group("q") if pair.group("q") is not None else pair.group("v")
        try:
            values[pair.group("key")] = float(raw)
        except ValueError:
            continue
    return values if values.keys() & _METRIC_KEYS else None


def training_loss(metrics: Mapping[str, float] | None) -> float | None:
    """The training loss of a Trainer metric dict; None for an eval or summary dict, or a loss that is not a
    finite number (nan, inf: nothing a rate or a plot can use)."""
    loss = metrics.get("loss") if metrics else None
    return loss if loss is not None and math.isfinite(loss) else None


@dataclass(frozen=True)
class MetricPoint:
    """One metric dict of a training log, at the step the trainer's bar showed when it was printed."""

    step: int | None
    loss: float | None
    learning_rate: float | None = None
    grad_norm: float | None = None
    epoch: float | None = None


def metric_series(data: bytes, max_points: int = MAX_SERIES_POINTS) -> list[MetricPoint]:
    """Every training metric dict of a log in order, thinned to at most ``max_points`` (evenly, the last
    one kept), each at its step.

    A Trainer dict names its epoch, not its step, and it reaches the log out of step with the bar (stdout and
    stderr are buffered apart: five dicts can come before the bar line of their steps). The epoch is exact,
    so the step is the epoch times the steps per epoch, taken from the newest bar line and the newest epoch;
    without a bar or an epoch, the latest bar step before the dict.
    """
    found: list[tuple[int | None, dict[str, float]]] = []
    last_epoch: float | None = None
    step: int | None = None
    total: int | None = None
    for raw in re.split(rb"[\r\n]", data):
        if b"it]" in raw or b"it/s]" in raw:
            bar = _parse_bar(raw[-4 * MAX_TEXT:].decode("utf-8", errors="replace"))
            # The trainer's bar counts the most steps; an evaluation bar (fewer) does not move the step.
            if bar is not None and (total is None or bar.total is None or bar.total >= total):
                step, total = bar.step, bar.total if bar.total is not None else total
        elif b"{'" in raw:
            metrics = parse_metrics(raw.decode("utf-8", errors="replace"))
            if metrics is None:
                continue
            # Any dict's epoch (an eval's, the summary's) anchors the steps per epoch against the newest bar.
            last_epoch = metrics.get("epoch") or last_epoch
            if "loss" in metrics:
                found.append((step, metrics))
    per_epoch = step / last_epoch if step and last_epoch else None
    points = [
        MetricPoint(step=round(m["epoch"] * per_epoch) if per_epoch and "epoch" in m else at,
                    loss=training_loss(m), learning_rate=m.get("learning_rate"), grad_norm=m.get("grad_norm"),
                    epoch=m.get("epoch"))
        for at, m in found
    ]
    return thinned(points, max_points)


def thinned(points: list[MetricPoint], max_points: int) -> list[MetricPoint]:
    """At most ``max_points`` of ``points``, evenly spaced, the first and the last kept."""
    if len(points) <= max_points or max_points < 2:
        return points[-max_points:] if max_points < 2 else points
    stride = (len(points) - 1) / (max_points - 1)
    return [points[round(i * stride)] for i in range(max_points)]
