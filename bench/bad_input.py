"""A bad-input corpus through the real CLI: counts tried / handled cleanly, exit 1 if any was not.

    .venv/bin/python bench/bad_input.py [--keep DIR]

Handled cleanly means:
- a spec or config `submit` must refuse (the corpus in tests/data/bad_specs, broken campaign specs and axolotl
  configs made here): exit code 2, one line on stderr starting `error: `, no traceback, and no state
  directory left behind; `plan --offline` must answer the same way;
- a log file `diagnose` is given (a single 64 MiB line, random binary, NUL bytes, UTF-8 cut in the middle of
  a character, an empty file, a directory, a missing file, a log truncated and one rewritten while being
  read): exit 0 with its report, or exit 2 with one `error: ` line; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
BAD_SPECS = REPO / "tests" / "data" / "bad_specs"
SUPERVISOR = [sys.executable, "-m", "supervisor"]
SECRET = "s3cr3tT0k3nValue"


@dataclass
class Outcome:
    family: str
    case: str
    clean: bool
    why: str = ""


def run_cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SUPERVISOR_HOME": str(home)}
    return subprocess.run([*SUPERVISOR, *args], env=env, capture_output=True, text=True, errors="replace",
                          timeout=timeout, check=False)


def refused_cleanly(done: subprocess.CompletedProcess[str], home: Path) -> str:
    """Why the refusal was not clean ('' when it was)."""
    if "Traceback" in done.stderr:
        return "traceback: " + done.stderr.strip().splitlines()[-1][:200]
    if done.returncode != 2:
        return f"exit {done.returncode}: {done.stderr.strip()[:200]}"
    lines = done.stderr.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"stderr is not one error line: {done.stderr.strip()[:200]!r}"
    if home.exists():
        return "a state directory was created"
    if SECRET in done.stderr or SECRET in done.stdout:
        return "the secret was repeated in the output"
    return ""


def campaign_cases(root: Path) -> dict[str, Any]:
    stage = {"name": "s", "command": ["true"]}
    good_run = {"name": "r", "backend": "local", "stages": [stage]}
    return {
        "runs_not_a_list": {"campaign": "c", "runs": {"name": "r"}},
        "runs_and_matrix": {"campaign": "c", "runs": [good_run], "matrix": {"axolotl_config": ["a.yaml"]}},
        "neither_runs_nor_matrix": {"campaign": "c", "defaults": {"stages": [stage]}},
        "matrix_empty": {"campaign": "c", "matrix": {"axolotl_config": []}},
        "matrix_missing_config": {"campaign": "c", "defaults": {"stages": [{"name": "p", "kind": "prepare"}]},
                                  "matrix": {"axolotl_config": ["nowhere.yaml"]}},
        "campaign_name_slash": {"campaign": "a/b", "runs": [good_run]},
        # A webhook URL pasted into the name: refused, and never repeated back.
        "campaign_name_secret": {"campaign": f"https://hooks.slack.com/services/T0/B0/{SECRET}", "runs": [good_run]},
        "run_name_secret": {"campaign": "c", "runs": [{**good_run, "name": f"xoxb/{SECRET}"}]},
        "unknown_key": {"campaign": "c", "runs": [good_run], "max_jobs": 2},
        "max_live_jobs_true": {"campaign": "c", "runs": [good_run], "max_live_jobs": True},
        "max_live_jobs_zero": {"campaign": "c", "runs": [good_run], "max_live_jobs": 0},
        "budget_negative": {"campaign": "c", "runs": [good_run], "budget": {"node_hours": -1}},
        "budget_string": {"campaign": "c", "runs": [good_run], "budget": {"node_hours": "lots"}},
        "budget_empty": {"campaign": "c", "runs": [good_run], "budget": {}},
        "allocation_nan": {"campaign": "c", "runs": [good_run], "allocation_node_hours": float("nan")},
        "defaults_with_name": {"campaign": "c", "defaults": {"name": "x"}, "runs": [good_run]},
        "defaults_unknown_key": {"campaign": "c", "defaults": {"nodes": 4}, "runs": [good_run]},
        "duplicate_runs": {"campaign": "c", "runs": [good_run, good_run]},
        "run_bad_stage": {"campaign": "c", "runs": [{**good_run, "stages": [{"name": "s"}]}]},
        "run_not_a_mapping": {"campaign": "c", "runs": ["r"]},
        "thousand_runs_one_bad": {"campaign": "c", "runs": [{**good_run, "name": f"r{i}",
                                                             "workdir": str(root / f"w{i}")}
                                                            for i in range(999)] + [{"name": "bad"}]},
    }


def axolotl_cases() -> dict[str, str | bytes]:
    return {
        "binary": os.urandom(4096),
        "not_a_mapping": "- a\n- b\n",
        "no_output_dir": "dataset_prepared_path: p\n",
        "empty_output_dir": "output_dir: ''\ndataset_prepared_path: p\n",
        "fsdp_version_3": "output_dir: o\ndataset_prepared_path: p\nfsdp_version: 3\n",
        "full_state_dict": ("output_dir: o\ndataset_prepared_path: p\nfsdp_version: 2\n"
                            "fsdp_config: {state_dict_type: FULL_STATE_DICT}\n"),
        "max_steps_negative": "output_dir: o\ndataset_prepared_path: p\nmax_steps: -5\n",
        "bf16_maybe": "output_dir: o\ndataset_prepared_path: p\nbf16: maybe\n",
        "cut_utf8": b"output_dir: o\ndataset_prepared_path: p\n# caf" + b"\xc3",
        "huge_nesting": "a: " + "[" * 20000 + "]" * 20000 + "\noutput_dir: o\ndataset_prepared_path: p\n",
    }


def log_cases(root: Path) -> dict[str, Callable[[], Path]]:
    def write(name: str, data: bytes) -> Callable[[], Path]:
        def make() -> Path:
            path = root / "logs" / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            return path
        return make

    rng = random.Random(7)
    nccl = b"[rank3]:[E1202 10:00:00.000000000 ProcessGroupNCCL.cpp:616] Watchdog caught collective operation timeout\n"

    def directory() -> Path:
        (root / "logs" / "a-directory").mkdir(parents=True, exist_ok=True)
        return root / "logs" / "a-directory"

    return {
        "one_64MiB_line": write("long.log", b"x" * (64 << 20) + b"\n" + nccl),
        "random_binary": write("binary.log", bytes(rng.getrandbits(8) for _ in range(1 << 20))),
        "nul_bytes": write("nul.log", b"\x00" * 10000 + nccl + b"\x00" * 10),
        "cut_utf8": write("cut.log", "ñ".encode() * 1000 + nccl + "é".encode()[:1]),
        "empty": write("empty.log", b""),
        "directory": directory,
        "missing": lambda: root / "logs" / "missing.log",
        "crlf_and_cr": write("crlf.log", b"step 1\r\n\r 50%|#####     | 5/10\r" + nccl.replace(b"\n", b"\r\n")),
    }


def check_specs(root: Path, outcomes: list[Outcome]) -> None:
    for path in sorted(BAD_SPECS.glob("*.yaml")):
        if path.name == "expected.yaml":
            continue
        for command in (["submit"], ["plan", "--offline"]):
            home = root / "homes" / f"{path.stem}-{command[0]}"
            done = run_cli(home, *command, str(path))
            why = refused_cleanly(done, home)
            outcomes.append(Outcome(f"run spec ({command[0]})", path.name, not why, why))


def check_campaigns(root: Path, outcomes: list[Outcome]) -> None:
    folder = root / "campaigns"
    folder.mkdir()
    for name, data in campaign_cases(root).items():
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        for command in (["submit"], ["plan", "--offline"]):
            home = root / "homes" / f"campaign-{name}-{command[0]}"
            why = refused_cleanly(run_cli(home, *command, str(path)), home)
            outcomes.append(Outcome(f"campaign spec ({command[0]})", name, not why, why))


def check_axolotl_configs(root: Path, outcomes: list[Outcome]) -> None:
    folder = root / "axolotl"
    folder.mkdir()
    for name, content in axolotl_cases().items():
        config = folder / f"{name}.yaml"
        config.write_bytes(content if isinstance(content, bytes) else content.encode())
        spec = folder / f"{name}-spec.yaml"
        spec.write_text(yaml.safe_dump({"name": "r", "backend": "local", "axolotl_config": str(config),
                                        "workdir": str(folder / "w"),
                                        "stages": [{"name": "p", "kind": "prepare"}]}))
        home = root / "homes" / f"axolotl-{name}"
        why = refused_cleanly(run_cli(home, "submit", str(spec)), home)
        outcomes.append(Outcome("axolotl config", name, not why, why))


def diagnosed_cleanly(done: subprocess.CompletedProcess[str]) -> str:
    if "Traceback" in done.stderr:
        return "traceback: " + done.stderr.strip().splitlines()[-1][:200]
    if done.returncode == 0:
        return ""
    lines = done.stderr.strip().splitlines()
    if done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return ""
    return f"exit {done.returncode}: {done.stderr.strip()[:200]!r}"


def check_logs(root: Path, outcomes: list[Outcome]) -> None:
    home = root / "homes" / "diagnose"
    for name, make in log_cases(root).items():
        path = make()
        why = diagnosed_cleanly(run_cli(home, "diagnose", "--json", str(path)))
        outcomes.append(Outcome("log file (diagnose)", name, not why, why))
    # A log cut short and one rewritten from the start while `diagnose` reads it.
    for name, change in (("truncated_while_read", lambda f: f.truncate(1 << 20)),
                         ("rewritten_while_read", lambda f: (f.seek(0), f.write(b"new\n" * 1000)))):
        path = root / "logs" / f"{name}.log"
        path.write_bytes((b" 10%|#         | 10/100 [00:01<00:09, 10.0it/s]\r" * 20 + b"\n") * 40000)

        def meddle(path: Path = path, change: Callable[[Any], Any] = change) -> None:
            time.sleep(0.3)
            with path.open("r+b") as f:
                change(f)

        thread = threading.Thread(target=meddle)
        thread.start()
        done = run_cli(home, "diagnose", "--json", str(path))
        thread.join()
        why = diagnosed_cleanly(done)
        outcomes.append(Outcome("log file (diagnose)", name, not why, why))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bad-input-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        outcomes: list[Outcome] = []
        for check in (check_specs, check_campaigns, check_axolotl_configs, check_logs):
            check(root, outcomes)
    families: dict[str, list[Outcome]] = {}
    for o in outcomes:
        families.setdefault(o.family, []).append(o)
    print(f"# bad-input corpus, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {time.monotonic() - started:.0f} s")
    print("family | tried | handled cleanly")
    print("--- | --- | ---")
    for family, items in families.items():
        print(f"{family} | {len(items)} | {sum(o.clean for o in items)}")
    print(f"all | {len(outcomes)} | {sum(o.clean for o in outcomes)}")
    for o in outcomes:
        if not o.clean:
            print(f"NOT CLEAN: {o.family}: {o.case}: {o.why}")
    return 0 if all(o.clean for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
