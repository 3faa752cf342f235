"""SLURM through its command-line clients (sbatch, squeue, scontrol, sacct, scancel).

- :mod:`.states`: what job and node states mean (the table the pyslurm backend shares);
- :mod:`.parse`: pure parsers of the clients' output;
- :mod:`.commands`: the clients' command lines, :func:`run_command` (the only place a process is
  started) and what a failed call means;
- :mod:`.backend`: :class:`SlurmCliCluster`, which client answers which question.

Every name is importable from here too.
"""

from __future__ import annotations

from supervisor.backends.slurm_cli.backend import SlurmCliCluster, resolve_addresses
from supervisor.backends.slurm_cli.commands import (
    ALREADY_GONE_MARKERS,
    DEFAULT_TIMEOUT_S,
    NO_ACCOUNTING_MARKERS,
    NODE_SELECTION_REFUSALS,
    SCONTROL_SHOW_JOBS,
    error_for,
    refuses_node_selection,
    render_sbatch_argv,
    run_command,
    sacct_argv,
    scancel_argv,
    scontrol_show_nodes_argv,
    squeue_argv,
)
from supervisor.backends.slurm_cli.parse import (
    SACCT_FORMAT,
    SQUEUE_FORMAT,
    job_info_from_scontrol,
    parse_exit_code,
    parse_sacct,
    parse_sacct_usage,
    parse_sbatch_output,
    parse_scontrol_jobs,
    parse_scontrol_node_states,
    parse_scontrol_nodes,
    parse_scontrol_record,
    parse_squeue,
    parse_time,
)
from supervisor.backends.slurm_cli.states import (
    HOLD_REASONS,
    PHASES,
    exit_status,
    is_down,
    job_id_key,
    job_info,
    newest,
    phase_of,
)

__all__ = [
    "ALREADY_GONE_MARKERS",
    "DEFAULT_TIMEOUT_S",
    "HOLD_REASONS",
    "NODE_SELECTION_REFUSALS",
    "NO_ACCOUNTING_MARKERS",
    "PHASES",
    "SACCT_FORMAT",
    "SCONTROL_SHOW_JOBS",
    "SQUEUE_FORMAT",
    "SlurmCliCluster",
    "error_for",
    "exit_status",
    "is_down",
    "job_id_key",
    "job_info",
    "job_info_from_scontrol",
    "newest",
    "parse_exit_code",
    "parse_sacct",
    "parse_sacct_usage",
    "parse_sbatch_output",
    "parse_scontrol_jobs",
    "parse_scontrol_node_states",
    "parse_scontrol_nodes",
    "parse_scontrol_record",
    "parse_squeue",
    "parse_time",
    "phase_of",
    "refuses_node_selection",
    "render_sbatch_argv",
    "resolve_addresses",
    "run_command",
    "sacct_argv",
    "scancel_argv",
    "scontrol_show_nodes_argv",
    "squeue_argv",
]
