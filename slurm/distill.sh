#!/bin/bash
# One-step student distillation (python -m vosr.distill) on Slurm: one srun task per GPU, each task one rank.
#
#   mkdir -p runs && sbatch slurm/distill.sh configs/distill/CONFIG.yaml [key=value ...]
#   sbatch --nodes=4 --time=48:00:00 slurm/distill.sh CONFIG optim.lr=2e-4   # CLI flags beat #SBATCH
#
# The run folder defaults to runs/<config stem>-<job id>, so a requeued job resumes its own run.
# On USR1 (180 s before the time limit, or `scancel --signal=USR1 --batch JOBID`) every rank
# saves a checkpoint at the next step, the step exits 75 and the job requeues itself; see
# slurm/common.sh for the mechanics and the env knobs (VOSR_PYTHON, VOSR_RUN_DIR, VOSR_RUNS,
# VOSR_ROOT, VOSR_MAX_REQUEUES, VOSR_SRUN_ARGS). Jobs inherit the submitting shell's
# environment (set DS_ACCELERATOR, WANDB_MODE, HF_HUB_OFFLINE there).
#SBATCH --job-name=vosr-distill
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=runs/slurm-%j.out

# Slurm runs a copy of this file from its spool folder: find the repository through the job record.
if [[ -z "${VOSR_ROOT:-}" ]]; then
  _cmd=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -n1)
  [[ "$_cmd" == /* ]] || _cmd="$SLURM_SUBMIT_DIR/$_cmd"
  VOSR_ROOT=$(cd "$(dirname "$_cmd")/.." 2>/dev/null && pwd) || VOSR_ROOT=$SLURM_SUBMIT_DIR
  [[ -f "$VOSR_ROOT/slurm/common.sh" ]] || VOSR_ROOT=$SLURM_SUBMIT_DIR
  export VOSR_ROOT
fi
# shellcheck source=slurm/common.sh
source "$VOSR_ROOT/slurm/common.sh"
vosr_run_stage vosr.distill "$@"
