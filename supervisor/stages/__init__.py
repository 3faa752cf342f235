"""Stage kinds: what prepare, train, merge, transfer and script do around one attempt.

:func:`registry` maps each :class:`~supervisor.domain.types.StageKind` to its implementation of
:class:`~supervisor.stages.base.Kind`, one module each; :func:`kind_for` is the only way the rest of
the supervisor reaches a kind. The kinds' modules are imported on the first call, not with the package:
`submit` reads an axolotl config through :mod:`supervisor.stages.axolotl` and needs none of them.
"""

from __future__ import annotations

from functools import cache

from supervisor.domain.types import StageKind
from supervisor.stages.base import Kind, StageContext, Submission

__all__ = ["Kind", "StageContext", "Submission", "kind_for", "registry"]


@cache
def registry() -> dict[StageKind, Kind]:
    from supervisor.stages.merge import MergeKind
    from supervisor.stages.prepare import PrepareKind
    from supervisor.stages.script import ScriptKind
    from supervisor.stages.train import TrainKind
    from supervisor.stages.transfer import TransferKind

    return {
        StageKind.SCRIPT: ScriptKind(),
        StageKind.PREPARE: PrepareKind(),
        StageKind.TRAIN: TrainKind(),
        StageKind.MERGE: MergeKind(),
        StageKind.TRANSFER: TransferKind(),
    }


def kind_for(kind: StageKind) -> Kind:
    return registry()[kind]
