"""The ``notify:`` list of a run spec, and turning it into live channels.

Secrets (Slack webhook URLs, Matrix access tokens, HMAC keys) are never part of the spec text: a spec
names an environment variable (``*_env``) or a file (``*_file``) and the value is read only when the
channels are built, so the spec stored in the database holds no secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from supervisor.domain.errors import NotifyConfigError
from supervisor.domain.ports import Channel
from supervisor.domain.types import EventKind

DEFAULT_ON: tuple[EventKind, ...] = (
    EventKind.CRASHED,
    EventKind.RESUBMITTED,
    EventKind.STALLED,
    EventKind.STAGE_SUCCEEDED,
    EventKind.SUCCEEDED,
    EventKind.FAILED,
    EventKind.PAUSED_BY_OPERATOR,
    EventKind.RETRIES_EXHAUSTED,
    EventKind.NEEDS_ATTENTION,
    EventKind.BUDGET_EXCEEDED,
)

ChannelKind = Literal["slack", "matrix", "webhook"]
_KIND_NAMES: tuple[ChannelKind, ...] = ("slack", "matrix", "webhook")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    # Input values are left out of error texts: a secret pasted into the wrong field must not be echoed.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def _one_source(name: str, env: str | None, file: Path | None, *, required: bool = True) -> None:
    if env is not None and file is not None:
        raise ValueError(f"give either {name}_env or {name}_file, not both")
    if required and env is None and file is None:
        raise ValueError(f"{name}_env (an environment variable name) or {name}_file (a path) is required")


def _check_env_name(value: str | None) -> str | None:
    if value is not None and not _ENV_NAME.match(value):
        # Catches the common mistake of pasting the secret itself where its variable name belongs;
        # the value is deliberately not echoed back.
        raise ValueError("must be the NAME of an environment variable (letters, digits, _), not its value")
    return value


class SlackConfig(_Strict):
    webhook_url_env: str | None = None
    webhook_url_file: Path | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=120)

    @field_validator("webhook_url_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return _check_env_name(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> SlackConfig:
        _one_source("webhook_url", self.webhook_url_env, self.webhook_url_file)
        return self


class MatrixConfig(_Strict):
    homeserver: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    room_id: str = Field(pattern=r"^!\S+$")  # room v12 ids have no ":server" part
    access_token_env: str | None = None
    access_token_file: Path | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    # One Matrix thread per run keeps a busy room readable; off = every message at top level.
    threads: bool = True

    @field_validator("access_token_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return _check_env_name(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> MatrixConfig:
        _one_source("access_token", self.access_token_env, self.access_token_file)
        return self


class WebhookConfig(_Strict):
    # The URL may be written in the spec (it is not a credential by itself) or, when it embeds a
    # token, kept out of the spec like any other secret.
    url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    url_env: str | None = None
    url_file: Path | None = None
    secret_env: str | None = None
    secret_file: Path | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=120)

    @field_validator("url_env", "secret_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return _check_env_name(value)

    @model_validator(mode="after")
    def _sources(self) -> WebhookConfig:
        if sum(x is not None for x in (self.url, self.url_env, self.url_file)) != 1:
            raise ValueError("give exactly one of url, url_env, url_file")
        _one_source("secret", self.secret_env, self.secret_file, required=False)
        return self


class NotifyChannelSpec(_Strict):
    """One entry of the run spec's ``notify:`` list: exactly one channel key plus ``on:``."""

    slack: SlackConfig | None = None
    matrix: MatrixConfig | None = None
    webhook: WebhookConfig | None = None
    on: tuple[str, ...] = DEFAULT_ON

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean True.
        if isinstance(data, Mapping) and True in data:
            data = dict(data)
            if "on" in data:
                raise ValueError("`on` given twice")
            data["on"] = data.pop(True)
        return data

    @field_validator("on", mode="before")
    @classmethod
    def _on_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,)
        return value

    @field_validator("on")
    @classmethod
    def _on_kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("`on` must name at least one event kind (leave it out for the default list)")
        known = {k.value for k in EventKind}
        bad = [k for k in value if k not in known]
        if bad:
            raise ValueError(f"not an event kind: {', '.join(map(repr, bad))} (known: {', '.join(sorted(known))})")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _exactly_one_channel(self) -> NotifyChannelSpec:
        given = [k for k in _KIND_NAMES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "each notify entry needs exactly one of slack, matrix, webhook"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def kind(self) -> ChannelKind:
        for k in _KIND_NAMES:
            if getattr(self, k) is not None:
                return k
        raise AssertionError("validated spec without a channel")

    def wants(self, event_kind: str) -> bool:
        return event_kind in self.on


NotifySpecs = TypeAdapter(list[NotifyChannelSpec])


def parse_specs(specs: Sequence[NotifyChannelSpec | Mapping[str, Any]]) -> list[NotifyChannelSpec]:
    """Accept validated models or their JSON form (as stored in ``runs.spec``)."""
    return [s if isinstance(s, NotifyChannelSpec) else NotifyChannelSpec.model_validate(s) for s in specs]


def secret_env_names(specs: Sequence[NotifyChannelSpec | Mapping[str, Any]]) -> tuple[str, ...]:
    """The environment variables the ``notify:`` entries read secrets (or secret URLs) from, in order.

    A job never needs them, so the backends remove them from its environment (``SubmitRequest.unset_env``).
    """
    names: list[str] = []
    for spec in parse_specs(specs):
        channel = getattr(spec, spec.kind)
        # Every `*_env` field names a variable holding a secret: a channel added later is covered too.
        for field in type(channel).model_fields:
            value = getattr(channel, field)
            if field.endswith("_env") and isinstance(value, str):
                names.append(value)
    return tuple(dict.fromkeys(names))


def channel_key(index: int, spec: NotifyChannelSpec) -> str:
    return f"{index}:{spec.kind}"


def resolve_secret(
    name: str, env_var: str | None, file: Path | None, env: Mapping[str, str], *, where: str
) -> str | None:
    """Read a secret from the named variable or file. Errors name the variable/file, never a value."""
    if env_var is not None:
        value = env.get(env_var)
        if value is None or not value.strip():
            raise NotifyConfigError(f"{where}: environment variable {env_var} ({name}) is not set or empty")
        return value.strip()
    if file is not None:
        path = file.expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            # strerror only: the OSError text is safe, but keep the message format uniform.
            raise NotifyConfigError(f"{where}: cannot read {name} file {path}: {exc.strerror}") from None
        if not text.strip():
            raise NotifyConfigError(f"{where}: {name} file {path} is empty")
        return text.strip()
    return None


def _required_secret(
    name: str, env_var: str | None, file: Path | None, env: Mapping[str, str], *, where: str
) -> str:
    value = resolve_secret(name, env_var, file, env, where=where)
    if value is None:
        # The spec model asks for one of the two; a channel must never be built around a missing secret.
        raise NotifyConfigError(f"{where}: {name} is not configured (set {name}_env or {name}_file)")
    return value


def build_channel(index: int, spec: NotifyChannelSpec, env: Mapping[str, str]) -> Channel:
    # Imported here so that parsing a spec does not pull in the HTTP stack.
    from supervisor.notify.matrix import MatrixChannel
    from supervisor.notify.slack import SlackChannel
    from supervisor.notify.webhook import WebhookChannel

    where = f"notify[{index}].{spec.kind}"
    if spec.slack is not None:
        c = spec.slack
        url = _required_secret("webhook_url", c.webhook_url_env, c.webhook_url_file, env, where=where)
        return SlackChannel(url, timeout_s=c.timeout_s, name=channel_key(index, spec))
    if spec.matrix is not None:
        m = spec.matrix
        token = _required_secret("access_token", m.access_token_env, m.access_token_file, env, where=where)
        return MatrixChannel(
            m.homeserver,
            m.room_id,
            token,
            timeout_s=m.timeout_s,
            threads=m.threads,
            name=channel_key(index, spec),
        )
    if spec.webhook is None:
        raise NotifyConfigError(f"{where}: none of slack, matrix or webhook is configured")
    w = spec.webhook
    url = w.url or _required_secret("url", w.url_env, w.url_file, env, where=where)
    secret = resolve_secret("secret", w.secret_env, w.secret_file, env, where=where)
    return WebhookChannel(
        url, secret=secret, timeout_s=w.timeout_s, name=channel_key(index, spec), url_is_secret=w.url is None
    )


def build_channels(
    specs: Sequence[NotifyChannelSpec | Mapping[str, Any]], env: Mapping[str, str] | None = None
) -> dict[str, Channel]:
    """Live channels keyed ``"<index>:<kind>"`` (the outbox's ``channel`` column).

    Raises NotifyConfigError naming the first variable or file that could not be read.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    return {channel_key(i, s): build_channel(i, s, environ) for i, s in enumerate(parse_specs(specs))}


__all__ = [
    "DEFAULT_ON",
    "MatrixConfig",
    "NotifyChannelSpec",
    "NotifyConfigError",
    "NotifySpecs",
    "SlackConfig",
    "WebhookConfig",
    "build_channel",
    "build_channels",
    "channel_key",
    "parse_specs",
    "resolve_secret",
    "secret_env_names",
]
