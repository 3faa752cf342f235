"""The candidate engines behind the scanner: which lines of a chunk may hold a signature.

Hyperscan (when importable) runs one multi-pattern database over the whole chunk, with literal prefilters
for patterns that have a long enough literal; without it, each pattern's required literal is searched
with ``bytes.find`` and RE2 confirms. Either way a candidate is only a line worth decoding: the scanner
confirms every one with the signature's own (linear-time) regex.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from supervisor.logs.catalogue import (
    LinearBytesRegex,
    LinearRegex,
    compile_linear_bytes,
    hyperscan_expression,
    regex_tokens,
)
from supervisor.logs.text import line_end

_MIN_LITERAL = 3


@dataclass(frozen=True)
class Probe:
    """One pattern handed to the candidate engine."""

    signature: int  # index into the signatures, or -1 - milestone index
    detect: str
    confirm: LinearRegex
    caseless: bool


class Engine(Protocol):
    def candidates(self, data: bytes, *, stop_at_escape: bool = False) -> list[tuple[int, int]] | None:
        """(position inside the candidate line, probe id) pairs; may hold false positives. With
        `stop_at_escape`, None as soon as `data` turns out to hold an ESC byte (to be stripped first)."""
        ...


@dataclass(frozen=True)
class _Detector:
    """One expression in the Hyperscan database."""

    expression: str
    caseless: bool
    literal: str | None = None  # set when the expression finds just this literal (lower-cased if caseless)


class HyperscanEngine:
    def __init__(self, hyperscan: Any, probes: Sequence[Probe]) -> None:
        # Identical expressions (a signature and a milestone on the same text) are compiled once, and so
        # is a literal that contains another one: the shorter literal finds both.
        groups: dict[_Detector, list[int]] = {}
        for probe_id, probe in enumerate(probes):
            groups.setdefault(_detector(probe), []).append(probe_id)
        groups = _merge_covered_literals(groups)
        self._targets = [tuple(ids) for ids in groups.values()]
        # One more expression finds the ESC byte, which costs the scan nothing measurable and saves the
        # separate pass over every chunk that looking for it would take.
        self._escape_id = len(groups)
        self._terminated = hyperscan.ScanTerminated
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._db.compile(
            expressions=[*(d.expression.encode() for d in groups), rb"\x1b"],
            ids=list(range(len(groups) + 1)),
            elements=len(groups) + 1,
            flags=[
                *(hyperscan.HS_FLAG_CASELESS if d.caseless else 0 for d in groups),
                hyperscan.HS_FLAG_SINGLEMATCH,
            ],
        )

    def candidates(self, data: bytes, *, stop_at_escape: bool = False) -> list[tuple[int, int]] | None:
        hits: list[tuple[int, int]] = []
        append = hits.append
        escape_id = self._escape_id

        def on_match(expr_id: int, start: int, end: int, flags: int, context: object) -> bool:
            if expr_id == escape_id:
                return stop_at_escape  # True stops the scan
            # The last byte of the match lies on the line the match ends on.
            append((end - 1, expr_id))
            return False

        try:
            self._db.scan(data, match_event_handler=on_match)
        except self._terminated:
            return None
        return [(pos, probe_id) for pos, expr_id in hits for probe_id in self._targets[expr_id]]


# Hyperscan scans the bench log ~1.3x faster for the catalogue's required literals than for its regexes
# (fewer, simpler literals for its literal matcher), and `_confirm` checks every candidate line with the
# full pattern anyway. Only long literals stand in for their pattern, so that a common word ("Error")
# cannot make every line of a chatty log a candidate. Their outer whitespace goes too: the matcher keys on
# a literal's last bytes, and a literal ending in a space sends it to check every word of the log (~1.2x).
_MIN_PREFILTER_LITERAL = 8


def _detector(probe: Probe) -> _Detector:
    literal = required_literal(probe.detect)
    if literal is not None:
        literal = literal.strip()
    if literal is None or not literal.isascii() or len(literal) < _MIN_PREFILTER_LITERAL:
        return _Detector(hyperscan_expression(probe.detect), probe.caseless)
    if probe.caseless:
        literal = literal.lower()
    return _Detector("".join(f"\\x{byte:02x}" for byte in literal.encode()), probe.caseless, literal)


def _merge_covered_literals(groups: Mapping[_Detector, list[int]]) -> dict[_Detector, list[int]]:
    """Fold each literal detector into a shorter one whose literal it contains."""
    kept: dict[_Detector, list[int]] = {}
    # Shortest first and caseless before case-sensitive, so a detector is only folded into a kept one.
    for det in sorted(groups, key=lambda d: (d.literal is None, len(d.literal or ""), not d.caseless)):
        cover = next((k for k in kept if _covers(k, det)), None)
        if cover is not None:
            kept[cover].extend(groups[det])
        else:
            kept[det] = list(groups[det])
    return kept


def _covers(short: _Detector, long: _Detector) -> bool:
    """Whether every text `long` finds contains a match of `short`."""
    if short.literal is None or long.literal is None:
        return False
    if short.caseless:
        return short.literal in long.literal.lower()
    return not long.caseless and short.literal in long.literal


class RegexEngine:
    """Fallback without Hyperscan: `bytes.find` on a literal every match must contain, RE2 on the rest."""

    def __init__(self, probes: Sequence[Probe]) -> None:
        self._literal: list[tuple[int, bytes, bool]] = []
        self._regex: list[tuple[int, LinearBytesRegex]] = []
        for probe_id, probe in enumerate(probes):
            literal = required_literal(probe.detect)
            if literal is not None and literal.isascii():
                lit = literal.encode()
                self._literal.append((probe_id, lit.lower() if probe.caseless else lit, probe.caseless))
            else:
                expression = hyperscan_expression(probe.detect).encode()
                self._regex.append((probe_id, compile_linear_bytes(expression, probe.caseless)))
        self._any_caseless = any(caseless for _, _, caseless in self._literal)

    def candidates(self, data: bytes, *, stop_at_escape: bool = False) -> list[tuple[int, int]] | None:
        if stop_at_escape and b"\x1b" in data:
            return None
        hits: list[tuple[int, int]] = []
        lowered = data.lower() if self._any_caseless else data
        for probe_id, lit, caseless in self._literal:
            hay = lowered if caseless else data
            pos = hay.find(lit)
            while pos != -1:
                hits.append((pos, probe_id))
                pos = hay.find(lit, line_end(data, pos))
        for probe_id, rx in self._regex:
            # One candidate per line is all `_confirm` looks at; every match of a long line would make
            # finding their line starts quadratic.
            found = rx.search(data)
            while found is not None:
                hits.append((found.start(), probe_id))
                found = rx.search(data, line_end(data, found.start()))
        return hits


def load_hyperscan() -> Any:
    try:
        import hyperscan
    except ImportError:
        return None
    return hyperscan


def required_literal(pattern: str) -> str | None:
    """A literal substring every match of `pattern` contains (the longest found), or None."""
    tokens = regex_tokens(pattern)
    runs: list[str] = []
    current: list[str] = []
    depth = 0
    i = 0

    def flush() -> None:
        if current:
            runs.append("".join(current))
            current.clear()

    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if depth > 0 or tok == "(":
            depth += {"(": 1, ")": -1}.get(tok, 0)
            flush()
            i += 1
            continue
        if tok == "|":
            return None  # a top-level alternative need not contain the literal
        if tok == "{":
            close = tokens.index("}", i) if "}" in tokens[i:] else len(tokens)
            if current:
                current.pop()  # the repeated char may occur zero times
            flush()
            i = close + 1
            continue
        char = _literal_char(tok)
        if char is None or nxt in ("?", "*", "{"):
            flush()
        else:
            current.append(char)
            if nxt == "+":
                flush()
        i += 1
    flush()
    best = max(runs, key=len, default="")
    return best if len(best) >= _MIN_LITERAL else None


def _literal_char(tok: str) -> str | None:
    if len(tok) == 1:
        return None if tok in ".[]()*+?{}|^$" else tok
    if tok.startswith("\\") and len(tok) == 2 and not tok[1].isalnum():
        return tok[1]
    return None
