"""What the cluster accepts, for `supervisor plan`: its partitions, and the accounts and QoS a user may use.

Asked only by `plan`, never on the daemon's path. A client that is missing or does not answer is a
ClusterError; the caller reports the check as not done.
"""

from __future__ import annotations

from supervisor.backends.slurm_cli.commands import run_command
from supervisor.domain.errors import ClusterError

SINFO_PARTITIONS = ["sinfo", "--noheader", "--format=%R"]


def partitions() -> frozenset[str]:
    """Every partition name ``sinfo`` lists (hidden ones included)."""
    done = run_command([*SINFO_PARTITIONS, "--all"])
    if done.returncode != 0:
        raise ClusterError(f"sinfo: {done.stderr.strip() or f'exit {done.returncode}'}", permanent=False)
    return parse_partitions(done.stdout)


def parse_partitions(text: str) -> frozenset[str]:
    return frozenset(line.strip().rstrip("*") for line in text.splitlines() if line.strip())


def associations(user: str) -> dict[str, frozenset[str]]:
    """Account -> the QoS the user may use in it, from ``sacctmgr show associations``."""
    done = run_command(["sacctmgr", "--noheader", "--parsable2", "show", "associations", f"user={user}",
                        "format=account,qos"])
    if done.returncode != 0 or "disabled" in done.stderr:
        raise ClusterError(f"sacctmgr: {done.stderr.strip() or f'exit {done.returncode}'}", permanent=False)
    return parse_associations(done.stdout)


def parse_associations(text: str) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        account, qos = line.split("|", 1)
        found.setdefault(account.strip(), set()).update(q for q in qos.strip().split(",") if q)
    return {account: frozenset(qos) for account, qos in found.items()}
