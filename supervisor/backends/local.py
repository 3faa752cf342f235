"""Jobs as local processes: the embedded backend for a machine without SLURM.

Each job runs under a small detached wrapper process (its own session) that starts the job in a
process group of its own, waits for it and records how it ended in
``<state_dir>/local-jobs/<id>.json``. The wrapper, not the supervisor, is the job's parent, so a
supervisor that is killed and restarted still learns the exit code of a job that ended meanwhile.

The record is written only by the wrapper (once when the job started, once when it ended), always by
atomic rename; a cancel request is a separate ``<id>.cancel`` file, so no two processes ever write the
same file. ``local-jobs/`` and everything in it is private to the user (0700, 0600): records hold the
job's command line.

A job that ends while the disk is full must not read as lost (and be run again): when the job starts, the
wrapper also writes ``.<id>.json.end``, padded to hold the end record, and the end record overwrites those
bytes in place before the rename, which needs no free space. Should even that fail, the wrapper exits with
the job's own exit status, which the supervisor that started it reads instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from supervisor.backends import job_environment
from supervisor.backends.local_records import (
    PRIVATE_DIR,
    PRIVATE_FILE,
    boot_id,
    job_info_from_record,
    now_iso,
    open_private,
    proc_start_ticks,
    process_matches,
    read_json,
    reserve_end,
    write_end,
    write_json,
)
from supervisor.domain.errors import ClusterError
from supervisor.domain.types import JobInfo, SubmitRequest

DEFAULT_KILL_GRACE_S = 10.0  # SIGTERM -> SIGKILL, as SLURM's KillWait
_WRAPPER_POLL_S = 0.2
_RECORD_DIR = "local-jobs"
_ID_RE = re.compile(r"L(\d+)")

# -I: the job's PYTHONPATH/PYTHONHOME are meant for the job, not for the wrapper's interpreter.
_WRAPPER_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from supervisor.backends.local import wrapper_main; raise SystemExit(wrapper_main(sys.argv[2]))"
)


# --- pure helpers ------------------------------------------------------------------------------


def expand_log_pattern(pattern: str, job_id: str, tag: str) -> str:
    """The subset of sbatch's filename patterns a log path uses: %j (id), %x (job name), %%."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        nxt = pattern[i + 1] if i + 1 < len(pattern) else ""
        if char == "%" and nxt in ("j", "x", "%"):
            out.append({"j": job_id, "x": tag, "%": "%"}[nxt])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def job_argv(request: SubmitRequest) -> list[str]:
    if request.command is not None:
        if not request.command:
            raise ClusterError(f"job {request.tag}: empty command", permanent=True)
        return list(request.command)
    if request.script is not None:
        # #SBATCH lines are comments to bash, so the same script runs here unchanged.
        return ["bash", str(request.script)]
    raise ClusterError(f"job {request.tag}: neither a script nor a command", permanent=True)


def _id_number(job_id: str) -> int:
    match = _ID_RE.fullmatch(job_id)
    return int(match.group(1)) if match else -1


# --- process identity (pids get reused; a record must not mistake a stranger for its wrapper) ----


# --- record files ------------------------------------------------------------------------------


# --- the wrapper (runs detached, outlives the supervisor) --------------------------------------


def wrapper_main(spec_json: str) -> int:
    """Run one job to its end and record it. Entry point of the detached wrapper process."""
    spec: dict[str, Any] = json.loads(spec_json)
    record_path = Path(spec["record"])
    cancel_path = Path(spec["cancel"])
    grace = float(spec["kill_grace"])
    record: dict[str, Any] = {
        key: spec[key] for key in ("id", "tag", "log", "workdir", "excluded", "submit_time", "argv")
    }
    record.update(
        host=socket.gethostname().split(".")[0],
        wrapper_pid=os.getpid(),
        wrapper_start_ticks=proc_start_ticks(os.getpid()),
        boot_id=boot_id(),
    )
    cancel_signalled = False

    def on_term(signum: int, frame: object) -> None:
        # Somebody killed the wrapper rather than cancelling: treat it as a cancel, so the job does
        # not run on unrecorded.
        nonlocal cancel_signalled
        cancel_signalled = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    if cancel_path.exists():  # cancelled before it could start (submit gave up waiting for us)
        now = now_iso()
        record.update(start_time=None, end_time=now, exit_code=None, signal=None, cancelled=True)
        write_json(record_path, record)
        return 0
    log_path = Path(spec["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        try:
            child = subprocess.Popen(
                spec["argv"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: cancel signals the job, not the wrapper
            )
        except OSError as exc:
            log.write(f"supervisor local backend: cannot start {spec['argv'][0]}: {exc}\n".encode())
            now = now_iso()
            record.update(start_time=now, end_time=now, exit_code=127, signal=None, cancelled=False)
            write_json(record_path, record)
            return 0
    record.update(
        pid=child.pid,
        pgid=child.pid,
        pid_start_ticks=proc_start_ticks(child.pid),
        start_time=now_iso(),
        end_time=None,
        exit_code=None,
    )
    try:
        write_json(record_path, record)
    except OSError:
        # Unrecorded, nobody could ever learn how it ended or cancel it: it must not run.
        _signal_group(child.pid, signal.SIGKILL)
        child.wait()
        raise
    with contextlib.suppress(OSError):  # without the reserve, the exit status below is what is left
        reserve_end(record_path, record)

    term_sent_at: float | None = None
    killed = False
    while True:
        # WNOWAIT: observe the exit but keep the leader a zombie, so the group id cannot be reused
        # before the leftovers below are killed.
        if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
        cancelled = cancel_signalled or cancel_path.exists()
        if cancelled and term_sent_at is None:
            _signal_group(child.pid, signal.SIGTERM)
            term_sent_at = time.monotonic()
        elif term_sent_at is not None and not killed and time.monotonic() - term_sent_at >= grace:
            _signal_group(child.pid, signal.SIGKILL)
            killed = True
        time.sleep(_WRAPPER_POLL_S)
    # Like the end of a SLURM batch step: nothing the job left behind keeps running.
    _signal_group(child.pid, signal.SIGKILL)
    returncode = child.wait()
    exit_code = 128 - returncode if returncode < 0 else returncode
    record.update(
        end_time=now_iso(),
        exit_code=exit_code,
        signal=-returncode if returncode < 0 else None,
        cancelled=cancel_signalled or cancel_path.exists(),
    )
    try:
        write_end(record_path, record)
    except OSError:
        # Nowhere left to write: the supervisor that started this wrapper reads its exit status instead.
        return exit_code
    return 0


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


# --- the adapter -------------------------------------------------------------------------------


class LocalCluster:
    """The Cluster protocol over local processes; ids look like ``L17`` and never repeat."""

    kind = "local"

    def __init__(
        self,
        state_dir: Path,
        *,
        kill_grace: float = DEFAULT_KILL_GRACE_S,
        start_timeout: float = 10.0,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self._dir = Path(state_dir) / _RECORD_DIR
        self._kill_grace = kill_grace
        self._start_timeout = start_timeout
        self._base_env = base_env
        # Wrappers started by this object, kept so their exits get reaped (no zombies) and read: a wrapper
        # that could not write the end record exits with the job's exit status.
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._wrapper_exits: dict[str, tuple[int, str]] = {}  # job id -> (exit status, when it was seen)

    def submit(self, request: SubmitRequest) -> str:
        argv = job_argv(request)
        self._dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        self._dir.chmod(PRIVATE_DIR)  # also a directory made before records were private
        job_id = self._next_id()
        record_path = self._record_path(job_id)
        spec = {
            "id": job_id,
            "tag": request.tag,
            "argv": argv,
            "log": expand_log_pattern(request.log_pattern, job_id, request.tag),
            "workdir": str(request.workdir),
            "excluded": list(request.exclude),
            "submit_time": now_iso(),
            "record": str(record_path),
            "cancel": str(self._cancel_path(job_id)),
            "kill_grace": self._kill_grace,
        }
        env = job_environment(request, os.environ if self._base_env is None else self._base_env)
        package_root = str(Path(__file__).resolve().parents[2])
        wrapper_log = self._dir / f"{job_id}.wrapper.log"
        try:
            with open(open_private(wrapper_log, os.O_WRONLY | os.O_TRUNC), "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", _WRAPPER_BOOT, package_root, json.dumps(spec)],
                    env=env,
                    cwd=request.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,  # survives the supervisor and its terminal
                )
        except OSError as exc:
            raise ClusterError(f"job {request.tag}: cannot start in {request.workdir}: {exc}", permanent=True) from exc
        self._children[job_id] = proc
        self._wait_started(job_id, proc, wrapper_log)
        return job_id

    def poll(self, job_ids: Collection[str]) -> dict[str, JobInfo]:
        self._reap()
        found: dict[str, JobInfo] = {}
        for job_id in job_ids:
            info = self._info(job_id)
            if info is not None:
                found[job_id] = info
        return found

    def find_by_tag(self, tags: Collection[str]) -> dict[str, JobInfo]:
        self._reap()
        wanted = set(tags)
        best: dict[str, str] = {}
        for job_id, record in self._records():
            tag = record.get("tag")
            if (
                isinstance(tag, str)
                and tag in wanted
                and (tag not in best or _id_number(job_id) > _id_number(best[tag]))
            ):
                best[tag] = job_id
        found: dict[str, JobInfo] = {}
        for tag, job_id in best.items():
            info = self._info(job_id)
            if info is not None:
                found[tag] = info
        return found

    def cancel(self, job_id: str) -> None:
        record = read_json(self._record_path(job_id))
        if record is None:
            # Submitted but its wrapper has not recorded a start yet: leave the request where the
            # wrapper looks before starting the job. Never for an id not handed out, or a future
            # job would be born cancelled.
            if 0 < _id_number(job_id) <= self._last_id():
                self._cancel_path(job_id).touch(PRIVATE_FILE)
            return
        if record.get("end_time") is not None:
            return
        self._cancel_path(job_id).touch(PRIVATE_FILE)
        pgid = record.get("pgid")
        if not isinstance(pgid, int):
            return
        if self._wrapper_alive(record):
            # The wrapper notices the cancel file too and escalates to SIGKILL after the grace
            # period; signalling now just saves its polling delay.
            _signal_group(pgid, signal.SIGTERM)
        elif process_matches(record.get("pid"), record.get("pid_start_ticks"), record.get("boot_id")):
            # Nobody is left to escalate, so do not be gentle.
            _signal_group(pgid, signal.SIGKILL)

    def down_nodes(self, nodes: Collection[str]) -> frozenset[str]:
        """The one local node runs the jobs that ask: it is never down to them."""
        return frozenset()

    def node_addresses(self, nodes: Collection[str]) -> dict[str, tuple[str, ...]]:
        """Every local job runs on this host: its names and addresses, for the one node that is it."""
        host = socket.gethostname()
        short = host.split(".")[0]
        if short not in nodes:
            return {}
        try:
            name, aliases, ips = socket.gethostbyname_ex(host)
        except OSError:
            name, aliases, ips = host, [], []
        return {short: tuple(dict.fromkeys([host, name, *aliases, *ips]))}

    # --- internals ---

    def _record_path(self, job_id: str) -> Path:
        if _ID_RE.fullmatch(job_id) is None:
            raise ClusterError(f"not a local job id: {job_id!r}", permanent=True)
        return self._dir / f"{job_id}.json"

    def _cancel_path(self, job_id: str) -> Path:
        return self._dir / f"{job_id}.cancel"

    def _records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self._dir.is_dir():
            return
        for path in self._dir.glob("L*.json"):
            record = read_json(path)
            if record is not None:
                yield path.stem, record

    def _info(self, job_id: str) -> JobInfo | None:
        path = self._record_path(job_id)
        record = read_json(path)
        if record is None:
            return None
        if record.get("end_time") is None and not self._wrapper_alive(record):
            # It may have written its end and exited between the read and the check.
            record = read_json(path) or record
        alive = record.get("end_time") is None and self._wrapper_alive(record)
        if record.get("end_time") is None and not alive and job_id in self._wrapper_exits:
            exit_code, seen_at = self._wrapper_exits[job_id]
            ended = {**record, "end_time": seen_at, "exit_code": exit_code,
                     "cancelled": self._cancel_path(job_id).exists()}
            reason = "end record could not be written (disk full?); exit status from the wrapper"
            return dataclasses.replace(job_info_from_record(ended, alive=False), reason=reason)
        return job_info_from_record(record, alive=alive)

    @staticmethod
    def _wrapper_alive(record: Mapping[str, Any]) -> bool:
        return process_matches(record.get("wrapper_pid"), record.get("wrapper_start_ticks"), record.get("boot_id"))

    def _last_id(self) -> int:
        try:
            return int((self._dir / "counter").read_text().strip())
        except (OSError, ValueError):
            # A lost counter must not hand out an id a surviving record already uses.
            return max((_id_number(job_id) for job_id, _ in self._records()), default=0)

    def _next_id(self) -> str:
        counter = self._dir / "counter"
        with open(open_private(self._dir / "counter.lock", os.O_RDWR), "r+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            number = self._last_id() + 1
            tmp = counter.with_name(".counter.tmp")
            with open(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w") as fh:
                fh.write(f"{number}\n")
            tmp.replace(counter)
        return f"L{number}"

    def _wait_started(self, job_id: str, proc: subprocess.Popen[bytes], wrapper_log: Path) -> None:
        """Return once the wrapper has recorded the job's pid, so a cancel right after submit works."""
        deadline = time.monotonic() + self._start_timeout
        record_path = self._record_path(job_id)
        while not record_path.exists():
            if proc.poll() is not None and not record_path.exists():
                detail = wrapper_log.read_text(errors="replace").strip()[-2000:]
                raise ClusterError(
                    f"local job {job_id}: wrapper exited with {proc.returncode}: {detail}", permanent=True
                )
            if time.monotonic() > deadline:
                return  # slow machine: poll() will see the record once it appears
            time.sleep(0.01)

    def _reap(self) -> None:
        for job_id, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[job_id]
                if proc.returncode >= 0:  # a wrapper killed by a signal says nothing about its job
                    self._wrapper_exits[job_id] = (proc.returncode, now_iso())
