from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

from supervisor.logs.tailer import TailState, count_lines, read_new


def _drain(state: TailState, max_bytes: int = 64, max_line: int = 1024 * 1024) -> tuple[TailState, bytes]:
    out = b""
    while True:
        state, data = read_new(state, max_bytes, max_line)
        if not data:
            return state, out
        out += data


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def test_count_lines_counts_cr_and_lf() -> None:
    assert count_lines(b"a\rb\nc\r\n") == 4
    assert count_lines(b"") == 0


def test_missing_file_keeps_state(tmp_path: Path) -> None:
    state = TailState(path=tmp_path / "nope.log", inode=5, offset=10, line_no=2)
    assert read_new(state) == (state, b"")


def test_partial_last_line_stays_unread_until_completed(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"one\ntwo\nthr")
    state, data = read_new(TailState(path=log))
    assert data == b"one\ntwo\n"
    assert (state.offset, state.line_no) == (8, 2)
    assert read_new(state)[1] == b""
    _append(log, b"ee\r 50%|bar\r")
    state, data = read_new(state)
    assert data == b"three\r 50%|bar\r"
    assert state.line_no == 4


def test_restart_mid_file_yields_no_duplicates(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    lines = [f"line {i}\n".encode() for i in range(1000)]
    log.write_bytes(b"".join(lines[:500]) + b"line 50")
    state, first = read_new(TailState(path=log), max_bytes=1500)
    persisted = json.dumps(state.to_dict())  # as the daemon stores it in SQLite
    _append(log, b"0\n" + b"".join(lines[501:]))
    restored = TailState.from_dict(json.loads(persisted))
    assert restored == state
    state, rest = _drain(restored)
    got = (first + rest).splitlines(keepends=True)
    assert got == [*lines[:500], b"line 500\n", *lines[501:]]
    assert state.line_no == 1000
    assert state.offset == log.stat().st_size


def test_chunks_end_on_line_breaks_and_count_lines(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    payload = b"".join(f"\r{i:4d}/1000 [00:01, 1.0it/s]".encode() for i in range(300)) + b"\nend\n"
    log.write_bytes(payload)
    state = TailState(path=log)
    seen = 0
    while True:
        new_state, data = read_new(state, 100)
        if not data:
            break
        assert data[-1:] in (b"\r", b"\n")
        assert new_state.line_no - state.line_no == count_lines(data)
        seen += len(data)
        state = new_state
    assert seen == len(payload)
    assert state.line_no == count_lines(payload)


def test_truncation_restarts_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"a\nb\nc\n")
    state, _ = read_new(TailState(path=log))
    log.write_bytes(b"new\n")  # same inode, smaller
    state2, data = read_new(state)
    assert data == b"new\n"
    assert (state2.offset, state2.line_no, state2.inode) == (4, 1, state.inode)


def test_rotation_starts_the_new_file_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"old 1\nold 2\nold 3\nold 4\n")
    state, _ = read_new(TailState(path=log))
    log.rename(tmp_path / "job.log.1")
    log.write_bytes(b"fresh\n" * 10)  # a new inode, even larger than the old offset
    state2, data = read_new(state)
    assert data == b"fresh\n" * 10
    assert state2.inode != state.inode
    assert state2.line_no == 10


def test_deleted_file_no_error_state_kept(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"x\n")
    state, _ = read_new(TailState(path=log))
    log.unlink()
    assert read_new(state) == (state, b"")


def test_binary_garbage(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    garbage = bytes(range(256)) * 4 + b"\n"
    log.write_bytes(garbage)
    state, data = _drain(TailState(path=log), 4096)
    assert data == garbage
    assert state.line_no == count_lines(garbage)
    data.decode("utf-8", errors="replace")


def test_ten_megabyte_line_is_cut_and_memory_stays_bounded(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    cap = 256 * 1024
    with open(log, "wb") as fh:
        fh.write(b"before\n")
        for _ in range(40):
            fh.write(b"z" * (256 * 1024))  # 10 MiB without a break
        fh.write(b"\nafter\n")
    tracemalloc.start()
    try:
        state, out = _drain(TailState(path=log), 64 * 1024, cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == b"before\n" + b"z" * cap + b"\n" + b"after\n"
    assert state.line_no == 3
    assert state.offset == log.stat().st_size
    assert peak < 8 * cap  # the 10 MiB line is never held whole


def test_long_line_still_being_written(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"ok\n" + b"q" * 5000)
    state, data = read_new(TailState(path=log), max_bytes=1024, max_line=2000)
    assert data == b"ok\n"
    state, data = read_new(state, max_bytes=1024, max_line=2000)
    assert data == b"q" * 2000 + b"\n"
    assert state.in_long_line and state.line_no == 2
    _append(log, b"q" * 3000)
    state, data = read_new(state, max_bytes=1024, max_line=2000)
    assert data == b"" and state.in_long_line
    _append(log, b"qq\nnext\n")
    state, data = _drain(state)
    assert data == b"next\n"
    assert not state.in_long_line
    assert state.line_no == 3


def test_state_dict_round_trip(tmp_path: Path) -> None:
    state = TailState(path=tmp_path / "a.log", inode=42, offset=7, line_no=3, in_long_line=True)
    assert TailState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert TailState.from_dict({"path": "/x"}) == TailState(path=Path("/x"))


def test_count_lines_matches_a_per_byte_count_at_any_density() -> None:
    rng = random.Random(3)
    for size, density in [(10, 0.5), (70_000, 0.01), (300_000, 0.3), (300_000, 0.0), (200_000, 1.0)]:
        data = bytes(rng.choice(b"\r\n") if rng.random() < density else rng.choice(b"ab \x1b") for _ in range(size))
        assert count_lines(data) == sum(1 for b in data if b in b"\r\n")


def test_large_windows_split_on_line_breaks(tmp_path: Path) -> None:
    # Lines of every length, a few longer than the tail the tailer probes for the last break of a window.
    rng = random.Random(5)
    parts = []
    for _ in range(300):
        length = rng.choice([0, 1, 40, 90, 300, 5000, 70_000, 200_000])
        parts.append(b"x" * length + rng.choice([b"\n", b"\r", b"\r\n"]))
    payload = b"".join(parts)
    log = tmp_path / "job.log"
    log.write_bytes(payload + b"unfinished")
    for max_bytes in (1000, 65_536, 100_000, 1024 * 1024, 8 * 1024 * 1024):
        state = TailState(path=log)
        out = []
        while True:
            new_state, data = read_new(state, max_bytes, max_line=len(payload))
            if not data:
                break
            assert data[-1:] in (b"\r", b"\n")
            assert len(data) <= max(max_bytes, 200_001)
            assert new_state.line_no - state.line_no == count_lines(data)
            out.append(data)
            state = new_state
        assert b"".join(out) == payload
        assert (state.offset, state.line_no) == (len(payload), count_lines(payload))


def test_count_lines_is_the_same_for_small_reads_and_large_ones() -> None:
    line = b"  5%|#         | 50/1000 [00:10<03:10,  5.00it/s]\r{'loss': 1.2}\r\n"
    large = line * (256 * 1024 // len(line))  # counted with numpy
    pieces = [large[i : i + 4096] for i in range(0, len(large), 4096)]  # each counted with bytes.count
    assert count_lines(large) == sum(count_lines(p) for p in pieces) == 3 * (len(large) // len(line))
