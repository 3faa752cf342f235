"""Classify a finished (or running) log file in one go: the `supervisor diagnose` command's library half."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from supervisor.logs.scanner import Catalogue, ScanAccumulator, ScanResult
from supervisor.logs.tailer import DEFAULT_MAX_BYTES, TailState, read_new


def scan_file(path: Path, catalogue: Catalogue, chunk_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[ScanResult]:
    """Scan a whole file through the tailer, chunk by chunk, as the daemon does. A trailing line without
    a break is scanned too: the file is taken as final."""
    state = TailState(path=path)
    while True:
        new_state, data = read_new(state, chunk_bytes)
        if not data:
            break
        yield catalogue.scan_chunk(data, state.next_line)
        state = new_state
    with open(path, "rb") as fh:
        fh.seek(state.offset)
        tail = fh.read(chunk_bytes)
    if tail and not state.in_long_line:
        yield catalogue.scan_chunk(tail, state.next_line)


def diagnose(path: Path, catalogue: Catalogue) -> dict[str, Any]:
    """`{"matches": [{"signature", "action", "line", "text", "node"}], "verdict": {"signature", "action"} | None}`.

    ``node`` is the SLURM node name a match's host stands for (without domain and interface suffix), or None:
    no host named, or an IP address, which only a job's allocation can map to a node.

    Raises FileNotFoundError / IsADirectoryError / PermissionError for the CLI to report."""
    acc = ScanAccumulator()
    for result in scan_file(path, catalogue):
        acc.add(result)
    root = catalogue.verdict(acc.matches)
    return {
        "matches": [
            {"signature": m.signature, "action": m.action.value, "line": m.line, "text": m.text,
             "node": _node_name(m.node)}
            for m in acc.matches
        ],
        "verdict": None if root is None else {"signature": root.signature, "action": root.action.value},
    }


def _node_name(host: str | None) -> str | None:
    if not host:
        return None
    # Imported only for a match that names a host: the domain core's package costs the command 0.02 s to import.
    from supervisor.domain.core.exclusion import node_name

    return node_name(host)
