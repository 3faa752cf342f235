"""The interface every stage kind implements, and the values passed to it.

A kind is chosen from :func:`supervisor.stages.registry` by :class:`~supervisor.domain.types.StageKind`;
nothing outside that registry compares a kind. The service calls the hooks around one attempt:
``prepare`` before submitting it (the only hook with side effects), ``work_finished``/``last_saved``
while it runs, ``succeeded`` once its job has ended, ``progress`` on new log text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from supervisor.domain.spec import StageSpec
from supervisor.domain.types import Progress, StageKind


@dataclass(frozen=True)
class StageContext:
    """One attempt of one stage, as the kind sees it."""

    run: str
    spec: StageSpec  # the stage's validated spec entry (typed, never a dict)
    attempt: int  # 1-based
    workdir: Path  # the run's workdir: logs/ and the rendered files live under it
    axolotl_config: Path | None = None
    venv: Path | None = None  # the run's venv; a stage's own `venv` wins
    merged_dir: Path | None = None  # None: <output_dir>/merged
    # The directory the jobs `cd` into and against which relative paths in the axolotl config
    # resolve (the run spec's directory). None: the axolotl config's own directory.
    base_dir: Path | None = None
    # `supervisor plan`: ``prepare`` may write into the attempt's directory (a scratch one) and nothing else:
    # no checkpoint moved aside, no prepared data cleaned.
    dry_run: bool = False

    @property
    def stage(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> StageKind:
        return self.spec.kind


@dataclass(frozen=True)
class Submission:
    """What to start for one attempt: an sbatch script, or a command on the supervisor's host."""

    script: Path | None = None
    command: tuple[str, ...] | None = None
    sbatch_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    derived_config: Path | None = None
    resume_from: Path | None = None  # train: the checkpoint this attempt resumes from
    moved_aside: tuple[Path, ...] = ()  # train: incomplete checkpoints renamed before this attempt
    cleaned: tuple[Path, ...] = ()  # prepare: prepared-data entries removed before this retry


class Kind(Protocol):
    """One stage kind. Implementations live one per module in this package."""

    kind: StageKind

    def runs_locally(self, spec: StageSpec) -> bool:
        """Whether the attempt runs on the supervisor's own host (local backend) instead of the cluster."""
        ...

    def prepare(self, ctx: StageContext) -> Submission:
        """Write what the attempt needs into the workdir and say how to start it. Raises StageError."""
        ...

    def work_finished(self, ctx: StageContext) -> bool:
        """Whether the stage's work is already done while its job still runs (train: final checkpoint)."""
        ...

    def last_saved(self, ctx: StageContext) -> str | None:
        """What the stage saved last (train: the newest checkpoint's name), or None. A different value
        later means new work was saved: a sign of life however quiet the log is."""
        ...

    def succeeded(self, ctx: StageContext, exit_code: int | None, log_tail: str) -> bool:
        """The kind's success rule, applied once the attempt's job has ended."""
        ...

    def progress(self, text: str) -> Progress | None:
        """Kind-specific progress in new log text (transfer: rsync's progress2), or None."""
        ...
