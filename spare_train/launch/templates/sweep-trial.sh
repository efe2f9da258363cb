#!/bin/bash
# One wandb sweep trial as an srun step. sweep-agents.sbatch puts this script first on PATH as
# `spare-train`, so the agent's `spare-train fit --config RECIPE --key=value …` comes here: it prints
# the trial's resolved recipe, then runs it on every task of the allocation, in a folder named
# after the wandb run (where a preempted, requeued trial finds its checkpoint again).
set -euo pipefail
root="${SWEEP_RUNS_DIR}/${WANDB_RUN_ID:?the wandb agent sets WANDB_RUN_ID}"
args=("$@" --trainer.default_root_dir="$root" --trainer.callbacks+=spare_train.launch.SlurmRequeue)
"$SPARE_TRAIN_PYTHON" -m spare_train.cli "${args[@]}" --print_config
exec srun --kill-on-bad-exit=1 --output="${SWEEP_LOG_DIR}/%x-%A_%a-${WANDB_RUN_ID}-task%t.out" \
    "$SPARE_TRAIN_PYTHON" -m spare_train.cli "${args[@]}"
