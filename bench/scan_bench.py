"""Time the full-catalogue log scan against `grep -E -f` on a synthetic training log.

    .venv/bin/python bench/scan_bench.py --size-mb 1024 [--path LOG] [--runs 5] [--fallback] [--diagnose]

The log imitates an axolotl train log: tqdm bars redrawn with \\r, metric dicts, INFO/WARNING lines,
with a few failure signatures spliced in (some glued to a tqdm fragment). The scanner reads it as the
daemon does (`read_new` in the daemon's chunk size, `scan_chunk` on each chunk with the tailer's line
number); grep gets the same patterns (named groups and case-folding rewritten into ERE) on the same
file, with a warm page cache, in the same run. Both count lines that match anything; the counts must
agree with each other and, for a freshly generated log, with the number of lines spliced in.

Each run times grep and the scanner back to back (alternating which goes first); the summary line gives
the median of each and the median of the per-run ratios (grep time / scanner time: >= 1 means the
scanner is at least as fast as grep), and the load average, since the numbers are only comparable on
an otherwise idle machine. An existing --path is reused (its size is what it is) unless --regenerate.

``--diagnose`` also times ``supervisor diagnose LOG --json`` as a user runs it: the venv's console script as
its own process (interpreter start, imports, catalogue compile, scan, output), against ``grep -E -f`` with the
patterns of the signatures it reports (the catalogue's milestone patterns left out, so grep has less to
match), each pair in the same run. The command's matches (distinct lines) must agree with that grep's count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from supervisor.logs.follow import CHUNK
from supervisor.logs.scanner import Catalogue
from supervisor.logs.tailer import TailState, keep_chunk_memory, read_new

BLOCKS = " ▏▎▍▌▋▊▉█"

BENIGN = (
    "[2025-11-06 09:14:02,114] [INFO] [axolotl.utils.data.sft._load_prepared_dataset:94] [PID:859953] "
    "[RANK:0] Loading prepared dataset from disk at last_run_prepared/6f3c1a9e...",
    "[2025-11-06 09:14:05,731] [WARNING] [axolotl.utils.schemas.config.check_sample_packing_wo_flash:512] "
    "[PID:859953] [RANK:0] sample_packing without flash, sdp, xformers or flex attention",
    "[rank3]:[W1106 09:14:07.112233445 ProcessGroupNCCL.cpp:4561] [PG ID 0 PG GUID 0 Rank 3]  using GPU 3 "
    "to perform barrier as devices used by this process are currently unknown.",
    "/opt/venv/lib/python3.11/site-packages/torch/utils/checkpoint.py:86: UserWarning: None of the inputs "
    "have requires_grad=True. Gradients will be None",
    "node03:1234:1290 [3] NCCL INFO Channel 00/0 : 3[3] -> 4[0] [send] via NET/IB/0/GDRDMA",
    "[2025-11-06 09:20:11,408] [INFO] [axolotl.core.trainers.base._save:613] [PID:859953] [RANK:0] "
    "Saving model checkpoint to outputs/out/checkpoint-500",
)

SPLICES = (
    "[rank16]:[E1228 15:44:53.523176693 ProcessGroupNCCL.cpp:607] [Rank 0] Watchdog caught collective "
    "operation timeout: WorkNCCL(SeqNum=264290, OpType=_ALLGATHER_BASE, NumelIn=54528000, "
    "NumelOut=218112000, Timeout(ms)=600000) ran for 600018 milliseconds before timing out.",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
    "of 79.11 GiB of which 1.06 GiB is free.",
    "slurmstepd: error: *** JOB 123 ON node01 CANCELLED AT 2024-12-28T15:44:53 DUE TO TIME LIMIT ***",
    "srun: error: Node failure on node07",
    "RuntimeError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:317, unhandled system "
    "error (run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5",
    "OSError: [Errno 28] No space left on device",
    "ERROR: NVCC timeout while building fused kernels",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
    "slurmstepd: error: Detected 1 oom_kill event in StepId=123.0. Some of your processes may have been "
    "killed by the cgroup out-of-memory handler.",
    "[2025-11-06 11:25:10,069] [INFO] [axolotl.train.save_trained_model:228] [PID:859953] [RANK:0] "
    "Training completed! Saving trained model to models/base.",
    "[2025-11-06 11:25:11,945] [INFO] [axolotl.train.save_trained_model:350] [PID:859953] [RANK:0] "
    "Model successfully saved to models/base",
    "[2025-11-06 09:14:07,585] [INFO] [axolotl.train.execute_training:203] [PID:65109] [RANK:0] Starting trainer...",
)


def _bar(step: int, total: int, rng: random.Random) -> str:
    frac = step / total
    filled = frac * 10
    full = int(filled)
    part = BLOCKS[int((filled - full) * 8)] if full < 10 else ""
    bar = ("█" * full + part).ljust(10)
    return f"\r{int(frac * 100):3d}%|{bar}| {step}/{total} [12:34<15:20,  {rng.uniform(1, 3):.2f}s/it]"


def _period(rng: random.Random, target: int) -> bytes:
    """A stretch of benign log (no line matches any pattern) of about `target` bytes."""
    total = 100_000
    parts: list[str] = []
    size = 0
    step = 0
    while size < target:
        step += 1
        piece = [_bar(step, total, rng) for _ in range(rng.randint(1, 3))]
        loss, grad, lr = rng.uniform(0.5, 7), rng.uniform(0.1, 5), rng.uniform(1e-6, 2e-5)
        active, alloc, reserved = rng.uniform(10, 70), rng.uniform(10, 70), rng.uniform(10, 79)
        tps = rng.uniform(1000, 9000)
        piece.append(
            f"\n{{'loss': '{loss:.4f}', 'grad_norm': '{grad:.3f}', 'learning_rate': '{lr:.3e}', "
            f"'memory/max_active (GiB)': '{active:.2f}', 'memory/max_allocated (GiB)': '{alloc:.2f}', "
            f"'memory/device_reserved (GiB)': '{reserved:.2f}', 'tokens_per_second_per_gpu': '{tps:.1f}', "
            f"'epoch': '{step / 1000:.5f}'}}\n"
        )
        if rng.random() < 0.05:
            piece.append(rng.choice(BENIGN) + "\n")
        text = "".join(piece)
        parts.append(text)
        size += len(text.encode())
    return "".join(parts).encode()


def generate(path: Path, size: int, seed: int = 7) -> int:
    """Write the log; return how many lines were spliced in (each one matching line)."""
    rng = random.Random(seed)
    period = _period(rng, 8 * 1024 * 1024)
    n_periods = max(1, size // len(period))
    splice_at = sorted(rng.sample(range(n_periods), min(len(SPLICES), n_periods)))
    spliced = 0
    with open(path, "wb") as fh:
        for i in range(n_periods):
            fh.write(period)
            while splice_at and splice_at[0] == i:
                splice_at.pop(0)
                line = SPLICES[spliced]
                # Every other splice is glued to a tqdm fragment, as tqdm.write-less prints end up.
                glue = _bar(42, 100, rng) if spliced % 2 else ""
                fh.write(f"{glue}{line}\n".encode())
                spliced += 1
    return spliced


def ere(pattern: str, caseless: bool) -> str:
    """The pattern in POSIX ERE: named/non-capturing groups become plain ones, case-folding per letter."""
    out = re.sub(r"\(\?(P<[A-Za-z_][A-Za-z0-9_]*>|:)", "(", pattern)
    if caseless:
        # Outside bracket expressions only (the catalogue's classes hold no letters that need folding).
        pieces = re.split(r"(\[[^\]]*\]|\\.)", out)
        out = "".join(
            p if p.startswith(("[", "\\")) else re.sub(r"[A-Za-z]", lambda m: f"[{m[0].lower()}{m[0].upper()}]", p)
            for p in pieces
        )
    return out


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds
    cpu: float  # user + system seconds of the process doing the scan
    count: int  # distinct matching lines


def scan_with_tailer(path: Path, catalogue: Catalogue, chunk: int) -> Timing:
    """The daemon's loop (LogWatcher.read) without the database: read_new, then scan_chunk on each chunk."""
    t0, c0 = time.perf_counter(), time.process_time()
    state = TailState(path=path)
    lines: set[int] = set()
    while True:
        new_state, data = read_new(state, chunk)
        if not data:
            break
        result = catalogue.scan_chunk(data, state.next_line)
        lines.update(m.line for m in result.matches)
        lines.update(m.line for m in result.milestones)
        state = new_state
    return Timing(time.perf_counter() - t0, time.process_time() - c0, len(lines))


def grep_count(path: Path, patfile: Path) -> Timing:
    env = {**os.environ, "LC_ALL": "C"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["grep", "-c", "-E", "-f", str(patfile), str(path)], capture_output=True, text=True, env=env, check=False
    )
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"grep failed: {proc.stderr.strip()}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Timing(elapsed, cpu, int(proc.stdout.strip() or 0))


def diagnose_command(path: Path) -> Timing:
    """`supervisor diagnose PATH --json` as its own process, the venv's console script, as a user runs it."""
    exe = str(Path(sys.executable).with_name("supervisor"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([exe, "diagnose", str(path), "--json"], capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"supervisor diagnose failed ({proc.returncode}): {proc.stderr.strip()}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Timing(elapsed, cpu, len({m["line"] for m in json.loads(proc.stdout)["matches"]}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="size of a generated log (default 1024)")
    parser.add_argument("--path", type=Path, help="log to reuse, or to generate when missing (default: a temp file)")
    parser.add_argument("--regenerate", action="store_true", help="rewrite an existing --path")
    parser.add_argument("--chunk-mb", type=float, default=CHUNK / 2**20, help="read_new max_bytes (the daemon's)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each tool; medians are reported")
    parser.add_argument(
        "--no-keep-chunk-memory",
        action="store_true",
        help="skip the allocator tuning the daemon does at start (tailer.keep_chunk_memory)",
    )
    parser.add_argument("--fallback", action="store_true", help="also time the pure-re engine")
    parser.add_argument("--diagnose", action="store_true",
                        help="also time the whole `supervisor diagnose` command against grep")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not args.no_keep_chunk_memory:
        keep_chunk_memory()  # as `supervisor daemon` does at start

    with tempfile.TemporaryDirectory(prefix="scan-bench-") as tmp:
        path = args.path or Path(tmp) / "train.log"
        expected = None
        if args.regenerate or not path.exists():
            t0 = time.perf_counter()
            expected = generate(path, args.size_mb * 2**20)
            print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
        size = path.stat().st_size
        catalogue = Catalogue.load()
        patfile = Path(tmp) / "patterns.ere"
        patfile.write_text("".join(ere(p, caseless) + "\n" for p, caseless in catalogue.patterns()))
        sigfile = Path(tmp) / "signatures.ere"
        sigfile.write_text("".join(ere(p, sig.spec.caseless) + "\n" for sig in catalogue.signatures
                                   for p in sig.spec.patterns))
        chunk = int(args.chunk_mb * 2**20)

        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        grep = "grep -E -f"
        engines = {"scanner[" + catalogue.engine_name + "]": catalogue}
        if args.fallback:
            engines["scanner[regex]"] = Catalogue.load(engine="regex")
        grep_sig, command = "grep -E -f (signatures)", "supervisor diagnose"
        commands = (grep_sig, command) if args.diagnose else ()
        timings: dict[str, list[Timing]] = {name: [] for name in (grep, *engines, *commands)}
        measure = {grep: lambda: grep_count(path, patfile), grep_sig: lambda: grep_count(path, sigfile),
                   command: lambda: diagnose_command(path)}
        load_before = os.getloadavg()[0]
        for run in range(args.runs):
            order = list(timings)
            for name in order if run % 2 == 0 else reversed(order):
                timings[name].append(
                    measure[name]() if name in measure else scan_with_tailer(path, engines[name], chunk)
                )
        load_after = os.getloadavg()[0]

        print(
            f"file: {path} {size / 2**20:.0f} MiB, {len(catalogue.patterns())} patterns, "
            f"read_new max_bytes {chunk / 2**20:g} MiB"
        )
        if expected is not None:
            print(f"spliced matching lines: {expected}")
        found = {name: {t.count for t in runs} for name, runs in timings.items()}
        ok = len(found[grep]) == 1 and (expected is None or found[grep] == {expected})
        for name, runs in timings.items():
            # The command reports signature matches only: its reference is the grep of those patterns.
            reference = grep_sig if name in commands else grep
            wall = statistics.median(t.wall for t in runs)
            cpu = statistics.median(t.cpu for t in runs)
            spread = f"{min(t.wall for t in runs):.3f}-{max(t.wall for t in runs):.3f}"
            counts = "/".join(str(c) for c in sorted(found[name]))
            print(
                f"{name:24s} wall median {wall:6.3f} s ({spread})  cpu median {cpu:6.3f} s  "
                f"{size / wall / 1e9:5.2f} GB/s  matching lines {counts}"
            )
            ok = ok and found[name] == found[reference]
        print("counts agree" if ok else "COUNT MISMATCH")
        pairs = [(name, grep) for name in engines] + ([(command, grep_sig)] if args.diagnose else [])
        for name, ref in pairs:
            # Per-run ratios, so a load spike during one run skews one ratio instead of both medians.
            wall_ratio = statistics.median(g.wall / t.wall for g, t in zip(timings[ref], timings[name], strict=True))
            cpu_ratio = statistics.median(g.cpu / t.cpu for g, t in zip(timings[ref], timings[name], strict=True))
            verdict = "at least as fast as grep" if wall_ratio >= 1 else "slower than grep"
            what = "command" if name == command else "scanner"
            print(
                f"SUMMARY {name}: {ref} {statistics.median(t.wall for t in timings[ref]):.3f} s, "
                f"{what} {statistics.median(t.wall for t in timings[name]):.3f} s, speed vs grep x{wall_ratio:.2f} "
                f"wall, x{cpu_ratio:.2f} cpu ({verdict}; median of {args.runs} runs on {size / 2**20:.0f} MiB; "
                f"load average {load_before:.2f} -> {load_after:.2f})"
            )
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
