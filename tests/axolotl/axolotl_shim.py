"""An ``axolotl`` stand-in that makes the first attempt of a stage die on its own, mid-work.

Put first on PATH by the test's ``venv`` (whose ``bin/activate`` sources the real training venv);
run with the training venv's python:

    python axolotl_shim.py preprocess|train CONFIG [ARGS...]

With ``SUPERVISOR_ATTEMPT`` other than 1 it simply execs the real ``axolotl`` (``E2E_REAL_AXOLOTL``).
On attempt 1 it runs the real command and, as soon as there is partial output, SIGKILLs the whole
process tree (torchrun puts its workers in sessions of their own, so a process group is not enough)
and exits 137, the way a job killed by the OOM killer or a crashed node ends:

* ``preprocess``: once a dataset directory appears under ``dataset_prepared_path``;
* ``train``: once ``checkpoint-$E2E_KILL_AFTER_STEP`` is complete (``trainer_state.json`` is written
  last). It prints the newest complete checkpoint N at the kill and leaves
  ``checkpoint-$((N + E2E_SAVE_STEPS))`` without ``trainer_state.json``, as a save cut short by the
  kill would, if the trainer did not get that far.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import yaml

KILLED = 137


def complete(checkpoint: Path) -> bool:
    try:
        return isinstance(json.loads((checkpoint / "trainer_state.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def kill_tree(root: int) -> None:
    try:
        parent = psutil.Process(root)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # already gone
            proc.send_signal(signal.SIGKILL)


def main(argv: list[str]) -> int:
    real = os.environ["E2E_REAL_AXOLOTL"]
    command = argv[0] if argv else ""
    if os.environ.get("SUPERVISOR_ATTEMPT") != "1" or command not in ("preprocess", "train"):
        os.execv(real, [real, *argv])
    config = yaml.safe_load(Path(argv[1]).read_text())
    condition: Callable[[], bool]
    if command == "preprocess":
        prepared = Path(config["dataset_prepared_path"])

        def condition() -> bool:
            return prepared.is_dir() and any(p.is_dir() for p in prepared.iterdir())
    else:
        output_dir = Path(config["output_dir"])
        step = int(os.environ["E2E_KILL_AFTER_STEP"])

        def condition() -> bool:
            return complete(output_dir / f"checkpoint-{step}")

    proc = subprocess.Popen([real, *argv])
    while proc.poll() is None and not condition():
        time.sleep(0.01)
    kill_tree(proc.pid)
    proc.wait()
    print(f"axolotl_shim: attempt 1 of `axolotl {command}` killed on purpose", flush=True)
    if command == "train":
        # Steps take tens of ms here: the trainer may have got past checkpoint-K before the kill.
        steps = [int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*") if complete(p)]
        newest = max(steps, default=0)
        print(f"axolotl_shim: newest complete checkpoint at the kill: checkpoint-{newest}", flush=True)
        cut_short = output_dir / f"checkpoint-{newest + int(os.environ['E2E_SAVE_STEPS'])}"
        if newest and not cut_short.exists():
            shutil.copytree(output_dir / f"checkpoint-{newest}", cut_short)
            (cut_short / "trainer_state.json").unlink()
    return KILLED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
