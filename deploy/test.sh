#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs (Debian packages as root, PyPI packages
# into .venv), starts a SLURM cluster shaped like the real one (4 nodes, accounting), runs lint, type
# checks and pytest, stops the cluster.
#   deploy/test.sh                 everything
#   deploy/test.sh -m "not axolotl"   any pytest arguments narrow the run
# The cluster lives where deploy/slurm-cluster.sh puts it (SLURM_DEV_DIR, SLURM_DEV_PORT_BASE and
# SLURM_DEV_LINK_ETC=0 run it next to another one). One already running with this layout is reused
# and left running.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_LAYOUT=(--nodes 4 --accounting)

need=()
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
command -v slurmdbd >/dev/null || need+=(slurmdbd)
command -v mariadbd >/dev/null || need+=(mariadb-server)
command -v rsync >/dev/null || need+=(rsync)
# The tmux launcher's test runs a real tmux server; the no-inotify detection test watches a bindfs view.
command -v tmux >/dev/null || need+=(tmux)
command -v bindfs >/dev/null || need+=(bindfs)
# `report --html` is rendered in a real headless browser.
command -v chromium >/dev/null || need+=(chromium)
if ((${#need[@]})); then
    [[ $(id -u) -eq 0 ]] || { echo "test.sh: need root to install ${need[*]}" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING" || true
.venv/bin/pip install -q -e '.[test]' 2>&1 | grep -v "^WARNING" || true
.venv/bin/python -c "import supervisor.app.cli" # fail early if the install did not work

.venv/bin/ruff check supervisor tests bench migrations
.venv/bin/mypy

started_cluster=0
if status=$(deploy/slurm-cluster.sh status 2>/dev/null) && grep -q '^layout: nodes=4 accounting=1 ' <<<"$status"; then
    echo "test.sh: reusing the running cluster" >&2
else
    # Refused (exit 2, with the reason) when a cluster of another layout runs in the same state dir.
    deploy/slurm-cluster.sh start "${CLUSTER_LAYOUT[@]}"
    started_cluster=1
fi
cleanup() { if ((started_cluster)); then deploy/slurm-cluster.sh stop || true; fi; }
trap cleanup EXIT
# Clients find the cluster through SLURM_CONF even where /etc/slurm/slurm.conf is not ours.
eval "$(deploy/slurm-cluster.sh env)"

set +e
.venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
# pytest exits 5 when the selection holds no test: not a failure of the suite.
if [[ $rc -eq 5 ]]; then rc=0; fi
exit $rc
