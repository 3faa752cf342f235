"""structlog, configured once at start-up: JSON lines when not on a TTY (tmux logs, scrontab), console on a TTY.

structlog is imported by :func:`configure_logging`, not by this module: the CLI checks ``--log-level``
against LEVELS for every command, and `status` never logs (structlog and what it pulls in, rich.traceback
and asyncio, cost it 0.07 s).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import structlog.typing

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """``level`` is one of LEVELS (ValueError otherwise: structlog would fail later with a KeyError)."""
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(LEVELS)}")
    import structlog

    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level.lower()]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the stdlib (APScheduler, alembic) go to the same stream, quieter.
    logging.basicConfig(stream=stream, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # "skipped: maximum number of running instances reached" every interval while a pass waits on a slow
    # slurmctld says nothing the supervisor's own poll_failed lines do not; keep its real errors.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
