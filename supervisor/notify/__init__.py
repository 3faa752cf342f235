"""Notifications: render an event, keep it in the outbox, deliver it to Slack, Matrix, webhooks.

The package itself imports only what a run spec needs (the channel specs): the outbox (``notify.outbox``,
``notify.queue``) needs SQLAlchemy, which `submit` and the read-only commands do without.
"""

from __future__ import annotations

from supervisor.domain.errors import NotifyConfigError
from supervisor.notify.config import DEFAULT_ON, NotifyChannelSpec, build_channels
from supervisor.notify.render import render

__all__ = ["DEFAULT_ON", "NotifyChannelSpec", "NotifyConfigError", "build_channels", "render"]
