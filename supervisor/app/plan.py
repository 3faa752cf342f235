"""`supervisor plan SPEC`: what submitting a run or campaign spec would do, with nothing submitted or written.

Each stage's first attempt is prepared by its own kind, as the daemon would, in a scratch directory that
stands in for the run's workdir (``StageContext.dry_run``: no checkpoint is moved aside, no prepared data
cleaned), and reported with the scratch path replaced by the real one: the sbatch command line, the rendered
script, and the derived axolotl config as a diff from the user's file. Prepares that runs would share are
grouped as the daemon groups them (the same share key). Where the cluster answers, each stage's partition,
account and QoS are checked against ``sinfo`` and ``sacctmgr``; anything it would refuse is a problem.
"""

from __future__ import annotations

import difflib
import getpass
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from supervisor.app import campaigns
from supervisor.domain.errors import ClusterError, SupervisorError
from supervisor.domain.spec import RunSpec, StageSpec
from supervisor.domain.types import SubmitRequest
from supervisor.stages import StageContext, axolotl, kind_for

UID_PLACEHOLDER = "<uid>"  # the job name's random part, drawn at submit


@dataclass(frozen=True)
class ClusterFacts:
    """What the cluster accepts; a None field was not checked, ``why_not`` says why."""

    partitions: frozenset[str] | None = None
    accounts: dict[str, frozenset[str]] | None = None  # account -> QoS allowed in it
    why_not: tuple[str, ...] = ()


def ask_cluster() -> ClusterFacts:
    """The facts from the SLURM clients on this host; each one that does not answer is left unchecked."""
    from supervisor.backends.slurm_cli import facts

    partitions = accounts = None
    why_not = []
    try:
        partitions = facts.partitions()
    except ClusterError as exc:
        why_not.append(f"partitions not checked: {exc}")
    try:
        accounts = facts.associations(getpass.getuser())
    except ClusterError as exc:
        why_not.append(f"accounts and QoS not checked: {exc}")
    return ClusterFacts(partitions, accounts, tuple(why_not))


def plan(spec_path: Path, backend_default: str, cluster: Callable[[], ClusterFacts] | None = ask_cluster
         ) -> dict[str, Any]:
    """The plan as a JSON-ready dictionary. SpecError for a spec ``submit`` would refuse."""
    spec_path = Path(spec_path)
    submitted = campaigns.read(spec_path, backend_default)  # exactly what `submit` validates
    campaign = submitted.campaign
    facts = cluster() if cluster is not None else ClusterFacts(why_not=("the cluster was not asked (--offline)",))
    problems: list[dict[str, str | None]] = []
    runs = [_run(spec, spec_path, submitted.backends[spec.name], facts, problems) for spec in submitted.specs]
    return {
        "spec": str(spec_path.resolve()),
        "campaign": campaign.campaign if campaign else None,
        **(campaign.settings() if campaign else {}),
        "runs": runs,
        "shared_prepares": _shared(submitted),
        "cluster": {"checked": facts.partitions is not None or facts.accounts is not None,
                    "partitions": sorted(facts.partitions) if facts.partitions is not None else None,
                    "not_checked": list(facts.why_not)},
        "problems": problems,
    }


def _run(spec: RunSpec, spec_path: Path, backend: str, facts: ClusterFacts,
         problems: list[dict[str, str | None]]) -> dict[str, Any]:
    stages = []
    with tempfile.TemporaryDirectory(prefix="supervisor-plan-") as scratch:
        for stage in spec.stages:
            stages.append(_stage(spec, stage, spec_path, backend, Path(scratch), problems))
            problems.extend(_cluster_problems(spec.name, stage, facts))
    return {"name": spec.name, "backend": backend, "workdir": str(spec.workdir), "stages": stages}


def _stage(spec: RunSpec, stage: StageSpec, spec_path: Path, backend: str, scratch: Path,
           problems: list[dict[str, str | None]]) -> dict[str, Any]:
    workdir = spec.workdir or spec_path.resolve().parent / "runs" / spec.name  # run_spec always resolves one
    real = _unscratch(scratch, workdir)
    kind = kind_for(stage.kind)
    ctx = StageContext(run=spec.name, spec=stage, attempt=1, workdir=scratch, axolotl_config=spec.axolotl_config,
                       venv=spec.venv, merged_dir=spec.merged_dir, base_dir=spec_path.resolve().parent,
                       dry_run=True)
    out: dict[str, Any] = {"name": stage.name, "kind": stage.kind.value}
    try:
        sub = kind.prepare(ctx)
    except (SupervisorError, OSError) as exc:
        problems.append({"run": spec.name, "stage": stage.name, "field": None, "problem": real(str(exc))})
        return {**out, "runs_on": None, "argv": None, "script": None, "axolotl_config_diff": None}
    local = kind.runs_locally(stage) or backend == "local"
    script = Path(real(str(sub.script))) if sub.script is not None else None
    request = SubmitRequest(
        tag=f"{spec.name}.{stage.name}.1.{UID_PLACEHOLDER}", workdir=workdir,
        log_pattern=str(workdir / "logs" / f"{stage.name}-1-%j.log"), script=script, command=sub.command,
        sbatch_args=(*stage.sbatch_args, *sub.sbatch_args))
    if local:
        argv = list(sub.command) if sub.command is not None else [str(script)]
    else:
        from supervisor.backends.slurm_cli import render_sbatch_argv

        argv = render_sbatch_argv(request)
    return {
        **out,
        "runs_on": "this host" if local else "cluster",
        "argv": argv,
        "script": real(sub.script.read_text()) if sub.script is not None else None,
        "axolotl_config_diff": _diff(spec.axolotl_config, sub.derived_config, real),
        "resume_from": str(sub.resume_from) if sub.resume_from else None,
        "would_move_aside": [str(p) for p in sub.moved_aside],
    }


def _unscratch(scratch: Path, workdir: Path) -> Callable[[str], str]:
    def real(text: str) -> str:
        return text.replace(str(scratch), str(workdir))

    return real


def _diff(user: Path | None, derived: Path | None, real: Callable[[str], str]) -> str | None:
    """What the job's config changes in the user's: both written the way derived configs are, so the diff
    holds the changed keys only (comments and layout of the user's file are not part of it)."""
    if user is None or derived is None:
        return None
    ours = yaml.safe_dump(axolotl.read_raw(user), sort_keys=False)
    lines = difflib.unified_diff(ours.splitlines(keepends=True), real(derived.read_text()).splitlines(keepends=True),
                                 fromfile=str(user), tofile=real(str(derived)), n=1)
    return "".join(lines)


def _cluster_problems(run: str, stage: StageSpec, facts: ClusterFacts) -> list[dict[str, str | None]]:
    found: list[dict[str, str | None]] = []

    def problem(field: str, text: str) -> None:
        found.append({"run": run, "stage": stage.name, "field": field, "problem": text})

    if facts.partitions is not None and stage.partition and stage.partition not in facts.partitions:
        problem("partition", f"partition {stage.partition!r} does not exist on this cluster "
                             f"(it has: {', '.join(sorted(facts.partitions))})")
    if facts.accounts is not None and stage.account and stage.account not in facts.accounts:
        problem("account", f"account {stage.account!r} is not one you may use here "
                           f"(yours: {', '.join(sorted(facts.accounts)) or 'none'})")
    elif facts.accounts is not None and stage.qos:
        allowed = facts.accounts.get(stage.account, frozenset()) if stage.account else \
            frozenset().union(*facts.accounts.values())
        if stage.qos not in allowed:
            problem("qos", f"QoS {stage.qos!r} is not allowed" + (f" in account {stage.account!r}"
                                                                  if stage.account else "")
                    + f" (allowed: {', '.join(sorted(allowed)) or 'none'})")
    return found


def _shared(submitted: campaigns.Submitted) -> list[dict[str, Any]]:
    """Groups of two or more runs whose prepare stages prepare the same dataset: the first one prepares."""
    groups: dict[str, dict[str, Any]] = {}
    for name in submitted.names:
        for stage, (key, prepared) in submitted.shares[name].items():
            group = groups.setdefault(key, {"dataset_prepared_path": prepared, "runs": []})
            group["runs"].append(f"{name}.{stage}")
    return [{**g, "prepared_by": g["runs"][0]} for g in groups.values() if len(g["runs"]) > 1]


def render_text(p: dict[str, Any]) -> str:
    """The plan for a terminal: per run and stage the command line, the script and the config diff."""
    lines = [f"plan for {p['spec']}" + (f" (campaign {p['campaign']})" if p["campaign"] else "")]
    if p["campaign"]:
        lines.append(f"max_live_jobs: {p.get('max_live_jobs')}; budget: {p.get('budget')}; "
                     f"allocation_node_hours: {p.get('allocation_node_hours')}")
    for run in p["runs"]:
        lines += ["", f"== run {run['name']} ({run['backend']}), workdir {run['workdir']}"]
        for stage in run["stages"]:
            lines += ["", f"-- stage {stage['name']} ({stage['kind']}) on {stage['runs_on']}"]
            if stage["argv"]:
                lines.append("$ " + " ".join(stage["argv"]))
            if stage.get("would_move_aside"):
                lines.append("would move aside: " + ", ".join(stage["would_move_aside"]))
            if stage["script"]:
                lines += ["", *("    " + line for line in stage["script"].splitlines())]
            if stage["axolotl_config_diff"]:
                lines += ["", *("    " + line for line in stage["axolotl_config_diff"].splitlines())]
    lines.append("")
    for group in p["shared_prepares"]:
        lines.append(f"one prepare for {', '.join(group['runs'])}: {group['prepared_by']} prepares "
                     f"{group['dataset_prepared_path']}, the others wait and use it")
    lines += [f"note: {why}" for why in p["cluster"]["not_checked"]]
    for item in p["problems"]:
        where = f"{item['run']}.{item['stage']}" + (f".{item['field']}" if item["field"] else "")
        lines.append(f"problem: {where}: {item['problem']}")
    lines.append(f"{len(p['problems'])} problem(s); nothing was submitted or written")
    return "\n".join(lines) + "\n"
