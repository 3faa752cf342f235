"""Fixtures for the tests that run the real training tools (axolotl, accelerate, torch).

The training venv is built on first use with ``deploy/training-venv.sh`` (about 2.5 min and 4.3 GB;
idempotent, so a cached ``.cache/training-venv`` costs nothing). Where it cannot be built the tests
skip, except in CI (``CI=true``), where a missing venv must fail the run rather than hide it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TRAINING_VENV = Path(os.environ.get("TRAINING_VENV", REPO / ".cache" / "training-venv"))
STAMP = ".training-venv-complete"
BUILD_TIMEOUT_S = 1800


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def training_venv() -> Path:
    """The venv with torch, axolotl and accelerate; built here when missing."""
    if not (TRAINING_VENV / STAMP).is_file():
        try:
            done = subprocess.run(
                [str(REPO / "deploy" / "training-venv.sh"), str(TRAINING_VENV)],
                capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            _unavailable(f"could not build the training venv at {TRAINING_VENV}: {exc}")
        else:
            if done.returncode != 0:
                _unavailable(
                    f"deploy/training-venv.sh {TRAINING_VENV} exited {done.returncode}:\n"
                    + (done.stdout + done.stderr)[-3000:]
                )
    if not (TRAINING_VENV / STAMP).is_file():
        _unavailable(f"no complete training venv at {TRAINING_VENV} (stamp {STAMP} missing)")
    return TRAINING_VENV


@pytest.fixture(scope="session")
def assets(training_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a local BPE tokenizer and a chat JSONL dataset (make_assets.py)."""
    out = tmp_path_factory.mktemp("assets")
    done = subprocess.run(
        [str(training_venv / "bin" / "python"), str(HERE / "make_assets.py"), str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"make_assets.py exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}"
    return out
