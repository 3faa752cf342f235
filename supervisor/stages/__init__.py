"""Stage kinds: what prepare, train, merge, transfer and script do around one attempt.

:data:`REGISTRY` maps each :class:`~supervisor.domain.types.StageKind` to its implementation of
:class:`~supervisor.stages.base.Kind`, one module each; :func:`kind_for` is the only way the rest of
the supervisor reaches a kind.
"""

from __future__ import annotations

from supervisor.domain.types import StageKind
from supervisor.stages.base import Kind, StageContext, Submission
from supervisor.stages.merge import MergeKind
from supervisor.stages.prepare import PrepareKind
from supervisor.stages.script import ScriptKind
from supervisor.stages.train import TrainKind
from supervisor.stages.transfer import TransferKind

__all__ = ["REGISTRY", "Kind", "StageContext", "Submission", "kind_for"]

REGISTRY: dict[StageKind, Kind] = {
    StageKind.SCRIPT: ScriptKind(),
    StageKind.PREPARE: PrepareKind(),
    StageKind.TRAIN: TrainKind(),
    StageKind.MERGE: MergeKind(),
    StageKind.TRANSFER: TransferKind(),
}


def kind_for(kind: StageKind) -> Kind:
    return REGISTRY[kind]
