#!/usr/bin/env bash
# Start the supervisor daemon in a detached tmux session (on a login node), or attach to it.
#   deploy/tmux.sh [--poll 30s]      start (or attach if it is already running)
# Environment: SUPERVISOR_HOME (state dir), SUPERVISOR_SESSION (tmux session name, default "supervisor"),
# SUPERVISOR_BIN (the `supervisor` executable, default: the one on PATH).
set -euo pipefail
session=${SUPERVISOR_SESSION:-supervisor}
bin=${SUPERVISOR_BIN:-$(command -v supervisor || true)}
[[ -n $bin ]] || { echo "tmux.sh: no 'supervisor' on PATH (activate its venv or set SUPERVISOR_BIN)" >&2; exit 1; }
home=${SUPERVISOR_HOME:-$HOME/.local/state/supervisor}
mkdir -p "$home"
if tmux has-session -t "$session" 2>/dev/null; then
    exec tmux attach -t "$session"
fi
# The log goes to a file too, so a lost tmux server does not lose the history (JSON lines: not a TTY).
tmux new-session -d -s "$session" \
    "SUPERVISOR_HOME='$home' '$bin' daemon $* 2>&1 | tee -a '$home/daemon.log'; echo 'daemon exited'; read -r"
echo "supervisor daemon started in tmux session '$session' (attach: tmux attach -t $session)"
