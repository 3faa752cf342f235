"""Reliability under fire: the real `supervisor daemon` SIGKILLed at random moments on the real SLURM cluster.

    eval "$(deploy/slurm-cluster.sh env)"
    PYTHONPATH=$PWD .venv/bin/python bench/reliability_kill.py [--kills 50] [--seed N] [--concurrency 4]
        [--channel webhook|matrix|both] [--answer-delay 0.3] [--synapse-venv DIR] [--no-slow-clients]

A campaign of short two-stage runs keeps the daemon busy: each run's first stage succeeds at once; its
second stage, by the run's kind, succeeds (``ok``), fails once or twice by printing an NVCC-timeout
line (a `resubmit` signature) before succeeding (``resub1``, ``resub2``), or prints a CUDA OOM line (a
`fail` signature) and the run fails (``fail``). Every run notifies, by ``--channel`` (default ``both``),
through the `webhook` channel to a loopback HTTP receiver this script runs, and/or through the `matrix`
channel to one room on a real Synapse (tests/synapse_server.py; a user registered with the shared
secret, its access token given to the daemon in ``MATRIX_TOKEN``). The daemon reaches Synapse through
a loopback relay this script runs, which passes each request on at once and holds Synapse's answer.
While the kills go on, at most ``--concurrency`` runs are active; the script tops them up before each
restart, so submissions, resubmissions and deliveries are under way whenever a kill lands. Each kill:
start the daemon, wait a seeded random delay, SIGKILL it. The receiver and the relay take
``--answer-delay`` to answer and, unless ``--no-slow-clients``, sbatch/squeue/scontrol run behind a
random delay, which widens the windows a kill must hit (mid-delivery, after Synapse has a message but
before the daemon has its answer, mid-submit). After the last kill one daemon runs until every run has
ended and the outbox is empty, then gets SIGTERM. The room is then read back through the client API
(``/messages``, paged).

Then it counts, and each must be 0 (exit 0 when all are, 1 otherwise); the notification checks are
made for each channel, and each finding names its channel:

- duplicate jobs: two SLURM jobs for one attempt. A job's name is the attempt's tag; sacct over the
  test's window (and squeue, for jobs sacct has not yet written) lists every job of ours.
  Also counted: a job of ours for no attempt the database knows.
- lost transitions: an attempt not in a final state, a run whose end or attempt history is not what its
  script dictates, a stage whose attempt has not exactly one `submitted` event, a run whose events are
  out of order (ids and times) or whose last event is not its single terminal one.
- lost notifications: an event of a notifying kind that no document accepted by the receiver lists
  (webhook), that no message in the room lists in its ``io.github.slurm_llm_supervisor.notification``
  content key (matrix).
- duplicated notifications, webhook: an event listed by two documents with different ``id``s, which a
  receiver deduplicating on ``id`` / ``Idempotency-Key`` (docs/webhook-schema.md) would show twice; a
  document received again with no kill between the two receipts; an ``Idempotency-Key`` that is not
  the ``id``. A document received again across a kill (the daemon died after the receiver had it,
  before recording the answer) is what the at-least-once contract allows: printed as a figure, not
  counted.
- duplicated notifications, matrix: an event listed by two room messages; two room messages with one
  idempotency key (one outbox entry); a room message whose key is no delivered outbox entry's; a send
  whose txnId is not its body's idempotency key (its retry would escape Synapse's deduplication).
  Synapse deduplicates a txnId sent again with the same access token, so such resends (the relay's
  log) are printed as figures, not counted: across a kill or not, and how many repeat a message
  Synapse had already accepted.
- notifications out of order: a run's webhook documents, in order of first arrival, or its room
  messages, in the room's order, going back in event ids.
- off-thread notifications (matrix; the channel threads per run): a run's first room message in a
  thread, a later one not in the thread of that first one, or a thread root recorded in the run's
  channel state that is not the first message.

The seed is printed; ``--seed`` replays the kill schedule and the run kinds (the cluster's timing varies).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test harness: the real CLI and daemon as subprocesses

from sqlalchemy import select  # noqa: E402  (after the path set-up above)

from supervisor.notify.matrix import CONTENT_KEY  # noqa: E402
from supervisor.notify.queue import idempotency_key, meta_of  # noqa: E402
from supervisor.store.db import open_database  # noqa: E402
from supervisor.store.models import ChannelState, Event, OutboxEntry, Run, Stage  # noqa: E402

from harness import TERMINAL, Harness, slurm_available  # noqa: E402
from synapse_server import DEFAULT_VENV, SynapseServer, install  # noqa: E402

NOTIFY_ON = ["crashed", "resubmitted", "stage_succeeded", "succeeded", "failed", "retries_exhausted"]
NVCC = "[rank0]: RuntimeError: NVCC timeout while compiling fused kernels"
OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."
# Run kind -> (attempts of the second stage that fail first, the run's end).
KINDS: dict[str, tuple[int, str]] = {"ok": (0, "succeeded"), "resub1": (1, "succeeded"),
                                     "resub2": (2, "succeeded"), "fail": (1, "failed")}
# The daemon's first delivery pass comes OUTBOX_INTERVAL (5 s) after its start: kills spread past it.
MIN_DELAY_S, MAX_DELAY_S = 0.5, 8.0
FINISH_TIMEOUT_S = 600.0
DRAIN_TIMEOUT_S = 300.0
CHANNELS = ("webhook", "matrix")
MATRIX_TOKEN_ENV = "MATRIX_TOKEN"
SEND_PATH = "/send/m.room.message/"


def serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """``handler`` served on a free loopback port from a daemon thread; the server and its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def shut(server: ThreadingHTTPServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def print_problems(problems: dict[str, list[Any]], root: Path, width: int = 28) -> bool:
    """Each count with its items, the state directory, PASS or FAIL; True when every count is 0."""
    for what, items in problems.items():
        print(f"{what:{width}s}{len(items)}")
        for item in items:
            print(f"    {item}")
    print(f"state directory and daemon log: {root}")
    ok = all(not items for items in problems.values())
    print("PASS" if ok else "FAIL")
    return ok


@dataclass
class Receiver:
    """A loopback webhook receiver (as tests/notify_fixtures.py's) that takes ``delay_s`` to answer.

    A body counts as received once read in full: the receiver has acted on it, whether or not the
    daemon lives to read the 200. The delay widens the window in which a kill lands mid-delivery.
    """

    delay_s: float
    received: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                with receiver._lock:
                    receiver.in_flight += 1
                try:
                    body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                    doc = json.loads(body)
                    doc["_idempotency_key"] = self.headers.get("Idempotency-Key")
                    doc["_received_at"] = time.monotonic()
                    with receiver._lock:
                        receiver.received.append(doc)
                    time.sleep(receiver.delay_s)
                    payload = b"{}"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the daemon was killed while waiting for the answer
                finally:
                    with receiver._lock:
                        receiver.in_flight -= 1

        self._server, self.url = serve(Handler)
        return self

    def stop(self) -> None:
        shut(self._server)


@dataclass
class Relay:
    """A loopback HTTP relay between the daemon and Synapse that holds each answer ``delay_s``.

    A request goes on to Synapse at once; Synapse's answer is held back before the daemon gets it,
    so a kill can land after the homeserver has the message and before the daemon records it (the
    window the webhook receiver's delay opens). Every ``PUT .../send/m.room.message/{txnId}`` is
    logged: the txnId, the idempotency key in the body, Synapse's status and event id, and whether
    the answer reached the daemon.
    """

    upstream: str
    delay_s: float
    log: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Relay:
        relay = self
        target = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._relay()

            def do_POST(self) -> None:
                self._relay()

            def do_PUT(self) -> None:
                self._relay()

            def _relay(self) -> None:
                with relay._lock:
                    relay.in_flight += 1
                try:
                    body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                    entry = send_entry(self.path, body)
                    headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED}
                    status, payload, kept = forward(target, self.command, self.path, body, headers)
                    if entry is not None:
                        entry["status"] = status
                        entry["event_id"] = json_field(payload, "event_id")
                        with relay._lock:
                            relay.log.append(entry)
                    time.sleep(relay.delay_s)
                    self.send_response(status)
                    for k, v in kept.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                    if entry is not None:
                        entry["answered"] = True
                except OSError:
                    pass  # the daemon was killed while waiting for the answer
                finally:
                    with relay._lock:
                        relay.in_flight -= 1

        self._server, self.url = serve(Handler)
        return self

    def stop(self) -> None:
        shut(self._server)


FORWARDED = ("authorization", "content-type", "user-agent", "accept")


def json_field(raw: bytes, key: str) -> Any:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc.get(key) if isinstance(doc, dict) else None


def send_entry(path: str, body: bytes) -> dict[str, Any] | None:
    """The relay's log entry for a Matrix send (None for any other request): txnId and the body's key."""
    if SEND_PATH not in path:
        return None
    content = json_field(body, CONTENT_KEY)
    return {"txn": unquote(path.split("?")[0].rsplit("/", 1)[-1]), "at": time.monotonic(), "answered": False,
            "key": content.get("idempotency_key") if isinstance(content, dict) else None}


def forward(target: SplitResult, method: str, path: str, body: bytes,
            headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    """One request to the upstream: its status, body and the headers the daemon reads (502 if unreachable)."""
    upstream = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
    try:
        upstream.request(method, path, body=body, headers=headers)
        answer = upstream.getresponse()
        kept = {k: v for k, v in answer.getheaders() if k.lower() in ("content-type", "retry-after")}
        return answer.status, answer.read(), kept
    except OSError as exc:
        return 502, json.dumps({"error": str(exc)}).encode(), {}
    finally:
        upstream.close()


def slow_clients(root: Path) -> dict[str, str]:
    """The real sbatch/squeue/scontrol behind a random delay of up to ~0.8 s (as tests/test_crash_safety.py
    does), so kills land between the intent and the job, and between the job and its recorded id."""
    shim = root / "slowbin"
    shim.mkdir()
    for client in ("sbatch", "squeue", "scontrol"):
        real = shutil.which(client)
        if real is None:
            raise SystemExit(f"{client} is not installed")
        path = shim / client
        path.write_text(f'#!/bin/bash\nsleep "0.$((RANDOM % 8))"\n{real} "$@"\n'
                        f'rc=$?\nsleep "0.$((RANDOM % 4))"\nexit $rc\n')
        path.chmod(0o755)
    return {"PATH": f"{shim}:{os.environ.get('PATH', '')}"}


def children(pid: int) -> set[str]:
    """Program names of ``pid``'s child processes: what the daemon waits on at the kill."""
    found: set[str] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            if int(stat[stat.rfind(")") + 2:].split()[1]) != pid:
                continue
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        found.update(Path(a.decode(errors="replace")).name for a in argv[:2] if a)
    return found


def phase(programs: set[str], delivering: list[str]) -> str:
    """Where a kill landed; the notifications are delivered by a thread of their own, so both can hold."""
    if "sbatch" in programs:
        cluster = "mid-submit"
    elif programs & {"squeue", "scontrol", "sacct", "scancel"}:
        cluster = "mid-query"
    else:
        cluster = ""
    delivery = f"mid-delivery:{'+'.join(delivering)}" if delivering else ""
    return "+".join(p for p in (cluster, delivery) if p) or "between calls"


@dataclass
class Sinks:
    """Where the runs notify: the webhook receiver, a room on a real Synapse behind the relay, or both."""

    channels: tuple[str, ...]
    receiver: Receiver | None = None
    relay: Relay | None = None
    synapse: SynapseServer | None = None
    token: str = ""
    room: str = ""

    def notify_specs(self) -> list[dict[str, Any]]:
        specs: list[dict[str, Any]] = []
        if self.receiver is not None:
            specs.append({"webhook": {"url": self.receiver.url + "/hook"}, "on": NOTIFY_ON})
        if self.relay is not None:
            specs.append({"matrix": {"homeserver": self.relay.url, "room_id": self.room,
                                     "access_token_env": MATRIX_TOKEN_ENV}, "on": NOTIFY_ON})
        return specs

    def delivering(self) -> list[str]:
        """The channels with a request under way (for the matrix one: at Synapse or its answer held)."""
        out = []
        if self.receiver is not None and self.receiver.in_flight > 0:
            out.append("webhook")
        if self.relay is not None and self.relay.in_flight > 0:
            out.append("matrix")
        return out

    def so_far(self) -> str:
        parts = []
        if self.receiver is not None:
            parts.append(f"webhook {len(self.receiver.received)}")
        if self.relay is not None:
            parts.append(f"matrix {sum(1 for e in self.relay.log if e['status'] == 200)}")
        return ", ".join(parts)

    def room_messages(self) -> list[dict[str, Any]]:
        """Every message of the room, oldest first, read straight from Synapse (``/messages``, paged)."""
        if self.synapse is None:
            return []
        return self.synapse.messages(self.token, self.room)

    def stop(self) -> None:
        for sink in (self.receiver, self.relay):
            if sink is not None:
                sink.stop()
        if self.synapse is not None:
            self.synapse.stop()


def stage_script(h: Harness, name: str, kind: str) -> Path:
    failures, _ = KINDS[kind]
    line = OOM if kind == "fail" else NVCC
    fail = (f'if [ "$SUPERVISOR_ATTEMPT" -le {failures} ]; then printf "%s\\n" "{line}"; sleep 1; exit 1; fi\n'
            if failures else "")
    return h.script(f"{name}.sbatch", f"""
#SBATCH --time=00:05:00
echo "attempt $SUPERVISOR_ATTEMPT of $SUPERVISOR_TAG on $(hostname -s)"
sleep 1
{fail}echo done
""")


def run_spec(h: Harness, name: str, kind: str, notify: list[dict[str, Any]]) -> dict[str, Any]:
    prep = h.script(f"{name}-prep.sbatch", "#SBATCH --time=00:05:00\necho prepared\n")
    return {"name": name, "backend": "slurm", "workdir": str(h.root / "w" / name),
            "stages": [{"name": "prep", "script": str(prep)},
                       {"name": "train", "script": str(stage_script(h, f"{name}-train", kind)),
                        "max_attempts": 3, "retry_backoff": "1s"}],
            "notify": notify}
def cluster_jobs(prefix: str, since: datetime) -> dict[str, set[str]]:
    """Job name (= attempt tag) -> job ids, from sacct over the window and squeue for the newest."""
    jobs: dict[str, set[str]] = {}
    start = since.astimezone().strftime("%Y-%m-%dT%H:%M:%S")
    sacct = subprocess.run(["sacct", "-X", "-n", "-P", "-S", start, "--format=JobName%200,JobID"],
                           capture_output=True, text=True, check=True, timeout=60).stdout
    squeue = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%j|%i"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    for line in (sacct + squeue).splitlines():
        name, _, job_id = line.partition("|")
        if name.startswith(prefix):
            jobs.setdefault(name.strip(), set()).add(job_id.strip())
    return jobs


def pending_outbox(home: Path) -> int:
    with open_database(home)() as s:
        return len(s.scalars(select(OutboxEntry.id).where(OutboxEntry.state == "pending")).all())


@dataclass
class Findings:
    """What the checks found, by kind (each list must end empty), and the figures counted on the way."""

    problems: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in (
        "duplicate jobs", "lost transitions", "lost notifications", "duplicated notifications",
        "notifications out of order", "off-thread notifications")})
    figures: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, what: str) -> None:
        self.problems[kind].append(what)


def check_documents(found: Findings, docs: list[dict[str, Any]], kills: list[float]) -> dict[int, set[str]]:
    """Returns event id -> the ids of the documents listing it.

    A document received again is a duplicate unless a kill came between the two receipts: only a
    daemon that died before recording the answer may send it again."""
    listed: dict[int, set[str]] = {}
    first: dict[str, dict[str, Any]] = {}
    last_at: dict[str, float] = {}
    for doc in docs:
        first.setdefault(doc["id"], doc)
        at = doc["_received_at"]
        if doc["id"] in last_at and not any(last_at[doc["id"]] <= k <= at for k in kills):
            found.add("duplicated notifications", f"webhook: {doc['id']}: received again with no kill in between")
        last_at[doc["id"]] = at
        for e in doc["events"]:
            listed.setdefault(int(e["id"]), set()).add(doc["id"])
        if doc["_idempotency_key"] != doc["id"]:
            found.add("duplicated notifications", f"webhook: {doc['id']}: Idempotency-Key {doc['_idempotency_key']}")
    found.figures["redelivered (same id)"] = len(docs) - len(first)
    # In order per run: a run's documents, by first arrival, list ever newer events.
    newest: dict[str, int] = {}
    for doc in first.values():
        ids = [int(e["id"]) for e in doc["events"]]
        if ids and min(ids) < newest.get(doc["run"], 0):
            found.add("notifications out of order",
                      f"webhook: {doc['run']}: {doc['id']} after event {newest[doc['run']]}")
        newest[doc["run"]] = max([newest.get(doc["run"], 0), *ids])
    return listed



def check_room(found: Findings, messages: list[dict[str, Any]], keys: set[str], roots: dict[str, str | None],
               relay_log: list[dict[str, Any]], kills: list[float]) -> dict[int, set[str]]:
    """Returns event id -> the room messages (event ids) listing it.

    ``keys``: the idempotency keys of the delivered matrix outbox entries; ``roots``: run name -> the
    thread root its ChannelState records. Room messages are in the room's order, which is the order
    in which Synapse accepted them."""
    listed: dict[int, set[str]] = {}
    ours = [m for m in messages if CONTENT_KEY in m.get("content", {})]
    found.figures["room messages"] = len(ours)
    found.figures["room messages without our key"] = len(messages) - len(ours)
    per_key: Counter[str] = Counter()
    newest: dict[str, int] = {}
    first: dict[str, str] = {}
    for m in ours:
        meta, where = m["content"][CONTENT_KEY], m["event_id"]
        run, key, ids = str(meta.get("run")), str(meta.get("idempotency_key")), [int(i) for i in meta["events"]]
        per_key[key] += 1
        if per_key[key] == 2:
            found.add("duplicated notifications", f"matrix: {key}: two room messages for one outbox entry")
        if key not in keys:
            found.add("duplicated notifications", f"matrix: {where}: {key} is no delivered outbox entry's key")
        for i in ids:
            listed.setdefault(i, set()).add(where)
        if ids and min(ids) < newest.get(run, 0):
            found.add("notifications out of order", f"matrix: {run}: {where} ({key}) after event {newest[run]}")
        newest[run] = max([newest.get(run, 0), *ids])
        relates = m["content"].get("m.relates_to")
        if run not in first:
            first[run] = where
            if relates is not None:
                found.add("off-thread notifications", f"matrix: {run}: first message {where} relates to {relates}")
        elif not isinstance(relates, dict) or relates.get("rel_type") != "m.thread" \
                or relates.get("event_id") != first[run]:
            found.add("off-thread notifications", f"matrix: {run}: {where} not in the thread of {first[run]}")
    for run, root in sorted(first.items()):
        if roots.get(run) != root:
            found.add("off-thread notifications", f"matrix: {run}: thread root recorded {roots.get(run)}, "
                                                  f"first room message {root}")
    check_relay_log(found, relay_log, kills)
    return listed


def check_relay_log(found: Findings, relay_log: list[dict[str, Any]], kills: list[float]) -> None:
    """The sends as the relay saw them. A txnId sent again is deduplicated by Synapse (same access token),
    so resends are figures; a txnId that is not the body's idempotency key would escape that."""
    tries: dict[str, list[dict[str, Any]]] = {}
    for entry in relay_log:
        tries.setdefault(entry["txn"], []).append(entry)
        if entry["key"] != entry["txn"]:
            found.add("duplicated notifications", f"matrix: txnId {entry['txn']} carries key {entry['key']}")
    f = found.figures
    f["matrix PUTs"] = len(relay_log)
    f["matrix txnIds"] = len(tries)
    for seq in tries.values():
        for a, b in itertools.pairwise(seq):
            f["same-txnId resends"] += 1
            if any(a["at"] <= k <= b["at"] for k in kills):
                f["same-txnId resends across a kill"] += 1
            else:
                f["same-txnId resends, no kill between"] += 1
            if a["status"] == 200:
                f["same-txnId resends of a message Synapse had accepted"] += 1
        ids = {e["event_id"] for e in seq if e["status"] == 200}
        if len(ids) > 1:
            f["txnIds answered with two event ids"] += 1


def check_events(found: Findings, run: Run, events: list[Event], listed: dict[str, dict[int, set[str]]]) -> None:
    """``listed``: channel -> event id -> what delivered it (webhook document ids, room message ids)."""
    found.figures["events"] += len(events)
    if any(b.at < a.at for a, b in itertools.pairwise(events)):
        found.add("lost transitions", f"{run.name}: event times out of order")
    per_attempt: dict[tuple[str | None, int | None], list[str]] = {}
    for e in events:
        per_attempt.setdefault((e.stage, e.attempt), []).append(e.kind)
    for (stage, number), kinds in per_attempt.items():
        if "started" in kinds and ("submitted" not in kinds or kinds.index("started") < kinds.index("submitted")):
            found.add("lost transitions", f"{run.name}/{stage}#{number}: started before submitted")
    ends = [e for e in events if e.kind in TERMINAL]
    if len(ends) != 1 or events[-1] is not ends[0]:
        found.add("lost transitions", f"{run.name}: terminal events {[e.kind for e in ends]}, last {events[-1].kind}")
    for e in events:
        if e.kind not in NOTIFY_ON:
            continue
        found.figures["notifying events"] += 1
        for channel, by_event in listed.items():
            docs = by_event.get(e.id, set())
            if not docs:
                found.add("lost notifications", f"{channel}: {run.name}: event {e.id} {e.kind} {e.stage}#{e.attempt}")
            elif len(docs) > 1:
                found.add("duplicated notifications", f"{channel}: {run.name}: event {e.id} {e.kind} in {sorted(docs)}")
def check_attempts(found: Findings, run: Run, kind: str, stages: list[Stage], events: list[Event],
                   jobs: dict[str, set[str]]) -> set[str]:
    """Returns the attempts' tags."""
    failures, end = KINDS[kind]
    if run.state != end:
        found.add("lost transitions", f"{run.name} ({kind}): {run.state}, expected {end}")
    submitted = Counter((e.stage, e.attempt) for e in events if e.kind == "submitted")
    tags = set()
    for stage in stages:
        attempts = sorted(stage.attempts, key=lambda a: a.number)
        found.figures["attempts"] += len(attempts)
        planned = 1 + failures if stage.name == "train" and end == "succeeded" else 1
        if [a.number for a in attempts] != list(range(1, planned + 1)):
            found.add("lost transitions", f"{run.name}/{stage.name}: attempts {[a.number for a in attempts]}")
        for a in attempts:
            where = f"{run.name}/{stage.name}#{a.number}"
            tags.add(a.tag)
            if a.state not in TERMINAL:
                found.add("lost transitions", f"{where}: attempt left {a.state}")
            if submitted[(stage.name, a.number)] != 1:
                found.add("lost transitions", f"{where}: {submitted[(stage.name, a.number)]} submitted events")
            ids = jobs.get(a.tag, set())
            if len(ids) > 1 or (ids and a.job_id not in ids):
                found.add("duplicate jobs", f"{a.tag}: jobs {sorted(ids)} on the cluster, recorded {a.job_id}")
    return tags


def check(home: Path, kinds: dict[str, str], jobs: dict[str, set[str]], sinks: Sinks, kills: list[float]) -> Findings:
    found = Findings()
    with open_database(home)() as s:
        entries = list(s.scalars(select(OutboxEntry)))
        names = {rid: name for rid, name in s.execute(select(Run.id, Run.name))}
        roots = {names[r.run_id]: r.data.get("thread_root")
                 for r in s.scalars(select(ChannelState).where(ChannelState.channel.endswith(":matrix")))}
    for channel in sinks.channels:
        found.figures[f"outbox entries {channel}"] = sum(e.channel.endswith(f":{channel}") for e in entries)
    found.figures["outbox entries"] = len(entries)
    listed: dict[str, dict[int, set[str]]] = {}
    if sinks.receiver is not None:
        listed["webhook"] = check_documents(found, list(sinks.receiver.received), kills)
    if sinks.relay is not None:
        keys = {idempotency_key(e) for e in entries if e.channel.endswith(":matrix") and e.state == "delivered"
                and "merged_into" not in meta_of(e)}
        listed["matrix"] = check_room(found, sinks.room_messages(), keys, roots, list(sinks.relay.log), kills)
    tags: set[str] = set()
    with open_database(home)() as s:
        for run in s.scalars(select(Run).where(Run.name.in_(kinds))):
            events = list(s.scalars(select(Event).where(Event.run_id == run.id).order_by(Event.id)))
            stages = list(s.scalars(select(Stage).where(Stage.run_id == run.id).order_by(Stage.position)))
            tags |= check_attempts(found, run, kinds[run.name], stages, events, jobs)
            check_events(found, run, events, listed)
    for tag in sorted(set(jobs) - tags):
        found.add("duplicate jobs", f"{tag}: jobs {sorted(jobs[tag])} for no recorded attempt")
    found.figures["jobs"] = sum(len(ids) for ids in jobs.values())
    return found


@dataclass
class Campaign:
    """The runs registered so far and where the kills landed."""

    h: Harness
    sinks: Sinks
    rng: random.Random
    prefix: str
    kinds: dict[str, str] = field(default_factory=dict)
    phases: Counter[str] = field(default_factory=Counter)
    kill_times: list[float] = field(default_factory=list)

    def top_up(self, concurrency: int) -> int:
        live = [r["name"] for r in self.h.status() if r["state"] not in TERMINAL]
        while len(live) < concurrency:
            name = f"{self.prefix}-{len(self.kinds)}"
            self.kinds[name] = self.rng.choice(sorted(KINDS))
            live.append(self.h.submit(run_spec(self.h, name, self.kinds[name], self.sinks.notify_specs())))
        return len(live)

    def kill_once(self, poll: str) -> str:
        daemon = self.h.start_daemon(poll=poll)
        delay = self.rng.uniform(MIN_DELAY_S, MAX_DELAY_S)
        time.sleep(delay)
        programs, delivering = children(daemon.pid), self.sinks.delivering()
        daemon.kill()
        self.kill_times.append(time.monotonic())
        daemon.wait()
        self.h.daemon = None
        where = phase(programs, delivering)
        self.phases[where] += 1
        return f"after {delay:.2f}s, {where}"

    def finish(self, poll: str) -> int | None:
        """One daemon until every run has ended and the outbox is empty; its exit code."""
        self.h.start_daemon(poll=poll)
        self.h.wait_for(lambda: all(r["state"] in TERMINAL for r in self.h.status()), FINISH_TIMEOUT_S,
                        "every run to end")
        self.h.wait_for(lambda: pending_outbox(self.h.home) == 0, DRAIN_TIMEOUT_S, "the outbox to drain")
        return self.h.stop_daemon()


def print_outcome(kinds: dict[str, str], found: Findings, sinks: Sinks) -> None:
    """The runs by kind, the jobs, the events and what each channel received."""
    by_kind = Counter(kinds.values())
    f = found.figures
    print(f"runs                {len(kinds)} ({', '.join(f'{k} {by_kind[k]}' for k in sorted(by_kind))})")
    print(f"jobs                {f['jobs']} on the cluster, {f['attempts']} attempts recorded")
    print(f"events              {f['events']} ({f['notifying events']} of notifying kinds)")
    if sinks.receiver is not None:
        print(f"webhook             {len(sinks.receiver.received)} documents received "
              f"({f['redelivered (same id)']} of them again with the same id), "
              f"{f['outbox entries webhook']} outbox entries")
    if sinks.relay is not None:
        print(f"matrix              {f['room messages']} room messages ({f['room messages without our key']} "
              f"without our key), {f['outbox entries matrix']} outbox entries; {f['matrix PUTs']} PUTs through "
              f"the relay for {f['matrix txnIds']} txnIds")
        print(f"same-txnId resends  {f['same-txnId resends']} ({f['same-txnId resends across a kill']} across a "
              f"kill, {f['same-txnId resends, no kill between']} with no kill between; "
              f"{f['same-txnId resends of a message Synapse had accepted']} of a message Synapse had accepted; "
              f"{f['txnIds answered with two event ids']} txnIds answered with two event ids)")


def cancel_leftovers(prefix: str, since: datetime) -> None:
    """scancel whatever job of ours is still on the cluster (a run that failed its checks may leave some)."""
    leftovers = [i for ids in cluster_jobs(prefix, since).values() for i in ids]
    if leftovers:
        subprocess.run(["scancel", *leftovers], capture_output=True, timeout=60, check=False)


def report(c: Campaign, found: Findings, kills: int, wall: float, kill_phase: float, code: int | None) -> bool:
    adopted = sum('"adopted"' in line for line in c.h.daemon_log.read_text(errors="replace").splitlines())
    print()
    print(f"channels            {', '.join(c.sinks.channels)}")
    print(f"kills done          {kills} ({', '.join(f'{k} {v}' for k, v in c.phases.most_common())})")
    print_outcome(c.kinds, found, c.sinks)
    print(f"adopted after kill  {adopted} (a job found on the cluster for an attempt left submitting)")
    print(f"wall time           {wall:.0f}s (kill phase {kill_phase:.0f}s); last daemon exited {code}")
    print(f"load average        {load_average()}")
    print()
    return print_problems(found.problems, c.h.root)


def start_sinks(channel: str, answer_delay: float, root: Path, venv: Path) -> Sinks:
    """The webhook receiver and/or Synapse (a user, a room, its token) with the relay in front."""
    sinks = Sinks(CHANNELS if channel == "both" else (channel,))
    if "webhook" in sinks.channels:
        sinks.receiver = Receiver(answer_delay).start()
    if "matrix" in sinks.channels:
        install(venv)
        sinks.synapse = SynapseServer(root / "synapse", venv=venv)
        sinks.synapse.start()
        sinks.token = sinks.synapse.register("supervisor", "supervisor-" + secrets.token_hex(8))
        sinks.room = sinks.synapse.create_room(sinks.token, "reliability-kill")
        sinks.relay = Relay(sinks.synapse.url, answer_delay).start()
    return sinks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    parser.add_argument("--concurrency", type=int, default=4, help="active runs while the kills go on")
    parser.add_argument("--poll", default="1s", help="the daemon's --poll")
    parser.add_argument("--channel", choices=("webhook", "matrix", "both"), default="both",
                        help="where the runs notify: the loopback webhook receiver, a room on a real Synapse, both")
    parser.add_argument("--answer-delay", type=float, default=0.3,
                        help="seconds the webhook receiver takes to answer and the relay holds Synapse's answer")
    parser.add_argument("--synapse-venv", type=Path, default=DEFAULT_VENV,
                        help="the venv with matrix-synapse (installed there when missing)")
    parser.add_argument("--no-slow-clients", action="store_true",
                        help="the SLURM clients at their own speed (fewer kills land mid-submit)")
    args = parser.parse_args()
    if not slurm_available():
        print('SLURM is not answering: eval "$(deploy/slurm-cluster.sh env)" first', file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    print(f"seed {seed} (replay: --seed {seed}), kills {args.kills}, concurrency {args.concurrency}, "
          f"poll {args.poll}, channel {args.channel}, answer delay {args.answer_delay}s", flush=True)
    root = Path(tempfile.mkdtemp(prefix="reliability-kill-"))
    sinks = start_sinks(args.channel, args.answer_delay, root, args.synapse_venv)
    env = {} if args.no_slow_clients else slow_clients(root)
    if sinks.token:
        env[MATRIX_TOKEN_ENV] = sinks.token
    c = Campaign(Harness(root, env), sinks, random.Random(seed), f"rk{secrets.token_hex(3)}")
    # sacct's -S has a one-second resolution and the cluster clock is this machine's: a margin suffices.
    window_start = datetime.now(UTC) - timedelta(seconds=5)
    started = time.monotonic()
    try:
        for i in range(args.kills):
            live = c.top_up(args.concurrency)
            where = c.kill_once(args.poll)
            print(f"kill {i + 1:3d}/{args.kills}: {where}, {live} active, "
                  f"notifications so far: {sinks.so_far()}", flush=True)
        kill_phase = time.monotonic() - started
        code = c.finish(args.poll)
        wall = time.monotonic() - started
        found = check(c.h.home, c.kinds, cluster_jobs(c.prefix, window_start), sinks, c.kill_times)
    finally:
        c.h.close()
        sinks.stop()
        cancel_leftovers(c.prefix, window_start)
    return 0 if report(c, found, args.kills, wall, kill_phase, code) else 1


if __name__ == "__main__":
    sys.exit(main())
