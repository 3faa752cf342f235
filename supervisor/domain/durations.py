"""Durations as people write them in specs and flags: ``90s``, ``30m``, ``2h``, ``1h30m`` or plain seconds."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s|ms)")
_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: str | float | int) -> float:
    """Seconds in ``value``; raises ValueError with the expected form on anything else."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 90s, 30m, 2h or a number of seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = value.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        return seconds
    pos, total = 0, 0.0
    for part in _PART.finditer(text):
        if part.start() != pos and text[pos : part.start()].strip():
            break
        total += float(part.group(1)) * _UNIT[part.group(2)]
        pos = part.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"{value!r} is not a duration: expected e.g. 90s, 30m, 2h, 1h30m or seconds")
    return total


def format_duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
