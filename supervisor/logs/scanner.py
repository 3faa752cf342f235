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
from typing import Any

from supervisor.domain import verdict
from supervisor.domain.errors import SignatureError
from supervisor.domain.types import LogMatch, MatchRole, Progress
from supervisor.logs.catalogue import (
    CompiledSignature,
    RegexMatch,
    SignatureSpec,
    compile_linear,
    compile_signature,
    load_specs,
)
from supervisor.logs.engines import Engine, HyperscanEngine, Probe, RegexEngine, load_hyperscan
from supervisor.logs.progress import TQDM_BAR_RE, last_metrics, last_progress
from supervisor.logs.text import MAX_TEXT, line_end, line_start

CONTEXT_BEFORE = 3
CONTEXT_AFTER = 2
MAX_PER_SIGNATURE = 20  # per scan call: a warning repeated a million times must not flood the DB

_ANSI_RE = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b\r\n]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


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
        # Signatures with a line that names the node (srun's "Node failure on NODE"): a line of theirs that
        # names none may be followed by one that does.
        self.names_nodes = frozenset(sig.name for sig in self.signatures
                                     if any("(?P<node>" in pattern for pattern in sig.spec.patterns))
        self.max_per_signature = max_per_signature
        probes: list[Probe] = []
        for index, sig in enumerate(self.signatures):
            probes.extend(
                Probe(index, pattern, regex, sig.spec.caseless)
                for pattern, regex in zip(sig.spec.patterns, sig.regexes, strict=True)
            )
        for index, (_, detect, extract, caseless) in enumerate(_MILESTONES):
            probes.append(Probe(-1 - index, detect, compile_linear(extract, caseless), caseless))
        self._probes = tuple(probes)
        hyperscan = load_hyperscan() if engine in ("auto", "hyperscan") else None
        if engine == "hyperscan" and hyperscan is None:
            raise RuntimeError("hyperscan engine requested but the hyperscan module is not importable")
        if engine not in ("auto", "hyperscan", "regex"):
            raise ValueError(f"unknown engine {engine!r}")
        self._engine: Engine
        if hyperscan is not None:
            self._engine = self._compile_hyperscan(hyperscan)
            self.engine_name = "hyperscan"
        else:
            self._engine = RegexEngine(self._probes)
            self.engine_name = "regex"

    def _compile_hyperscan(self, hyperscan: Any) -> HyperscanEngine:
        try:
            return HyperscanEngine(hyperscan, self._probes)
        except hyperscan.error:
            pass
        # Compile one at a time only on failure, to name the entry and pattern in the error.
        for probe in self._probes:
            try:
                HyperscanEngine(hyperscan, [probe])
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
            progress=last_progress(data),
            metrics=last_metrics(data),
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
            start = line_start(data, pos)
            key: object = probe.signature if probe.signature >= 0 else _MILESTONES[-1 - probe.signature][0]
            if (start, key) in seen:
                continue
            end = line_end(data, pos)
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
        """The caller's own match object for ``found`` (a copy of it with its role filled in), with the node
        the verdict gave it when its own line names none."""
        if found is None:
            return None
        own = next(m for m in matches if (m.signature, m.line, m.text) == (found.signature, found.line, found.text))
        return own if own.node == found.node else dataclasses.replace(own, node=found.node)

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


def _count_breaks(data: bytes, start: int, end: int) -> int:
    return data.count(b"\n", start, end) + data.count(b"\r", start, end)


def _is_noise(line: str) -> bool:
    stripped = line.strip()
    return not stripped or TQDM_BAR_RE.fullmatch(stripped) is not None


def _context(data: bytes, start: int, end: int) -> tuple[str, ...]:
    """Up to CONTEXT_BEFORE non-blank, non-tqdm lines before the match and CONTEXT_AFTER after it, in
    log order, within the chunk. The matching line itself is not repeated."""
    before: list[str] = []
    cursor = start
    for _ in range(4 * CONTEXT_BEFORE):
        if cursor <= 0 or len(before) >= CONTEXT_BEFORE:
            break
        prev_start = line_start(data, cursor - 1)
        line = _decode_capped(data, prev_start, cursor - 1)
        if not _is_noise(line):
            before.append(line)
        cursor = prev_start
    after: list[str] = []
    cursor = end + 1
    for _ in range(4 * CONTEXT_AFTER):
        if cursor >= len(data) or len(after) >= CONTEXT_AFTER:
            break
        next_end = line_end(data, cursor)
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
    for bar in TQDM_BAR_RE.finditer(line, 0, found.start()):
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
