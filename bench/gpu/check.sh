#!/usr/bin/env bash
# The prepared GPU check (bench/gpu/check.py): our PPO learner beside TRL's PPOTrainer, reward-model training
# and scoring throughput, printed as tables, within 8 minutes on a machine with one GPU and no network.
#
#   bash bench/gpu/check.sh                  # on the GPU machine, from anywhere in the repository
#   bash bench/gpu/check.sh --smoke          # on any machine, on the CPU, tiny sizes (checks the script)
#   bash bench/gpu/check.sh --model DIR --out DIR --skip-trl    # other flags go to check.py (--help)
#
# The machine is expected to have Python 3.12 with torch, transformers and peft. What else the project's
# modules import (pydantic-settings, kafka-python, protobuf, tenacity, prometheus-client; TRL with datasets
# for the TRL rows) travels as wheels in bench/gpu/wheels/, made on a machine with network by
# bench/gpu/wheels.sh; they are installed, without touching torch, into a throwaway venv that sees the
# system's packages. The bundled model comes from $RLHF_STATE_DIR/models/SmolLM2-135M-Instruct (or
# --model); without its weights check.py times the same architecture with random weights and says so.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
WHEELS=bench/gpu/wheels
NEEDED="import pydantic_settings, kafka, google.protobuf, tenacity, prometheus_client"

if ! "$PY" -c "$NEEDED" 2>/dev/null; then
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "missing Python packages ($NEEDED) and no wheels in $WHEELS: run bench/gpu/wheels.sh on a" \
             "machine with network and bring $WHEELS here" >&2
        exit 2
    fi
    VENV=${TMPDIR:-/tmp}/rlhf-gpu-check-venv
    [ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
    # --no-deps: the wheels are the complete list of what is missing; torch and transformers stay the system's.
    "$VENV/bin/python" -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl
    PY="$VENV/bin/python"
    "$PY" -c "$NEEDED"
fi

# check.py stops starting rows after its own budget (420 s); this is the hard stop at 8 minutes less margin.
exec timeout --signal=INT --kill-after=10 470 "$PY" bench/gpu/check.py "$@"
