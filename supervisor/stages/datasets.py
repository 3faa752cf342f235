"""What ``axolotl preprocess`` leaves in ``dataset_prepared_path``: finding it, cleaning it before a retry, and
telling which runs' configs would prepare the same dataset.

Several runs may name one ``dataset_prepared_path`` (the team's four trainings do). A retry therefore
removes only what the failed attempt added: before each attempt the directory's entries are written down
(:func:`snapshot`), and the cleanup before the next one (:func:`clean_after_failed_attempt`) keeps every
entry that was there before, whoever made it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from supervisor.domain.errors import StageError

# One directory per dataset hash (md5) and the file lock trio of axolotl.utils.data.lock. Anything
# else there is not ours to delete.
_PREPARED_HASH_DIR = re.compile(r"[0-9a-f]{32}")
_PREPARED_LOCK_FILES = frozenset({"datasets_prep.lock", "datasets_ready.flag", "process_counter.txt"})
# In each prepare attempt's directory: the entries of dataset_prepared_path before the attempt ran.
SNAPSHOT_NAME = "prepared-before.json"


def _axolotls(entry: Path) -> bool:
    return bool(_PREPARED_HASH_DIR.fullmatch(entry.name)) or entry.name in _PREPARED_LOCK_FILES


def snapshot(prepared: Path) -> list[str]:
    """The names of axolotl's entries directly in ``prepared`` now (empty when it does not exist)."""
    if not prepared.is_dir():
        return []
    return sorted(entry.name for entry in prepared.iterdir() if _axolotls(entry))


def write_snapshot(prepared: Path, into: Path) -> Path:
    """Record :func:`snapshot` of ``prepared`` in ``into`` (an attempt's directory), before the attempt runs."""
    into.mkdir(parents=True, exist_ok=True)
    path = into / SNAPSHOT_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"dataset_prepared_path": str(prepared), "entries": snapshot(prepared)}))
    tmp.replace(path)
    return path


def read_snapshot(attempt_dir: Path) -> frozenset[str] | None:
    """The entries recorded before that attempt ran; None when none was recorded (or it is unreadable)."""
    try:
        data = json.loads((attempt_dir / SNAPSHOT_NAME).read_text())
        entries = data["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        return None
    return frozenset(entries)


def dataset_complete(entry: Path) -> bool:
    """A dataset-hash directory holding what ``save_to_disk`` writes last (``state.json``) next to an arrow file."""
    return any(any(state.parent.glob("*.arrow")) for state in entry.rglob("state.json"))


def clean_after_failed_attempt(prepared: Path, before: frozenset[str] | None, *,
                               protect: Sequence[Path] = ()) -> list[Path]:
    """Remove what the failed attempt added to ``prepared``: entries absent from ``before``, its snapshot.

    Without a snapshot (an attempt made by an older version) only dataset-hash directories that are not
    complete are removed: never a finished dataset, which another run may be training from.
    """
    if before is not None:
        return clean_prepared_data(prepared, protect=protect, keep=lambda entry: entry.name in before)
    return clean_prepared_data(prepared, protect=protect,
                               keep=lambda entry: entry.name in _PREPARED_LOCK_FILES or (
                                   not entry.is_symlink() and entry.is_dir() and dataset_complete(entry)))


def clean_prepared_data(prepared: Path, *, protect: Sequence[Path] = (),
                        keep: Callable[[Path], bool] = lambda entry: False) -> list[Path]:
    """Remove axolotl's entries in ``prepared`` that ``keep`` does not keep; return what was removed.

    Only axolotl's own entries (dataset-hash directories and its lock files) directly inside
    ``prepared`` are removed; a symlink is unlinked, never followed. Refuses a ``prepared`` that is
    the filesystem root, the home directory, or contains any ``protect`` path.
    """
    if not prepared.exists():
        return []
    root = prepared.resolve()
    if root == Path(root.anchor) or root == Path.home().resolve():
        raise StageError(f"refusing to clean dataset_prepared_path {prepared}: too broad")
    for path in protect:
        if path.resolve().is_relative_to(root):
            raise StageError(f"refusing to clean dataset_prepared_path {prepared}: it contains {path}")
    removed = []
    for entry in sorted(root.iterdir()):
        if keep(entry):
            continue
        if entry.is_symlink():
            if _PREPARED_HASH_DIR.fullmatch(entry.name) or entry.name in _PREPARED_LOCK_FILES:
                entry.unlink()
                removed.append(entry)
            continue
        if entry.is_dir() and _PREPARED_HASH_DIR.fullmatch(entry.name):
            if entry.resolve().parent != root:
                raise StageError(f"refusing to remove {entry}: not inside {root}")
            shutil.rmtree(entry)
            removed.append(entry)
        elif entry.is_file() and entry.name in _PREPARED_LOCK_FILES:
            entry.unlink()
            removed.append(entry)
    return removed


def prepared_dataset_present(prepared: Path) -> bool:
    """A dataset saved by ``save_to_disk`` (its ``state.json`` and an arrow file) under ``prepared``."""
    if not prepared.is_dir():
        return False
    return any(entry.is_dir() and _PREPARED_HASH_DIR.fullmatch(entry.name) and dataset_complete(entry)
               for entry in prepared.iterdir())


# Config keys that change how a run trains but not the dataset `axolotl preprocess` writes. Two configs equal
# in every other key (and in the resolved dataset_prepared_path and dataset paths) prepare the same data. A key
# missing from this list only costs a second preprocessing; one wrongly on it would train a run on the other
# run's data, so the list holds nothing but optimisation, schedule, precision, parallelism, checkpointing
# and logging settings.
TRAINING_ONLY_KEYS = frozenset({
    "output_dir", "num_epochs", "max_steps", "learning_rate", "lr_scheduler", "lr_scheduler_kwargs",
    "cosine_min_lr_ratio", "warmup_steps", "warmup_ratio", "weight_decay", "optimizer", "optim_args",
    "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "micro_batch_size", "gradient_accumulation_steps",
    "eval_batch_size", "gradient_checkpointing", "gradient_checkpointing_kwargs", "bf16", "fp16", "tf32",
    "flash_attention", "sdp_attention", "xformers_attention", "fsdp", "fsdp_config", "fsdp_version", "deepspeed",
    "save_steps", "saves_per_epoch", "save_strategy", "save_total_limit", "save_only_model",
    "save_safetensors", "eval_steps", "evals_per_epoch", "eval_strategy", "logging_steps", "early_stopping_patience",
    "resume_from_checkpoint", "auto_resume_from_checkpoints", "wandb_project", "wandb_entity", "wandb_name",
    "wandb_run_id", "wandb_mode", "wandb_watch", "wandb_log_model", "mlflow_tracking_uri",
    "mlflow_experiment_name", "use_tensorboard", "hub_model_id", "hub_strategy", "torch_compile",
    "torch_compile_backend", "ddp_timeout", "ddp_bucket_cap_mb", "ddp_broadcast_buffers", "strict",
    "special_tokens_debug", "debug", "liger_rope", "liger_rms_norm", "liger_glu_activation",
    "liger_layer_norm", "liger_fused_linear_cross_entropy", "lora_r", "lora_alpha", "lora_dropout",
    "lora_target_modules", "lora_target_linear", "adapter", "lora_model_dir", "load_in_8bit", "load_in_4bit",
})


def share_key(raw: Mapping[str, Any], prepared: Path, base_dir: Path) -> str:
    """Equal for two configs exactly when they would prepare the same dataset into the same directory."""
    data = {key: value for key, value in raw.items() if key not in TRAINING_ONLY_KEYS}
    data["dataset_prepared_path"] = str(prepared)
    # A relative dataset path means a different file in a run with another base directory.
    data["_base_dir"] = str(base_dir)
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
