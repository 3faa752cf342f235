#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs (Debian packages as root, PyPI packages
# into .venv), starts the one-node SLURM cluster, runs lint, type checks and pytest, stops the cluster.
#   deploy/test.sh                 everything
#   deploy/test.sh -m "not axolotl"   any pytest arguments narrow the run
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
command -v rsync >/dev/null || need+=(rsync)
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
if ! deploy/slurm-cluster.sh status >/dev/null 2>&1; then
    deploy/slurm-cluster.sh start
    started_cluster=1
fi
cleanup() { if ((started_cluster)); then deploy/slurm-cluster.sh stop || true; fi; }
trap cleanup EXIT

set +e
.venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
# pytest exits 5 when the selection holds no test: not a failure of the suite.
if [[ $rc -eq 5 ]]; then rc=0; fi
exit $rc
