"""Durations as people write them in specs and flags: ``90s``, ``30m``, ``2h``, ``1h30m``, ``500ms`` or seconds."""

from __future__ import annotations

import math
import re

# `ms` before `m`: the alternation takes the first unit that matches, and `500ms` is not `500m` + `s`.
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|d|h|m|s)")
_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
EXPECTED = "expected e.g. 90s, 30m, 2h, 1h30m, 500ms or seconds"


def parse_duration(value: str | float | int) -> float:
    """Seconds in ``value``, finite and >= 0; raises ValueError with the expected form on anything else.

    ``nan`` and ``inf`` are refused: float() reads them, and a timeout of ``inf`` never fires while
    ``nan`` compares false with everything, so both would silently switch a check off.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {EXPECTED}")
    if isinstance(value, int | float):
        return _checked(float(value))
    text = value.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return _checked(seconds)
    pos, total = 0, 0.0
    for part in _PART.finditer(text):
        if part.start() != pos and text[pos : part.start()].strip():
            break
        total += float(part.group(1)) * _UNIT[part.group(2)]
        pos = part.end()
    if pos == 0 or text[pos:].strip():
        # Never the value itself: in a spec this may be a secret pasted into the wrong field.
        raise ValueError(f"not a duration: {EXPECTED}")
    return _checked(total)


def _checked(seconds: float) -> float:
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number of seconds: {EXPECTED}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
