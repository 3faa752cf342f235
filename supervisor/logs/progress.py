"""Progress in a chunk of a training log: the trainer's tqdm bar and its metric dicts.

Both are searched backwards from the chunk's end (the newest bar wins), in windows that grow, so a chunk
of a million lines costs a few small decodes.
"""

from __future__ import annotations

import re

from supervisor.domain.types import Progress
from supervisor.logs.text import MAX_TEXT, line_end, line_start

_BACKWARD_PROBES = 32  # how many trailing bars/dicts to look at before giving up on a chunk
_PROGRESS_WINDOW = 64 * 1024
_PROGRESS_FIRST_WINDOW = 4 * 1024

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
    limit = len(data)
    for _ in range(_BACKWARD_PROBES):
        pos = data.rfind(b"{'", 0, limit)
        if pos == -1:
            return None
        close = data.find(b"}", pos, line_end(data, pos))
        if close != -1:
            metrics = parse_metrics(data[pos : close + 1].decode("utf-8", errors="replace"))
            if metrics is not None:
                return metrics
        limit = pos
    return None


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
