"""Scan chunks of a job log for failure signatures, progress and milestones, and pick the root cause.

A chunk is a run of complete lines as the tailer returns them. Lines are split on every `\\r` and every
`\\n` (so `\\r\\n` counts as two breaks, like the tailer's line numbers). Scanning is two-phase: a
multi-pattern engine (Hyperscan when importable, else literal prefilters) finds candidate positions
over the whole chunk; Python `re` then confirms each candidate on its single logical line and extracts
named groups. Only candidate lines are ever decoded, which keeps the common case (no failure) at
memory-bandwidth speed.

Verdict rules (see `verdict`):
  1. `ignore` entries and `hang_hint` entries are never the verdict.
  2. The verdict is the earliest remaining match that is not a `wrapper`; a failure that comes after
     `training_completed` therefore leaves the verdict at `finish` (the final-merge NCCL hang, a full
     disk while saving), while every match is still reported.
  3. Only when nothing but wrappers matched is the earliest wrapper the verdict, so a bare
     ChildFailedError still yields an action.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from supervisor.domain import verdict
from supervisor.domain.errors import SignatureError
from supervisor.domain.types import LogMatch, MatchRole, Progress
from supervisor.logs.catalogue import (
    CompiledSignature,
    LinearBytesRegex,
    LinearRegex,
    RegexMatch,
    SignatureSpec,
    compile_linear,
    compile_linear_bytes,
    compile_signature,
    hyperscan_expression,
    load_specs,
    regex_tokens,
)

MAX_TEXT = 512
CONTEXT_BEFORE = 3
CONTEXT_AFTER = 2
MAX_PER_SIGNATURE = 20  # per scan call: a warning repeated a million times must not flood the DB
_MIN_LITERAL = 3
_BACKWARD_PROBES = 32  # how many trailing bars/dicts to look at before giving up on a chunk
_PROGRESS_WINDOW = 64 * 1024
_PROGRESS_FIRST_WINDOW = 4 * 1024

_ANSI_RE = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b\r\n]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_TQDM_BAR_RE = re.compile(r"(?P<pct>[0-9]{1,3})%\|[^|]*\|\s*(?P<n>[0-9]+)/(?P<total>[0-9]+|\?)\s*\[[^\]]*\]")
_TQDM_NOTOTAL_RE = re.compile(r"(?:^|\s)(?P<n>[0-9]+)it \[[^\]]*\]")
_METRIC_PAIR_RE = re.compile(r"'(?P<key>[^']+)':\s*(?:'(?P<q>[^']*)'|(?P<v>[^,}\s]+))")
_METRIC_KEYS = frozenset({"loss", "eval_loss", "train_loss", "train_runtime", "epoch", "grad_norm"})


class MilestoneKind(enum.StrEnum):
    TRAINER_STARTED = "trainer_started"
    TRAINING_COMPLETED = "training_completed"
    MODEL_SAVED = "model_saved"
    PREPROCESSED = "preprocessed"


@dataclass(frozen=True)
class Milestone:
    kind: MilestoneKind
    line: int
    text: str
    path: str | None = None


@dataclass(frozen=True)
class ScanResult:
    matches: tuple[LogMatch, ...] = ()
    milestones: tuple[Milestone, ...] = ()
    progress: Progress | None = None  # the last description-less tqdm bar in the chunk
    metrics: Mapping[str, float] | None = None  # the last metric dict in the chunk


# (kind, detection pattern, extraction pattern, caseless). Detection stays a plain prefix so Hyperscan
# reports once per occurrence; extraction runs only on the confirmed line.
_MILESTONES: tuple[tuple[MilestoneKind, str, str, bool], ...] = (
    (MilestoneKind.TRAINER_STARTED, r"Starting trainer\.\.\.", r"Starting trainer\.\.\.", False),
    (
        MilestoneKind.TRAINING_COMPLETED,
        r"Training completed!",
        r"Training completed!+(?: Saving (?:trained|pre-trained) model to (?P<path>[^ \t]+))?",
        True,
    ),
    (
        MilestoneKind.TRAINING_COMPLETED,
        r"Saving pre-trained model to ",
        r"Saving pre-trained model to (?P<path>[^ \t]+)",
        True,
    ),
    (
        MilestoneKind.MODEL_SAVED,
        r"Model successfully saved to ",
        r"Model successfully saved to (?P<path>[^ \t]+)",
        False,
    ),
    (
        MilestoneKind.PREPROCESSED,
        r"Success! Preprocessed data path: ",
        r"Success! Preprocessed data path: (?:`?dataset_prepared_path: )?(?P<path>[^ \t`']+)",
        False,
    ),
)


@dataclass(frozen=True)
class _Probe:
    """One pattern handed to the candidate engine."""

    signature: int  # index into the signatures, or -1 - milestone index
    detect: str
    confirm: LinearRegex
    caseless: bool


class _Engine(Protocol):
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


class _HyperscanEngine:
    def __init__(self, hyperscan: Any, probes: Sequence[_Probe]) -> None:
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


def _detector(probe: _Probe) -> _Detector:
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


class _RegexEngine:
    """Fallback without Hyperscan: `bytes.find` on a literal every match must contain, RE2 on the rest."""

    def __init__(self, probes: Sequence[_Probe]) -> None:
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
                pos = hay.find(lit, _line_end(data, pos))
        for probe_id, rx in self._regex:
            # One candidate per line is all `_confirm` looks at; every match of a long line would make
            # finding their line starts quadratic.
            found = rx.search(data)
            while found is not None:
                hits.append((found.start(), probe_id))
                found = rx.search(data, _line_end(data, found.start()))
        return hits


def _load_hyperscan() -> Any:
    try:
        import hyperscan
    except ImportError:
        return None
    return hyperscan


class Catalogue:
    """Compiled signatures plus the candidate engine. Not thread-safe (Hyperscan scratch is shared)."""

    def __init__(
        self,
        specs: Iterable[SignatureSpec],
        *,
        engine: str = "auto",
        max_per_signature: int = MAX_PER_SIGNATURE,
    ) -> None:
        """engine: "auto" (Hyperscan when importable), "hyperscan" (required) or "regex"."""
        self.signatures: tuple[CompiledSignature, ...] = tuple(compile_signature(s) for s in specs)
        self._by_name = {sig.name: sig for sig in self.signatures}
        self.max_per_signature = max_per_signature
        probes: list[_Probe] = []
        for index, sig in enumerate(self.signatures):
            probes.extend(
                _Probe(index, pattern, regex, sig.spec.caseless)
                for pattern, regex in zip(sig.spec.patterns, sig.regexes, strict=True)
            )
        for index, (_, detect, extract, caseless) in enumerate(_MILESTONES):
            probes.append(_Probe(-1 - index, detect, compile_linear(extract, caseless), caseless))
        self._probes = tuple(probes)
        hyperscan = _load_hyperscan() if engine in ("auto", "hyperscan") else None
        if engine == "hyperscan" and hyperscan is None:
            raise RuntimeError("hyperscan engine requested but the hyperscan module is not importable")
        if engine not in ("auto", "hyperscan", "regex"):
            raise ValueError(f"unknown engine {engine!r}")
        self._engine: _Engine
        if hyperscan is not None:
            self._engine = self._compile_hyperscan(hyperscan)
            self.engine_name = "hyperscan"
        else:
            self._engine = _RegexEngine(self._probes)
            self.engine_name = "regex"

    def _compile_hyperscan(self, hyperscan: Any) -> _HyperscanEngine:
        try:
            return _HyperscanEngine(hyperscan, self._probes)
        except hyperscan.error:
            pass
        # Compile one at a time only on failure, to name the entry and pattern in the error.
        for probe in self._probes:
            try:
                _HyperscanEngine(hyperscan, [probe])
            except hyperscan.error as exc:
                if probe.signature < 0:
                    raise
                sig = self.signatures[probe.signature]
                index = sig.spec.patterns.index(probe.detect)
                raise SignatureError(
                    f"signature {sig.name!r}: field 'patterns.{index}' {probe.detect!r}: "
                    f"not supported by Hyperscan: {exc}"
                ) from None
        raise RuntimeError("hyperscan rejected the combined database but accepted every pattern alone")

    @classmethod
    def load(cls, user_entries: object = None, source: str = "run spec", **kwargs: Any) -> Catalogue:
        """The built-in catalogue merged with a run spec's `signatures:` value."""
        return cls(load_specs(user_entries, source), **kwargs)

    def spec(self, name: str) -> SignatureSpec | None:
        sig = self._by_name.get(name)
        return sig.spec if sig is not None else None

    def patterns(self) -> list[tuple[str, bool]]:
        """Every detection pattern with its caseless flag (signatures, then milestones), for cross-checks."""
        return [(p.detect, p.caseless) for p in self._probes]

    def scan(self, data: bytes, first_line: int) -> list[LogMatch]:
        return list(self.scan_chunk(data, first_line).matches)

    def scan_chunk(self, data: bytes, first_line: int) -> ScanResult:
        """Scan `data` (complete lines; `first_line` is the 1-based number of its first line)."""
        hits = self._engine.candidates(data, stop_at_escape=True) if data else []
        if hits is None:
            # Escape sequences never contain \r or \n, so line numbers survive the strip.
            data = _ANSI_RE.sub(b"", data)
            hits = self._engine.candidates(data) or []
        matches, milestones = self._confirm(data, first_line, hits)
        return ScanResult(
            matches=tuple(matches),
            milestones=tuple(milestones),
            progress=_last_progress(data),
            metrics=_last_metrics(data),
        )

    def _confirm(
        self, data: bytes, first_line: int, hits: list[tuple[int, int]]
    ) -> tuple[list[LogMatch], list[Milestone]]:
        matches: list[tuple[int, int, LogMatch]] = []
        milestones: list[Milestone] = []
        seen: set[tuple[int, object]] = set()
        per_signature: dict[int, int] = {}
        line_no = first_line
        counted_to = 0
        for pos, probe_id in sorted(hits):
            probe = self._probes[probe_id]
            if per_signature.get(probe.signature, 0) >= self.max_per_signature:
                continue
            start = _line_start(data, pos)
            key: object = probe.signature if probe.signature >= 0 else _MILESTONES[-1 - probe.signature][0]
            if (start, key) in seen:
                continue
            end = _line_end(data, pos)
            line = data[start:end].decode("utf-8", errors="replace")
            found = probe.confirm.search(line)
            if found is None:
                continue
            seen.add((start, key))
            per_signature[probe.signature] = per_signature.get(probe.signature, 0) + 1
            line_no += _count_breaks(data, counted_to, start)
            counted_to = start
            if probe.signature < 0:
                kind = _MILESTONES[-1 - probe.signature][0]
                path = found.groupdict().get("path")
                if kind is MilestoneKind.TRAINING_COMPLETED and path and len(path) > 1:
                    path = path.removesuffix(".")  # axolotl ends the sentence with a full stop
                milestones.append(Milestone(kind, line_no, _display_text(line, found), path))
                continue
            sig = self.signatures[probe.signature]
            node = found.groupdict().get("node") or None
            matches.append(
                (
                    line_no,
                    probe.signature,
                    LogMatch(
                        signature=sig.name,
                        action=sig.action,
                        line=line_no,
                        text=_display_text(line, found),
                        node=node,
                        context=_context(data, start, end),
                        role=role_of(sig.spec),
                    ),
                )
            )
        matches.sort(key=lambda item: (item[0], item[1]))
        return [m for _, _, m in matches], milestones

    def verdict(self, matches: Sequence[LogMatch]) -> LogMatch | None:
        """The root cause among ``matches`` (see :mod:`supervisor.domain.verdict`), or None."""
        return self._original(matches, verdict.read(self.with_roles(matches)).verdict)

    def hang_cause(self, matches: Sequence[LogMatch], last_line: int, within_lines: int = 10) -> LogMatch | None:
        return self._original(matches, verdict.hang_cause(self.with_roles(matches), last_line, within_lines))

    @staticmethod
    def _original(matches: Sequence[LogMatch], found: LogMatch | None) -> LogMatch | None:
        """The caller's own match object for ``found`` (a copy of it with its role filled in)."""
        if found is None:
            return None
        return next(m for m in matches if (m.signature, m.line, m.text) == (found.signature, found.line, found.text))

    def with_roles(self, matches: Sequence[LogMatch]) -> list[LogMatch]:
        """``matches`` with the role this catalogue gives their signature (for matches made elsewhere)."""
        out = []
        for m in matches:
            spec = self.spec(m.signature)
            out.append(dataclasses.replace(m, role=role_of(spec)) if spec is not None else m)
        return out


def role_of(spec: SignatureSpec) -> MatchRole:
    if spec.hang_hint:
        return MatchRole.HANG_HINT
    if spec.wrapper:
        return MatchRole.WRAPPER
    return MatchRole.CAUSE


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


def _line_start(data: bytes, pos: int) -> int:
    return max(data.rfind(b"\n", 0, pos), data.rfind(b"\r", 0, pos)) + 1


def _line_end(data: bytes, pos: int) -> int:
    ends = [e for e in (data.find(b"\n", pos), data.find(b"\r", pos)) if e != -1]
    return min(ends) if ends else len(data)


def _count_breaks(data: bytes, start: int, end: int) -> int:
    return data.count(b"\n", start, end) + data.count(b"\r", start, end)


def _is_noise(line: str) -> bool:
    stripped = line.strip()
    return not stripped or _TQDM_BAR_RE.fullmatch(stripped) is not None


def _context(data: bytes, start: int, end: int) -> tuple[str, ...]:
    """Up to CONTEXT_BEFORE non-blank, non-tqdm lines before the match and CONTEXT_AFTER after it, in
    log order, within the chunk. The matching line itself is not repeated."""
    before: list[str] = []
    cursor = start
    for _ in range(4 * CONTEXT_BEFORE):
        if cursor <= 0 or len(before) >= CONTEXT_BEFORE:
            break
        prev_start = _line_start(data, cursor - 1)
        line = _decode_capped(data, prev_start, cursor - 1)
        if not _is_noise(line):
            before.append(line)
        cursor = prev_start
    after: list[str] = []
    cursor = end + 1
    for _ in range(4 * CONTEXT_AFTER):
        if cursor >= len(data) or len(after) >= CONTEXT_AFTER:
            break
        next_end = _line_end(data, cursor)
        line = _decode_capped(data, cursor, next_end)
        if not _is_noise(line):
            after.append(line)
        cursor = next_end + 1
    return (*reversed(before), *after)


def _decode_capped(data: bytes, start: int, end: int) -> str:
    return data[start : min(end, start + 4 * MAX_TEXT)].decode("utf-8", errors="replace")[:MAX_TEXT]


def _display_text(line: str, found: RegexMatch) -> str:
    """The line without a tqdm fragment glued in front of the message, capped around the match."""
    head = 0
    for bar in _TQDM_BAR_RE.finditer(line, 0, found.start()):
        head = bar.end()
    if head:
        line = line[head:]
        begin, finish = found.start() - head, found.end() - head
    else:
        begin, finish = found.start(), found.end()
    line = line.strip()
    if len(line) <= MAX_TEXT:
        return line
    left = max(0, min(begin - MAX_TEXT // 4, finish - MAX_TEXT))
    return line[left : left + MAX_TEXT]


def _last_progress(data: bytes) -> Progress | None:
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
            start = _line_start(data, pos)
            segment = data[start : min(pos + 5, start + 4 * MAX_TEXT)].decode("utf-8", errors="replace")
            found = _parse_bar(segment)
            if found is not None:
                return found
            limit = start
        # Overlap by a needle's length so a needle straddling the window edge is still seen.
        hi = min(lo + 4, limit) if lo > 0 else 0
    return None


def _parse_bar(segment: str) -> Progress | None:
    bar = _TQDM_BAR_RE.search(segment)
    if bar is not None:
        if segment[: bar.start()].strip() or bar.group("total") == "?":
            return None  # a described bar (dataset map, tokenising) or one without a total
        return Progress(step=int(bar.group("n")), total=int(bar.group("total")))
    plain = _TQDM_NOTOTAL_RE.search(segment)
    if plain is not None and not segment[: plain.start()].strip():
        return Progress(step=int(plain.group("n")))
    return None


def _last_metrics(data: bytes) -> dict[str, float] | None:
    limit = len(data)
    for _ in range(_BACKWARD_PROBES):
        pos = data.rfind(b"{'", 0, limit)
        if pos == -1:
            return None
        close = data.find(b"}", pos, _line_end(data, pos))
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


@dataclass
class ScanAccumulator:
    """Folds successive chunk results of one log: every match, the latest progress and metrics."""

    matches: list[LogMatch] = field(default_factory=list)
    milestones: list[Milestone] = field(default_factory=list)
    progress: Progress | None = None
    metrics: Mapping[str, float] | None = None

    def add(self, result: ScanResult) -> None:
        self.matches.extend(result.matches)
        self.milestones.extend(result.milestones)
        if result.progress is not None:
            self.progress = result.progress
        if result.metrics is not None:
            self.metrics = result.metrics
