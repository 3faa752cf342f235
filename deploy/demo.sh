#!/usr/bin/env bash
# The demo: a four-stage pipeline (prepare -> train -> merge -> transfer) of small job scripts, run to
# completion on the embedded `local` backend. Training's first attempt hangs after an NVCC timeout, the
# second hangs in the end-of-training NCCL watchdog: watch the supervisor resubmit, then move on to merge.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if ! command -v rsync >/dev/null && [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null
fi
if [[ ! -x .venv/bin/supervisor ]]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi
.venv/bin/pip install -q -e . 2>&1 | grep -v "^WARNING" || true
export SUPERVISOR_HOME=$root/demo-home
rm -rf "$SUPERVISOR_HOME" runs/demo
sv=.venv/bin/supervisor
$sv submit jobs/demo/pipeline.yaml
$sv daemon --poll 2s --exit-when-idle
$sv show demo
$sv status
