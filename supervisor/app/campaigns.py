"""Registering what `submit` is given (a run spec or a campaign spec), and the prepare stages runs share.

A prepare stage's share key and resolved ``dataset_prepared_path`` are taken at registration from the
axolotl config as it is then (stages/datasets.py ``share_key``): runs whose keys are equal prepare once.
"""

from __future__ import annotations

from pathlib import Path

from supervisor.domain.campaign import is_campaign, load_campaign
from supervisor.domain.spec import RunSpec, read_mapping, run_spec
from supervisor.domain.types import StageKind
from supervisor.stages import axolotl, datasets
from supervisor.store.repository import Repository


def shares_of(spec: RunSpec, spec_path: Path) -> dict[str, tuple[str, str]]:
    """Prepare stage -> (share key, resolved dataset_prepared_path) for the run's prepare stages."""
    prepares = [s.name for s in spec.stages if s.kind is StageKind.PREPARE]
    if not prepares or spec.axolotl_config is None:
        return {}
    base_dir = Path(spec_path).resolve().parent
    config = axolotl.load_config(spec.axolotl_config, base_dir=base_dir)
    key = datasets.share_key(config.raw, config.dataset_prepared_path, base_dir)
    return {name: (key, str(config.dataset_prepared_path)) for name in prepares}


def register(repo: Repository, spec_path: Path, backend_default: str) -> list[str]:
    """Register the run, or every run of the campaign, in ``spec_path``; the names registered, in order."""
    data = read_mapping(spec_path, "a YAML mapping: a run (`name`, `stages`) or a campaign (`campaign`, `runs`)")
    if not is_campaign(data):
        spec = run_spec(Path(spec_path), data)
        repo.register(spec, spec_path, spec.backend or backend_default, shares_of(spec, spec_path))
        return [spec.name]
    campaign, specs = load_campaign(spec_path, data)
    repo.register_campaign(
        campaign.campaign, campaign.settings(), specs, spec_path,
        backend_of={s.name: s.backend or backend_default for s in specs},
        shares={s.name: shares_of(s, spec_path) for s in specs},
    )
    return [s.name for s in specs]
