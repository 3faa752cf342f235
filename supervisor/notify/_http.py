"""What the three HTTP channels share: one request, errors classified and scrubbed of secrets."""

from __future__ import annotations

import email.utils
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import httpx

from supervisor.domain.errors import NotifyError

# Bodies of error answers are quoted in last_error to help the operator; keep them short.
_BODY_QUOTE = 200
_MAX_RETRY_AFTER_S = 24 * 3600.0


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret (raw and URL-encoded) in ``text`` with ``***``."""
    for secret in secrets:
        if len(secret) < 4:
            # A 1-3 character "secret" would blank out ordinary words; config validation already
            # refuses empty ones and such a short credential is not worth protecting this way.
            continue
        for form in {secret, quote(secret, safe=""), quote_plus(secret), quote(secret)}:
            text = text.replace(form, "***")
    return text


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None when absent or garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


class HttpSender:
    """A sync httpx client bound to one channel, whose errors never carry the channel's secrets."""

    def __init__(self, kind: str, secrets: Iterable[str], timeout_s: float) -> None:
        self.kind = kind
        self._secrets = tuple(s for s in secrets if s)
        # Redirects stay off: following one could carry an Authorization header to another host.
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False)

    def scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        retry_after_from_body: bool = False,
    ) -> httpx.Response:
        """Send and return a 2xx response; anything else becomes a NotifyError.

        The NotifyError is raised outside the ``except`` block on purpose: raising inside it would
        chain the httpx exception as ``__context__``, and httpx messages contain the request URL
        (for Slack the URL *is* the secret), which a traceback would print.
        """
        error: NotifyError | None = None
        try:
            response = self._client.request(method, url, content=content, headers=dict(headers))
        except httpx.TimeoutException as exc:
            error = NotifyError(f"{self.kind}: timed out ({type(exc).__name__})", permanent=False)
        except httpx.TransportError as exc:
            # Connection refused/reset, DNS, protocol errors: the far end may come back.
            error = NotifyError(f"{self.kind}: {type(exc).__name__}: {self.scrub(_short(str(exc)))}", permanent=False)
        except httpx.HTTPError as exc:
            # e.g. InvalidURL: a configuration problem, retrying cannot help.
            error = NotifyError(f"{self.kind}: {type(exc).__name__}", permanent=True)
        if error is not None:
            raise error
        return self._check(response, retry_after_from_body)

    def _check(self, response: httpx.Response, retry_after_from_body: bool) -> httpx.Response:
        status = response.status_code
        if 200 <= status < 300:
            return response
        detail = self.scrub(_short(response.text))
        message = f"{self.kind}: HTTP {status}" + (f": {detail}" if detail else "")
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is None and retry_after_from_body:
                retry_after = _retry_after_ms(response)
            raise NotifyError(message, permanent=False, retry_after=retry_after)
        if status >= 500 or status in (408, 425):
            raise NotifyError(message, permanent=False, retry_after=None)
        raise NotifyError(message, permanent=True)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _BODY_QUOTE else text[: _BODY_QUOTE - 1] + "…"


def _retry_after_ms(response: httpx.Response) -> float | None:
    """Matrix puts the wait in the JSON body (``retry_after_ms``) rather than the header."""
    try:
        body: Any = response.json()
    except ValueError:
        return None
    ms = body.get("retry_after_ms") if isinstance(body, dict) else None
    if isinstance(ms, int | float) and ms >= 0:
        return min(float(ms) / 1000.0, _MAX_RETRY_AFTER_S)
    return None


def url_secrets(url: str) -> list[str]:
    """The parts of a credential-bearing URL that must not leak: all of it, and its path + query.

    The path alone matters because some error texts quote only the request target.
    """
    parts = urlsplit(url)
    out = [url]
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if len(parts.path.strip("/")) >= 8:
        out.append(target)
        out.append(parts.path)
    if parts.query:
        out.append(parts.query)
    if parts.password:
        out.append(parts.password)
    return out
