#!/usr/bin/env bash
# Start the supervisor daemon in a detached tmux session (on a login node), or attach to it:
# a wrapper around `supervisor tmux`, which writes the session's command for this install.
#   deploy/tmux.sh [--session NAME] [--poll 30s]
# Environment: SUPERVISOR_HOME (state dir), SUPERVISOR_SESSION (tmux session name, default "supervisor"),
# SUPERVISOR_BIN (the `supervisor` executable, default: the one on PATH).
set -euo pipefail
bin=${SUPERVISOR_BIN:-$(command -v supervisor || true)}
[[ -n $bin ]] || { echo "tmux.sh: no 'supervisor' on PATH (activate its venv or set SUPERVISOR_BIN)" >&2; exit 1; }
exec "$bin" tmux "$@"
