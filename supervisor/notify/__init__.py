"""Notifications: render an event, keep it in the outbox, deliver it to Slack, Matrix, webhooks."""

from __future__ import annotations

from supervisor.domain.errors import NotifyConfigError
from supervisor.notify.config import DEFAULT_ON, NotifyChannelSpec, build_channels
from supervisor.notify.outbox import DeliveryPolicy, DeliveryReport, RunChannels, deliver, send_test
from supervisor.notify.queue import enqueue, undelivered
from supervisor.notify.render import render

__all__ = [
    "DEFAULT_ON",
    "DeliveryPolicy",
    "DeliveryReport",
    "NotifyChannelSpec",
    "NotifyConfigError",
    "RunChannels",
    "build_channels",
    "deliver",
    "enqueue",
    "render",
    "send_test",
    "undelivered",
]
