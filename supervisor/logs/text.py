"""Line arithmetic over raw log bytes, shared by the scanner and the progress parsers."""

from __future__ import annotations

# A matched line is reported (and stored) with at most this many characters.
MAX_TEXT = 512


def line_start(data: bytes, pos: int) -> int:
    return max(data.rfind(b"\n", 0, pos), data.rfind(b"\r", 0, pos)) + 1


def line_end(data: bytes, pos: int) -> int:
    ends = [e for e in (data.find(b"\n", pos), data.find(b"\r", pos)) if e != -1]
    return min(ends) if ends else len(data)
