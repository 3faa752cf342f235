"""Running the tick: forever under APScheduler (``supervisor daemon``) or once (``supervisor tick``).

One instance per state directory, enforced with an OS file lock. Signal handlers only set a flag.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from supervisor.app.diskfull import disk_full_at
from supervisor.app.service import Supervisor
from supervisor.domain.errors import AlreadyRunning
from supervisor.domain.policy import Backoff
from supervisor.logs.tailer import keep_chunk_memory
from supervisor.store.db import journal_mode_for
from supervisor.store.filesystem import filesystem_of
from supervisor.store.statedir import (
    LOCK_NAME,
    blocks,
    heartbeat,
    make_private_dir,
    pid_alive,
    read_holder_fd,
    this_host,
    write_record,
)

log = structlog.get_logger("supervisor.daemon")
TICK_JOB = "tick"
WAKE_JOB = "wake"
OUTBOX_JOB = "outbox"
LOG_JOB = "logs"
# On Lustre, GPFS and NFS a job's writes on a compute node raise no inotify event here: the logs are
# stat'ed this often instead (`--log-poll`), and a pass reads only when one grew. squeue stays at --poll.
LOG_POLL_S = 2.0
# A log that is written continuously must not turn into back-to-back passes: at most this often.
MIN_WAKE_INTERVAL = 0.2
OUTBOX_INTERVAL = 5.0
# `--exit-when-idle` delivers what the outbox still holds before exiting, waiting at most this long.
DRAIN_LIMIT_S = 120.0
# A tick that fails as a whole (database unreadable, disk full) is retried after a pause that doubles.
TICK_FAILURE_BACKOFF = Backoff(base=5.0, cap=300.0)


@contextmanager
def instance_lock(home: Path) -> Iterator[None]:
    """Hold the state directory's lock for the duration; raises AlreadyRunning when somebody has it.

    Besides the flock, the file records ``"<pid> <host>"`` and stays touched while held: on a network
    filesystem whose flock does not reach other hosts, a daemon there is still seen (supervisor.store.statedir).
    """
    make_private_dir(home)
    path = home / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os_locked = True
        except BlockingIOError:
            holder = read_holder_fd(fd)
            raise AlreadyRunning(path, holder.describe() if holder else "") from None
        except OSError as exc:
            # Lustre without `flock`, NFS without a lock daemon: the record below is all there is.
            log.warning("instance_lock_unsupported", path=str(path), error=exc.strerror)
            os_locked = False
        holder = read_holder_fd(fd)
        if holder is not None and blocks(holder, me=this_host(), os_locked=os_locked, now=time.time(),
                                         alive=pid_alive(holder.pid)):
            raise AlreadyRunning(path, holder.describe())
        mount = filesystem_of(home)
        if mount is not None and mount.network:
            log.info("network_filesystem", home=str(home), fstype=mount.fstype, host=this_host(),
                     journal_mode=journal_mode_for(home))
        write_record(fd)
        with heartbeat(fd):
            yield
        # A clean exit leaves no record: another host need not wait for it to go stale.
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the flock


class Daemon:
    """Ticks every ``poll`` seconds, and reads the logs at once when a watched log changes: on an inotify
    event, or when the ``log_poll`` cadence finds a live log grown (0: inotify only)."""

    def __init__(
        self, supervisor: Supervisor, poll: float, *, log_poll: float = LOG_POLL_S, exit_when_idle: bool = False,
    ) -> None:
        self.supervisor = supervisor
        self.poll = poll
        self.log_poll = log_poll
        self.exit_when_idle = exit_when_idle
        self.stop_requested = threading.Event()
        self.scheduler = BackgroundScheduler(timezone=UTC)
        # The interval pass and the log wake-ups never overlap: both change the same rows.
        self._tick_lock = threading.Lock()
        self._last_wake = 0.0
        # Set by every wake-up, cleared when a pass starts reading: a change seen during a pass is not lost.
        self._woken = threading.Event()
        self._idle = False
        self._failures = 0
        self._failing_until = 0.0
        self._last_error = ""

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requested.set()

    def wake(self) -> None:
        """A watched log changed: read the logs soon, without asking the cluster (no squeue storms)."""
        if self.stop_requested.is_set() or not self.scheduler.running:
            return
        self._woken.set()
        now = time.monotonic()
        if self._last_wake > now:
            return  # a pass is already due and reads this change too; rescheduling would postpone it
        at = max(now, self._last_wake + MIN_WAKE_INTERVAL)
        self._last_wake = at
        run_date = datetime.now(UTC) + timedelta(seconds=at - time.monotonic())
        # Two instances: a wake-up due while a pass runs waits for the lock instead of being skipped.
        self.scheduler.add_job(self._tick, "date", run_date=run_date, kwargs={"poll": False}, id=WAKE_JOB,
                               replace_existing=True, misfire_grace_time=None, max_instances=2)

    def check_logs(self) -> None:
        """The log cadence: a log-only pass when a live log grew, and nothing at all (no read, no write)
        when none did. The next wake-up pass peeks at every live log, not only those inotify named."""
        self.supervisor.logs.peek_all_next()
        if self._tick_lock.locked() or self._last_wake > time.monotonic():
            return  # a pass is running or due: it reads whatever grew
        try:
            grew = self.supervisor.logs_grew()
        except Exception as exc:
            # The database or a filesystem is away: the interval pass reports it and backs off.
            log.warning("log_check_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if grew:
            self.wake()

    def _tick(self, poll: bool = True) -> None:
        if time.monotonic() < self._failing_until:
            return
        with self._tick_lock:
            self._woken.clear()
            try:
                report = self.supervisor.tick(poll=poll)
            except Exception as exc:
                self._tick_failed(exc)
                return
            finally:
                if self._woken.is_set():
                    self.wake()  # a log changed after this pass had read it (its wake-up may have been skipped)
        if self._failures:
            log.info("tick_recovered", after_failures=self._failures)
            self._failures, self._last_error = 0, ""
        if not poll:
            return
        self.supervisor.logs.watch(self.supervisor.live_log_dirs())
        if self.exit_when_idle and report.runs == 0:
            log.info("idle", message="no active runs left")
            self._idle = True
            self.stop_requested.set()
        if report.actions:
            log.debug("tick", runs=report.runs, actions=report.actions)

    def _tick_failed(self, exc: Exception) -> None:
        """A bug or a broken disk must not kill the babysitter silently, nor make it spin on one traceback:
        the traceback is logged once, the same error again only as a count, and the next pass waits."""
        self._failures += 1
        error = f"{type(exc).__name__}: {exc}"
        where = disk_full_at(exc, self.supervisor.home)
        if where is not None:
            # The line the CLI prints too: which filesystem to free, not SQLite's words for it.
            error = f"disk full at {where} ({error})"
        if error != self._last_error:
            log.exception("tick_failed", error=error)
            self._last_error = error
        else:
            log.warning("tick_failed_again", error=error, failures=self._failures)
        self._failing_until = time.monotonic() + TICK_FAILURE_BACKOFF.delay(self._failures)

    def _drain_outbox(self) -> None:
        """Deliver what is still pending (waiting out retry delays), for at most DRAIN_LIMIT_S."""
        deadline = time.monotonic() + DRAIN_LIMIT_S
        while True:
            self.supervisor.flush_outbox()
            left = self.supervisor.pending_notifications()
            if left == 0:
                return
            if time.monotonic() >= deadline:
                log.warning("outbox_not_drained", pending=left, waited_s=DRAIN_LIMIT_S)
                return
            time.sleep(0.5)

    def run(self) -> None:
        keep_chunk_memory()
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        self.supervisor.logs.start(self.wake)
        self.scheduler.add_job(self._tick, "interval", seconds=self.poll, id=TICK_JOB, max_instances=1,
                               coalesce=True, next_run_time=datetime.now(UTC), misfire_grace_time=None)
        # Deliveries wait on the network (timeouts, outages): their own job, so they never delay a reaction.
        if self.log_poll > 0:
            self.scheduler.add_job(self.check_logs, "interval", seconds=self.log_poll, id=LOG_JOB, max_instances=1,
                                   coalesce=True, misfire_grace_time=None)
        # First pass at start: what a killed daemon left undelivered goes out now, not OUTBOX_INTERVAL later
        # (a daemon restarted every few seconds would otherwise never deliver).
        self.scheduler.add_job(self.supervisor.flush_outbox, "interval", seconds=OUTBOX_INTERVAL, id=OUTBOX_JOB,
                               max_instances=1, coalesce=True, misfire_grace_time=None, next_run_time=datetime.now(UTC))
        self.scheduler.start()
        log.info("daemon_started", home=str(self.supervisor.home), poll=self.poll, log_poll=self.log_poll,
                 pid=os.getpid())
        try:
            while not self.stop_requested.wait(1.0):
                pass
        finally:
            log.info("daemon_stopping")
            self.supervisor.logs.stop()
            self.scheduler.shutdown(wait=True)
            if self._idle:
                self._drain_outbox()
            else:
                self.supervisor.flush_outbox()
            log.info("daemon_stopped")
