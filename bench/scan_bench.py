"""Time the full-catalogue log scan against `grep -E -f` on a synthetic training log.

    .venv/bin/python bench/scan_bench.py --size-mb 1024 [--path LOG] [--keep] [--fallback]

The log imitates an axolotl train log: tqdm bars redrawn with \\r, metric dicts, INFO/WARNING lines,
with a few failure signatures spliced in (some glued to a tqdm fragment). The scanner reads it through
the tailer in the daemon's chunk size; grep gets the same patterns (named groups and case-folding
rewritten into ERE) on the same file, with a warm page cache, in the same run. Both count lines that
match anything; the counts must agree with each other and with the number of lines spliced in.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from supervisor.scanner import Catalogue
from supervisor.tailer import DEFAULT_MAX_BYTES, TailState, read_new

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


def scan_with_tailer(path: Path, catalogue: Catalogue, chunk: int) -> tuple[float, int, int]:
    """Seconds, distinct matching lines, logical lines read."""
    t0 = time.perf_counter()
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
    return time.perf_counter() - t0, len(lines), state.line_no


def grep_count(path: Path, patfile: Path) -> tuple[float, int]:
    env = {**os.environ, "LC_ALL": "C"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["grep", "-c", "-E", "-f", str(patfile), str(path)], capture_output=True, text=True, env=env, check=False
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"grep failed: {proc.stderr.strip()}")
    return elapsed, int(proc.stdout.strip() or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--path", type=Path, help="log to write (default: a temp dir, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep an existing --path instead of regenerating")
    parser.add_argument("--chunk-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per tool; the best is reported")
    parser.add_argument("--fallback", action="store_true", help="also time the pure-re engine")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="scan-bench-") as tmp:
        path = args.path or Path(tmp) / "train.log"
        if args.keep and path.exists():
            expected = None
        else:
            t0 = time.perf_counter()
            expected = generate(path, args.size_mb * 2**20)
            print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
        size = path.stat().st_size
        catalogue = Catalogue.load()
        patfile = Path(tmp) / "patterns.ere"
        patfile.write_text("".join(ere(p, caseless) + "\n" for p, caseless in catalogue.patterns()))
        chunk = int(args.chunk_mb * 2**20)

        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        engines = [("scanner[" + catalogue.engine_name + "]", catalogue)]
        if args.fallback:
            engines.append(("scanner[regex]", Catalogue.load(engine="regex")))
        results: dict[str, tuple[float, int]] = {}
        for _ in range(args.repeat):
            g = grep_count(path, patfile)
            results["grep -E -f"] = min(results.get("grep -E -f", g), g)
            for name, cat in engines:
                secs, count, _lines = scan_with_tailer(path, cat, chunk)
                results[name] = min(results.get(name, (secs, count)), (secs, count))

        grep_secs, grep_n = results["grep -E -f"]
        print(f"file: {size / 2**20:.0f} MiB, {len(catalogue.patterns())} patterns, chunk {chunk / 2**20:g} MiB")
        if expected is not None:
            print(f"spliced matching lines: {expected}")
        ok = True
        for name, (secs, count) in results.items():
            ratio = grep_secs / secs
            print(
                f"{name:22s} {secs:7.3f} s  {size / secs / 1e9:5.2f} GB/s  matching lines {count:4d}"
                f"  speed vs grep x{ratio:.2f}"
            )
            ok = ok and count == grep_n and (expected is None or count == expected)
        print("counts agree" if ok else "COUNT MISMATCH")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
