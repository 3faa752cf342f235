#!/usr/bin/env bash
# Creates the venv that plays the team's training environment (torch + axolotl + accelerate).
# The supervisor never imports these; the sbatch jobs and the e2e tests activate this venv.
#
#   deploy/training-venv.sh [VENV_DIR]        (default: $TRAINING_VENV or <repo>/.cache/training-venv)
#
# Idempotent: a stamp file written last marks a complete install; with it present, nothing is done.
# Remove the directory (or the stamp) to reinstall.
set -euo pipefail

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
AXOLOTL_VERSION="${AXOLOTL_VERSION:-0.19.0}"
PYTHON="${PYTHON:-python3.11}"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${TRAINING_VENV:-$repo_root/.cache/training-venv}}"
stamp="$venv/.training-venv-complete"
want="torch==$TORCH_VERSION axolotl==$AXOLOTL_VERSION"

if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]]; then
    echo "training venv already complete: $venv ($want)"
    exit 0
fi

echo "creating training venv in $venv ($want)"
if [[ ! -x "$venv/bin/python" ]]; then
    "$PYTHON" -m venv "$venv"
fi
rm -f "$stamp"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
# Without the pin, axolotl's resolver is free to pick another torch and drag in GBs of CUDA wheels.
echo "torch==$TORCH_VERSION" >"$constraints"

# torch first and alone: the CPU build on local disk satisfies it, so no CUDA wheels are fetched.
"$venv/bin/pip" install --quiet "torch==$TORCH_VERSION"
"$venv/bin/pip" install --quiet -c "$constraints" "axolotl==$AXOLOTL_VERSION" accelerate

"$venv/bin/python" - <<'EOF'
import accelerate, axolotl, torch
print("torch", torch.__version__, "axolotl", axolotl.__version__, "accelerate", accelerate.__version__)
EOF
command -v "$venv/bin/axolotl" >/dev/null
command -v "$venv/bin/accelerate" >/dev/null

echo "$want" >"$stamp"
echo "training venv complete: $venv"
