"""Which node a failure is evidence against, if any: the rules that keep an exclusion from benching a healthy
allocation.

A node is excluded only on evidence: the line names it (a host that resolves to a node of the attempt's own
allocation), or, when no host is named, it is the job's only node, the one node of the allocation the scheduler
marks down, or the one node the attempt's allocation shares with the stage's previous failed one (a suspect
node). A named host that is not a node of the
allocation is "unresolved" and excluded nowhere. A run excludes at most ``max_excluded_nodes`` nodes at once;
past that a person is told instead.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from supervisor.domain.core.actions import ExcludeNode, Outcome
from supervisor.domain.core.views import NOT_THE_RUNS_FAULT, AttemptView, RunView, StageView
from supervisor.domain.hostlist import expand, is_node_name
from supervisor.domain.types import AttemptState, JobInfo, LogMatch

# Names a node's network interfaces get on the fabric side: ng30903-ib, nid001234-hsn0, cn12-opa, gpu3-eth1.
# Stripped only to find a node of the allocation: a node really named "x-ib" still matches as itself first.
_INTERFACE_SUFFIX = re.compile(r"-(?:ib|hsn|opa|ipoib|eth|bond|mlx|roce|ens|enp)[0-9a-z]*$", re.IGNORECASE)

# Evidence rules, as recorded with each exclusion.
NAMED = "named in the line"
ONLY_NODE = "the job's only node"
SUSPECT = "the one node shared with the previous allocation that failed the same way"
DOWN = "the allocation's one node the scheduler marks down"


@dataclass(frozen=True)
class Judgement:
    """What one failure line says about the nodes: those to exclude, and what to tell about the rest."""

    exclude: tuple[ExcludeNode, ...] = ()
    node: str | None = None  # the SLURM node the line names, when it is one of the allocation's
    unresolved: str | None = None  # a host the line names that is no node of the allocation
    capped: tuple[str, ...] = ()  # nodes with evidence against them, not excluded: the run's cap is reached
    note: str = ""  # why nothing (or what) is excluded, in words

    def data(self) -> dict[str, object]:
        """What the signature's event records about the nodes."""
        out: dict[str, object] = {"node": self.node, "exclusion": self.note}
        if self.unresolved is not None:
            out["unresolved"] = self.unresolved
        if self.capped:
            out["capped"] = list(self.capped)
        return out


def allocation(attempt: AttemptView, job: JobInfo | None) -> tuple[str, ...]:
    """The attempt's nodes, one name each; empty while unknown (or when SLURM printed no valid host list).
    A job releasing its nodes lists only those it still holds: the nodes recorded while it ran come first."""
    polled = job.nodes if job is not None else None
    nodes = (attempt.nodes or polled) if job is not None and job.releasing_nodes else (polled or attempt.nodes)
    if not nodes:
        return ()
    try:
        return tuple(expand(nodes))
    except ValueError:
        return ()


def host_forms(host: str) -> list[str]:
    """The names a host in a log line may stand for, most literal first: as written, without its domain,
    without an interface suffix. ``ng30903-ib.narval.calcul.quebec`` -> that, ``ng30903-ib``, ``ng30903``."""
    host = host.strip().strip("[]()<>,;'\"").rstrip(".").lower()
    if not host:
        return []
    if _is_ip(host):
        return [str(ipaddress.ip_address(host))]  # one spelling per address: fd00:0::2 is fd00::2
    short = host.split(".", 1)[0]
    return list(dict.fromkeys(f for f in (host, short, _INTERFACE_SUFFIX.sub("", short)) if f))


def resolve_host(host: str, nodes: Sequence[str], addresses: Mapping[str, Sequence[str]] | None = None) -> str | None:
    """The node of ``nodes`` that ``host`` names, or None.

    ``addresses`` maps a node name to the names and addresses it answers to (scontrol's NodeAddr and
    NodeHostName, and the IP addresses those resolve to). A host that fits several nodes names none of them.
    """
    forms = host_forms(host)
    by_name = {n.lower(): n for n in nodes}
    for form in forms:
        if form in by_name:
            return by_name[form]
    if not addresses:
        return None
    aliases = {n: {a for alias in addresses.get(n, ()) for a in _alias_forms(alias)} for n in nodes}
    for form in forms:
        fits = [n for n in nodes if form in aliases[n]]
        if fits:
            # Several nodes behind one address (nodes sharing a host) leave the line naming none of them.
            return fits[0] if len(set(fits)) == 1 else None
    return None


def node_name(host: str | None, nodes: Sequence[str] = (), addresses: Mapping[str, Sequence[str]] | None = None,
              ) -> str | None:
    """The SLURM node name ``host`` stands for: the allocation's node it names when ``nodes`` are known, else
    the host without its domain and interface suffix. None for an IP address no known node answers to, or
    for anything that is no plain node name."""
    if not host:
        return None
    if nodes:
        return resolve_host(host, nodes, addresses)
    forms = host_forms(host)
    if not forms or _is_ip(forms[0]):
        return None
    name = forms[-1]
    return name if is_node_name(name) else None


def needs_addresses(host: str | None, nodes: Sequence[str]) -> bool:
    """Whether naming ``host`` takes the allocation's node addresses to resolve (one lookup per attempt)."""
    return bool(host) and bool(nodes) and resolve_host(host or "", nodes) is None


def judge(
    run: RunView, stage: StageView, attempt: AttemptView, cause: LogMatch, job: JobInfo | None,
    addresses: Mapping[str, Sequence[str]] | None = None, down: Collection[str] = (),
) -> Judgement:
    """The exclusions ``cause`` (a resubmit-excluding-a-node signature) is evidence for; ``down``: the nodes the
    scheduler marks down, where they were looked up."""
    nodes = allocation(attempt, job)
    where = f"{cause.signature} in {stage.name} attempt {attempt.number}"
    if cause.node:
        node = resolve_host(cause.node, nodes, addresses)
        if node is None:
            among = f"of the allocation {','.join(nodes)}" if nodes else "known for the job"
            return Judgement(unresolved=cause.node,
                             note=f"{cause.node} (named in the line) is no node {among}: nothing excluded")
        return _capped(run, [(node, NAMED)], where, cause, node=node)
    if len(nodes) == 1:
        return _capped(run, [(nodes[0], ONLY_NODE)], where, cause)
    if not nodes:
        return Judgement(note="no node named and the job's nodes are unknown: nothing excluded")
    dead = [n for n in nodes if n in down]
    if len(dead) == 1:
        return _capped(run, [(dead[0], DOWN)], where, cause)
    previous = _previous_failed(stage, attempt, cause.signature)
    if previous is not None:
        shared = set(nodes) & set(allocation(previous, None))
        if len(shared) == 1:
            return _capped(run, [(shared.pop(), f"{SUSPECT} (attempt {previous.number})")], where, cause)
    return Judgement(note=f"no node named on a {len(nodes)}-node allocation: nothing excluded")


def _capped(
    run: RunView, found: list[tuple[str, str]], where: str, cause: LogMatch, node: str | None = None,
) -> Judgement:
    active = set(run.excluded_nodes)
    room = max(run.max_excluded_nodes - len(active), 0)
    exclude: list[ExcludeNode] = []
    capped: list[str] = []
    for name, rule in found:
        if not is_node_name(name):
            continue
        if name in active or room > 0:
            # Excluding a node again only renews its expiry: it takes no room under the cap.
            room -= name not in active
            exclude.append(ExcludeNode(name, f"{where}: {rule}", evidence=cause.text, line=cause.line))
        else:
            capped.append(name)
    excluded = ", ".join(f"{x.node} ({x.reason.rsplit(': ', 1)[-1]})" for x in exclude)
    note = f"excluded {excluded}" if exclude else ""
    if capped:
        note = (f"{note}; " if note else "") + (
            f"{', '.join(capped)} not excluded: the run already excludes {len(active)} node(s), "
            f"its max_excluded_nodes")
    return Judgement(exclude=tuple(exclude), node=node, capped=tuple(capped), note=note)


def _previous_failed(stage: StageView, attempt: AttemptView, signature: str) -> AttemptView | None:
    """The stage's attempt just before this one, when it failed on an allocation of its own with the same
    signature. Another failure (an NVCC timeout before an NCCL error) says nothing about a node."""
    earlier = [a for a in stage.attempts if a.number < attempt.number]
    if not earlier:
        return None
    last = earlier[-1]
    failed = last.state in (AttemptState.FAILED, AttemptState.CANCELLED) and last.outcome not in (
        Outcome.OPERATOR, Outcome.CANCEL, Outcome.FINISH) and last.cause not in NOT_THE_RUNS_FAULT
    return last if failed and last.nodes and last.cause == signature else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _alias_forms(alias: str) -> set[str]:
    """What a node's address or host name matches: itself, and a host name also without its domain."""
    forms = host_forms(alias)
    return set(forms[:1] if not forms or _is_ip(forms[0]) else forms[:2])
