#!/bin/bash
# Any training stage on Slurm: one srun task per GPU, each task one rank.
#
#   mkdir -p runs && sbatch slurm/train_teacher.sh configs/teacher/CONFIG.yaml [key=value ...]
#   sbatch slurm/distill.sh configs/distill/CONFIG.yaml distill.teacher=runs/TEACHER [key=value ...]
#   sbatch slurm/stage.sh MODULE CONFIG [key=value ...]           # any `python -m MODULE --config` stage
#   sbatch --nodes=4 --time=48:00:00 slurm/train_teacher.sh CONFIG optim.lr=2e-4   # CLI flags beat #SBATCH
#
# slurm/train_teacher.sh (python -m vosr.train) and slurm/distill.sh (python -m vosr.distill) are
# links to this file: the stage follows from the name the job was submitted under. The run folder
# defaults to runs/<config stem>-<job id>, so a requeued job resumes its own run. Jobs inherit the
# submitting shell's environment (set DS_ACCELERATOR, WANDB_MODE, HF_HUB_OFFLINE there).
#
# Preemption / time limit, and why it is reliable:
#   Slurm sends USR1 to this batch shell only (`#SBATCH --signal=B:USR1@180`, or
#   `scancel --signal=USR1 --batch JOBID` by hand). The trap below forwards it to srun, which
#   forwards it to every task. Each rank's PreemptionFlag records it; at the next step boundary
#   all ranks save one checkpoint collectively and exit with 75 (EXIT_PREEMPTED). The task
#   wrapper below notes the 75 in <run_dir>/.preempted-<job>-<restart>; once srun is done this
#   shell sees the note and runs `scontrol requeue`: the job keeps its id, so the requeued run gets the
#   same run_dir and resumes from the newest complete checkpoint (checkpoint.resume=auto).
#   A signal that reaches a rank before its handler is installed (still starting) kills it with
#   128+USR1; the wrapper counts that as preempted too, so the job is requeued, not failed.
#   USR2 is forwarded the same way; `scancel --signal=USR1 --full` (shell + tasks) is fine too.
#   A plain scancel (TERM) is never requeued.
#
# Environment knobs (all optional):
#   VOSR_ROOT          repository root (default: the folder above this script, found through
#                      `scontrol show job`, else $SLURM_SUBMIT_DIR)
#   VOSR_PYTHON        interpreter (default $VOSR_ROOT/.venv/bin/python if present, else python3)
#   VOSR_RUN_DIR       run folder (default $VOSR_RUNS/<config stem>-$SLURM_JOB_ID); a run_dir=...
#                      override among the script arguments wins over both
#   VOSR_RUNS          parent of default run folders (default $VOSR_ROOT/runs)
#   VOSR_MAX_REQUEUES  stop requeueing after this many restarts (default 100)
#   VOSR_SRUN_ARGS     extra srun arguments (word-split), e.g. "--cpu-bind=none"
#   VOSR_MASTER_ADDR   rendezvous address (default: the job's first node, by name if it
#                      resolves, else by its Slurm NodeAddr)
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

# Slurm runs a copy of this file from its spool folder: the job record names the submitted script.
_script=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -n1)
[[ "$_script" == /* ]] || _script="$SLURM_SUBMIT_DIR/$_script"
if [[ -z "${VOSR_ROOT:-}" ]]; then
  VOSR_ROOT=$(cd "$(dirname "$_script")/.." 2>/dev/null && pwd) || VOSR_ROOT=$SLURM_SUBMIT_DIR
  [[ -f "$VOSR_ROOT/slurm/stage.sh" ]] || VOSR_ROOT=$SLURM_SUBMIT_DIR
  export VOSR_ROOT
fi

# Each srun task runs the rank under this wrapper. A rank that saved after preemption exits 75;
# the wrapper records that in a marker file and exits 0, so `--kill-on-bad-exit` (which stops a
# job whose rank crashed instead of letting the others hang in a collective) does not kill ranks
# that are still closing down after the same collective save. The wrapper passes USR1/USR2 on to
# the rank, so the signal arrives whether Slurm signals only the task's first process or every
# process of the step (then the rank gets it twice, which the PreemptionFlag ignores).
VOSR_TASK_WRAPPER='signalled=
"$@" & child=$!
trap "signalled=1; kill -USR1 $child 2>/dev/null" USR1
trap "signalled=1; kill -USR2 $child 2>/dev/null" USR2
while :; do
  wait $child; rc=$?
  if ((rc > 128)) && kill -0 $child 2>/dev/null; then continue; fi
  break
done
# 75: saved after the signal. 128+USR1/USR2 after a forwarded signal: the rank was still starting
# (no handler yet), so nothing since the last checkpoint is lost and the job is requeued all the same.
if ((rc == 75)) || { [[ -n $signalled ]] && ((rc == 138 || rc == 140)); }; then touch "$VOSR_PREEMPT_MARK"; rc=0; fi
exit $rc'

vosr_log() { echo "[vosr-slurm $(date +%H:%M:%S)] $*"; }

vosr_forward_signal() {  # trap handler: pass the signal on to the srun step (and so to all ranks)
  vosr_log "received $1: forwarding to srun (pid ${VOSR_SRUN_PID:-none}) for checkpoint + requeue"
  if [[ -n "${VOSR_SRUN_PID:-}" ]]; then kill -s "$1" "$VOSR_SRUN_PID" 2>/dev/null || true; fi
}

vosr_python() {
  if [[ -n "${VOSR_PYTHON:-}" ]]; then echo "$VOSR_PYTHON"
  elif [[ -x "$VOSR_ROOT/.venv/bin/python" ]]; then echo "$VOSR_ROOT/.venv/bin/python"
  else command -v python3
  fi
}

vosr_run_dir() {  # vosr_run_dir CONFIG [overrides...]: the run folder this job writes
  local config=$1 arg stem
  shift
  for arg in "$@"; do
    if [[ "$arg" == run_dir=* ]]; then echo "${arg#run_dir=}"; return; fi
  done
  if [[ -n "${VOSR_RUN_DIR:-}" ]]; then echo "$VOSR_RUN_DIR"; return; fi
  stem=$(basename "$config")
  stem=${stem%.*}
  echo "${VOSR_RUNS:-$VOSR_ROOT/runs}/$stem-${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}"
}

vosr_export_world() {
  # The trainer reads SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID; torchrun variables would win, so drop any.
  unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE
  # The first node's name, or its NodeAddr (the address slurmd is reached at) when the name does
  # not resolve (virtual nodes, names that are not host names). Same rule as vosr.launch.
  local first addr=
  first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
  if ! getent hosts "$first" >/dev/null; then
    addr=$(scontrol show node "$first" 2>/dev/null | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n1)
  fi
  MASTER_ADDR=${VOSR_MASTER_ADDR:-${addr:-$first}}
  MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
  export MASTER_ADDR MASTER_PORT
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
  export PYTHONUNBUFFERED=1
}

vosr_wait_srun() {  # wait for srun even when traps interrupt `wait`; sets VOSR_RC
  VOSR_RC=0
  while true; do
    wait "$VOSR_SRUN_PID" && VOSR_RC=0 || VOSR_RC=$?
    # `wait` returns >128 when a trapped signal arrives; srun is then still running.
    if ((VOSR_RC > 128)) && kill -0 "$VOSR_SRUN_PID" 2>/dev/null; then continue; fi
    break
  done
}

vosr_run_stage() {  # vosr_run_stage MODULE CONFIG [key=value ...]
  local module=$1
  if (($# < 2)); then
    echo "usage: sbatch slurm/{train_teacher,distill}.sh CONFIG [key=value ...]  (for $1)" >&2
    echo "       sbatch slurm/stage.sh MODULE CONFIG [key=value ...]" >&2
    return 2
  fi
  shift
  local config=$1 python run_dir
  shift
  python=$(vosr_python)
  run_dir=$(vosr_run_dir "$config" "$@")
  vosr_export_world
  vosr_log "job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: $module on ${SLURM_NTASKS} tasks," \
           "nodes ${SLURM_JOB_NODELIST}, master ${MASTER_ADDR}:${MASTER_PORT}, run_dir $run_dir"
  mkdir -p "$run_dir"
  export VOSR_PREEMPT_MARK="$run_dir/.preempted-${SLURM_JOB_ID}-${SLURM_RESTART_COUNT:-0}"
  rm -f "$VOSR_PREEMPT_MARK"
  trap 'vosr_forward_signal USR1' USR1
  trap 'vosr_forward_signal USR2' USR2
  # shellcheck disable=SC2086  # VOSR_SRUN_ARGS is meant to be word-split
  srun --kill-on-bad-exit=1 ${VOSR_SRUN_ARGS:-} bash -c "$VOSR_TASK_WRAPPER" vosr-task \
    "$python" -m "$module" --config "$config" "run_dir=$run_dir" "$@" &
  VOSR_SRUN_PID=$!
  vosr_wait_srun
  trap - USR1 USR2
  vosr_log "srun exited with $VOSR_RC"
  if [[ -e "$VOSR_PREEMPT_MARK" ]]; then
    rm -f "$VOSR_PREEMPT_MARK"
    if ((${SLURM_RESTART_COUNT:-0} >= ${VOSR_MAX_REQUEUES:-100})); then
      vosr_log "preempted, but already restarted ${SLURM_RESTART_COUNT} times (VOSR_MAX_REQUEUES): giving up"
      return 75
    fi
    vosr_log "preempted (checkpoint saved, or still starting): requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    return 0
  fi
  return "$VOSR_RC"
}

case "$(basename "$_script")" in
  train_teacher.sh) vosr_run_stage vosr.train "$@" ;;
  distill.sh) vosr_run_stage vosr.distill "$@" ;;
  *) vosr_run_stage "$@" ;;
esac
