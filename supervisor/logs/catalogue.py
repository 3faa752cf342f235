"""The failure-signature catalogue: load the built-in YAML, validate, merge a run spec's entries, compile.

Patterns are confirmed (and their named groups read) with RE2, whose matching time is linear in the length
of the line whatever the pattern: a user signature such as ``(a+)+b`` takes Python's backtracking ``re``
exponential time on a line of ``a``s, and one such line would stall every run the daemon watches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, cast

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from supervisor.domain.errors import SignatureError
from supervisor.domain.types import SignatureAction

BUILTIN_RESOURCE = "signatures.yaml"
ALLOWED_GROUPS = frozenset({"node"})

_NAME_RE = r"^[a-z][a-z0-9_]*$"


class SignatureSpec(BaseModel):
    """One catalogue entry as written in YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_RE)
    patterns: tuple[str, ...] = Field(min_length=1)
    action: SignatureAction
    description: str = ""
    caseless: bool = False
    wrapper: bool = False
    hang_hint: bool = False
    max_resubmits: int | None = Field(default=None, ge=0)
    # Provenance, so a pattern can be checked against the text it is meant to recognise: where the
    # message is printed ("owner/repo path" or "owner/repo issue #N") and real lines that carry it.
    # tests/test_catalogue_examples.py replays every example; loading never does (it would cost each load).
    source: str = ""
    examples: tuple[str, ...] = ()

    @field_validator("patterns")
    @classmethod
    def _check_patterns(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for i, pattern in enumerate(patterns):
            problem = pattern_problem(pattern)
            if problem is not None:
                raise ValueError(f"patterns[{i}] {pattern!r}: {problem}")
        return patterns


class RegexMatch(Protocol):
    """What the scanner reads from a match (RE2's match objects have the same methods as ``re``'s)."""

    def start(self) -> int: ...

    def end(self) -> int: ...

    def groupdict(self) -> dict[str, str | None]: ...


class LinearRegex(Protocol):
    def search(self, text: str) -> RegexMatch | None: ...


class LinearBytesRegex(Protocol):
    def search(self, data: bytes, pos: int = 0) -> RegexMatch | None: ...


def _re2_options(caseless: bool, *, latin1: bool = False) -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own copy of every parse error on stderr
    options.case_sensitive = not caseless
    if latin1:
        # Byte-wise, like `re` on bytes: a log is not always valid UTF-8.
        options.encoding = re2.Options.Encoding.LATIN1
    return options


def compile_linear(pattern: str, caseless: bool) -> LinearRegex:
    """``pattern`` compiled by RE2 (raises ``re2.error``). \\w, \\d, \\b are ASCII, as with ``re.ASCII``."""
    return cast(LinearRegex, re2.compile(pattern, _re2_options(caseless)))


def compile_linear_bytes(pattern: bytes, caseless: bool) -> LinearBytesRegex:
    return cast(LinearBytesRegex, re2.compile(pattern, _re2_options(caseless, latin1=True)))


def _re2_message(exc: Exception) -> str:
    detail = exc.args[0] if exc.args else exc
    return detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)


@dataclass(frozen=True)
class CompiledSignature:
    spec: SignatureSpec
    regexes: tuple[LinearRegex, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def action(self) -> SignatureAction:
        return self.spec.action


def python_flags(caseless: bool) -> int:
    # re.ASCII keeps \w, \s and \b identical to Hyperscan's (and grep's C-locale) meaning.
    return re.ASCII | (re.IGNORECASE if caseless else 0)


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` is outside the subset every scanning engine agrees on, or None when it is fine."""
    if not pattern:
        return "empty pattern"
    try:
        compiled = re.compile(pattern, python_flags(False))
    except re.error as exc:
        return f"bad regex: {exc}"
    unknown = set(compiled.groupindex) - ALLOWED_GROUPS
    if unknown:
        return f"named group(s) {sorted(unknown)} not allowed; only (?P<node>...) is used"
    if compiled.search("") is not None:
        return "matches the empty string"
    if "(?P=" in pattern:
        return "back-references are not supported by Hyperscan"
    tokens = regex_tokens(pattern)
    for prev, tok, nxt in zip(["", *tokens[:-1]], tokens, [*tokens[1:], ""], strict=True):
        if tok in ("^", "$"):
            return "^/$ anchors are not supported (lines arrive glued to tqdm fragments)"
        if re.fullmatch(r"\\[1-9]", tok) or (prev == "(" and tok == "?" and nxt in ("=", "!", "<")):
            return "back-references and lookarounds are not supported by Hyperscan"
        if tok == "?" and prev in ("*", "+", "?", "}"):
            return "lazy quantifiers are not supported by Hyperscan"
    try:
        compile_linear(pattern, caseless=False)
    except re2.error as exc:
        return f"not supported by RE2, the linear-time engine lines are checked with: {_re2_message(exc)}"
    return None


def regex_tokens(pattern: str) -> list[str]:
    """Split a regex into tokens, keeping escapes and bracket expressions whole, so syntax can be told
    apart from a literal `^` inside a class or an escaped `$`."""
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            tokens.append(pattern[i : i + 2])
            i += 2
        elif ch == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "^":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            tokens.append(pattern[i : j + 1])
            i = j + 1
        else:
            tokens.append(ch)
            i += 1
    return tokens


def hyperscan_expression(pattern: str) -> str:
    """The pattern as handed to Hyperscan: named groups become plain groups."""
    return re.sub(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>", "(", pattern)


def _format_validation_error(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "entry"
        parts.append(f"{where}: field '{loc}': {err['msg']}")
    return "; ".join(parts)


def parse_signatures(raw: object, source: str) -> list[SignatureSpec]:
    """Validate a list of entries (the `signatures:` value of the YAML or of a run spec)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SignatureError(f"{source}: 'signatures' must be a list of entries, got {type(raw).__name__}")
    specs: list[SignatureSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        where = f"{source}: signatures[{i}]" + (f" (name={name!r})" if name is not None else "")
        if not isinstance(entry, Mapping):
            raise SignatureError(f"{where}: must be a mapping, got {type(entry).__name__}")
        try:
            spec = SignatureSpec.model_validate(dict(entry))
        except ValidationError as exc:
            raise SignatureError(_format_validation_error(exc, where)) from None
        if spec.name in seen:
            raise SignatureError(f"{where}: duplicate name {spec.name!r} in the same list")
        seen.add(spec.name)
        specs.append(spec)
    return specs


def load_builtin() -> list[SignatureSpec]:
    text = resources.files("supervisor.logs").joinpath(BUILTIN_RESOURCE).read_text(encoding="utf-8")
    data: Any = yaml.safe_load(text)
    source = f"supervisor/{BUILTIN_RESOURCE}"
    if not isinstance(data, Mapping) or "signatures" not in data:
        raise SignatureError(f"{source}: top level must be a mapping with a 'signatures' list")
    return parse_signatures(data["signatures"], source)


def merge(builtin: Sequence[SignatureSpec], user: Iterable[SignatureSpec]) -> list[SignatureSpec]:
    """User entries replace built-ins of the same name in place; new names are appended in order."""
    merged = {spec.name: spec for spec in builtin}
    for spec in user:
        merged[spec.name] = spec
    return list(merged.values())


def compile_signature(spec: SignatureSpec) -> CompiledSignature:
    return CompiledSignature(spec=spec, regexes=tuple(compile_linear(p, spec.caseless) for p in spec.patterns))


def load_specs(user_entries: object = None, source: str = "run spec") -> list[SignatureSpec]:
    """The built-in catalogue merged with a run spec's `signatures:` value (a list of mappings or None)."""
    return merge(load_builtin(), parse_signatures(user_entries, source))
