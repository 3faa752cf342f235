"""rsync transfer: argv, progress parsing, retries with a real rsync on local directories."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from supervisor.domain.errors import TransferError
from supervisor.stages import rsync as transfer


def test_argv() -> None:
    assert transfer.rsync_argv(Path("/m/merged/"), "user@hitz:/models/x") == [
        "rsync", "-a", "--partial", "--compress", "--info=progress2", "/m/merged/", "user@hitz:/models/x",
    ]  # fmt: skip
    assert transfer.verify_argv(Path("/m/merged"), "/dest") == [
        "rsync", "-a", "--checksum", "--dry-run", "--itemize-changes", "/m/merged/", "/dest",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "      1,048,576  45%   12.34MB/s    0:00:05 (xfr#3, to-chk=2/7)",
            transfer.TransferProgress(1048576, 45, "12.34MB/s", "0:00:05", 3, 2, 7, True),
        ),
        (
            "              0   0%    0.00kB/s    0:00:00 (xfr#0, ir-chk=1000/1001)",
            transfer.TransferProgress(0, 0, "0.00kB/s", "0:00:00", 0, 1000, 1001, False),
        ),
        ("        32.77K 100%   31.25MB/s    0:00:00", transfer.TransferProgress(33556, 100, "31.25MB/s", "0:00:00")),
        ("sending incremental file list", None),
        ("rsync error: some files/attrs were not transferred (code 23)", None),
    ],
)
def test_parse_progress(line: str, expected: transfer.TransferProgress | None) -> None:
    assert transfer.parse_progress_line(line) == expected


def test_progress_lines_split_on_carriage_returns() -> None:
    text = "\r   100  10%  1.00kB/s  0:00:09\r   900  90%  1.00kB/s  0:00:01 (xfr#1, to-chk=0/2)\n"
    progress = transfer.last_progress(text)
    assert progress is not None and progress.percent == 90 and progress.files_left == 0


def test_pending_changes() -> None:
    itemized = ".d..t...... ./\n>f.st...... model.safetensors\ncd+++++++++ sub/\n.f..t...... same.json\n"
    assert transfer.pending_changes(itemized) == [">f.st...... model.safetensors", "cd+++++++++ sub/"]
    assert transfer.pending_changes("") == []


def test_backoff() -> None:
    assert transfer.backoff_delays(5, 30, 100) == [30, 60, 100, 100]
    assert transfer.backoff_delays(1, 30, 100) == []


def tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(os.urandom(300_000))
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "tokenizer.json").write_text("{}")
    return root


def test_transfer_and_verify_local(tmp_path: Path) -> None:
    source = tree(tmp_path / "merged")
    dest = tmp_path / "home" / "model"
    dest.parent.mkdir()
    seen: list[transfer.TransferProgress] = []
    result = transfer.transfer_and_verify(source, str(dest), on_progress=seen.append, sleep=lambda s: None)
    assert result.attempts == 1
    assert seen and seen[-1].percent == 100
    assert (dest / "sub" / "tokenizer.json").read_text() == "{}"
    assert (dest / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert transfer.verify(source, str(dest)) == []


def test_verify_catches_same_size_same_mtime_corruption(tmp_path: Path) -> None:
    source = tree(tmp_path / "merged")
    dest = tmp_path / "dest"
    transfer.transfer(source, str(dest), sleep=lambda s: None)
    victim = dest / "model.safetensors"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    # A plain rsync (size + mtime) would not resend it; the checksum verification does notice.
    assert [line.split(" ", 1)[1] for line in transfer.verify(source, str(dest))] == ["model.safetensors"]
    transfer.transfer_and_verify(source, str(dest), sleep=lambda s: None)
    assert victim.read_bytes() == (source / "model.safetensors").read_bytes()


def fake_rsync(tmp_path: Path, codes: list[int]) -> Path:
    """An rsync stand-in exiting with the given codes in turn, then delegating to the real one."""
    counter = tmp_path / "calls"
    script = tmp_path / "rsync"
    script.write_text(
        "#!/bin/bash\n"
        f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}\n"
        f"codes=({' '.join(map(str, codes))})\n"
        'if [ "$n" -lt "${#codes[@]}" ]; then\n'
        '    echo "rsync: connection unexpectedly closed" >&2; exit "${codes[$n]}"\n'
        "fi\n"
        'exec rsync "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_retries_transient_failures_with_backoff(tmp_path: Path) -> None:
    source = tree(tmp_path / "merged")
    sleeps: list[float] = []
    rsync = fake_rsync(tmp_path, [12, 255])
    result = transfer.transfer(
        source, str(tmp_path / "d"), attempts=3, backoff=5, rsync=str(rsync), sleep=sleeps.append
    )
    assert result.attempts == 3
    assert sleeps == [5, 10]
    assert transfer.verify(source, str(tmp_path / "d")) == []


def test_gives_up_after_attempts(tmp_path: Path) -> None:
    rsync = fake_rsync(tmp_path, [30, 30, 30])
    with pytest.raises(TransferError) as info:
        transfer.transfer(
            tree(tmp_path / "m"), str(tmp_path / "d"), attempts=2, backoff=1, rsync=str(rsync), sleep=lambda s: None
        )
    assert info.value.exit_code == 30 and info.value.permanent


def test_permanent_failure_not_retried(tmp_path: Path) -> None:
    sleeps: list[float] = []
    rsync = fake_rsync(tmp_path, [1])
    with pytest.raises(TransferError) as info:
        transfer.transfer(tree(tmp_path / "m"), str(tmp_path / "d"), attempts=5, rsync=str(rsync), sleep=sleeps.append)
    assert info.value.exit_code == 1 and info.value.permanent and sleeps == []
    with pytest.raises(TransferError, match="not a directory"):
        transfer.transfer(tmp_path / "missing", str(tmp_path / "d"))


def test_main_prints_the_verified_marker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tree(tmp_path / "merged")
    assert transfer.main([str(source), str(tmp_path / "dest"), "--attempts", "1"]) == 0
    out = capsys.readouterr().out
    assert transfer.VERIFIED_MARKER in out
    assert transfer.main([str(tmp_path / "nope"), str(tmp_path / "dest")]) == 1


def test_interrupted_transfer_resumes_where_it_stopped(tmp_path: Path) -> None:
    """A real rsync killed mid-transfer: the retry sends only what is missing, and verifies clean."""
    source = tmp_path / "bulk"
    source.mkdir()
    size = 4 * 1024 * 1024
    for i in range(4):
        (source / f"shard-{i}.bin").write_bytes(os.urandom(size))
    destination = tmp_path / "bulk-dest"

    # Throttled so that it is still running after the first file; killed then, as a dropped link would.
    proc = subprocess.Popen(
        transfer.rsync_argv(source, str(destination), extra=["--bwlimit=4096"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def one_file_done() -> bool:
        return destination.is_dir() and any(p.stat().st_size == size for p in destination.glob("shard-*.bin"))

    deadline = time.monotonic() + 120  # bounds a hang; not a claim about speed
    while not one_file_done() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "rsync finished before it could be interrupted"
    proc.kill()
    proc.wait()
    assert transfer.verify(source, str(destination)), "nothing left to send after the interruption?"

    result = transfer.transfer(source, str(destination), attempts=2, backoff=0.0)
    assert result.progress is not None and result.progress.files_transferred is not None
    assert result.progress.files_transferred < 4, "the resumed transfer started over"
    assert transfer.verify(source, str(destination)) == []


@pytest.mark.parametrize(
    ("destination", "local"),
    [
        ("/home/me/models/tiny", True),
        ("models/tiny", True),
        ("./a:b", True),
        ("login01:/home/me/models", False),
        ("me@login01:models", False),
        ("rsync://mirror/models", False),
    ],
)
def test_is_local(destination: str, local: bool) -> None:
    assert transfer.is_local(destination) is local


def test_local_destination_parents_are_created(tmp_path: Path) -> None:
    source = tree(tmp_path / "merged")
    dest = tmp_path / "home" / "models" / "tiny"  # neither home/ nor models/ exists yet
    transfer.transfer_and_verify(source, str(dest), attempts=1, sleep=lambda s: None)
    assert transfer.verify(source, str(dest)) == []
