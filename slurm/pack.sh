#!/bin/bash
# Pack image folders / file lists into WebDataset shards with a Slurm job array (one pack.py part per task).
#
# Usage (from the repository root):
#   sbatch --array=0-15 slurm/pack.sh OUT_DIR SRC [SRC ...] [-- pack.py options]
#   e.g. sbatch --array=0-31 --cpus-per-task=32 slurm/pack.sh /shards/hq /data/DIV2K /data/flickr.txt \
#            -- --min-size 512 --crop-size 1024 --crop-stride 768
#
# Each array task packs every N-th sorted input (N = array size) into OUT_DIR/<prefix>-pNNNN-XXXXXX.tar and writes
# OUT_DIR/manifest-partNNNN.json, using $SLURM_CPUS_PER_TASK worker processes. The part that finishes last merges
# all parts into OUT_DIR/manifest.json + sizes.json; task 0 also submits a merge job that depends on the whole
# array (afterok), so the merge happens even if two parts finish at once. Re-submitting the same command after a
# failure or preemption skips the shards that were already finished.
#
# Environment: PYTHON (default: python), VOSR_REPO (default: $SLURM_SUBMIT_DIR), PACK_MERGE_JOB=0 to skip the
# dependent merge job. Check the result with: python data_tools/pack.py --verify --out OUT_DIR --workers 16
#SBATCH --job-name=vosr-pack
#SBATCH --array=0-7
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=pack-%A_%a.out
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: sbatch --array=0-N slurm/pack.sh OUT_DIR SRC [SRC ...] [-- pack.py options]" >&2
  exit 2
fi
OUT_DIR=$1
shift
SRCS=()
while [[ $# -gt 0 && $1 != "--" ]]; do SRCS+=("$1"); shift; done
[[ $# -gt 0 ]] && shift  # drop the "--"; the rest are pack.py options

REPO=${VOSR_REPO:-${SLURM_SUBMIT_DIR:-$(pwd)}}
PYTHON=${PYTHON:-python}
cd "$REPO"

if [[ "${SLURM_ARRAY_TASK_ID:-}" == "${SLURM_ARRAY_TASK_MIN:-0}" && "${PACK_MERGE_JOB:-1}" != 0 \
      && -n "${SLURM_ARRAY_JOB_ID:-}" ]]; then
  sbatch --dependency="afterok:${SLURM_ARRAY_JOB_ID}" --job-name=vosr-pack-merge --cpus-per-task=1 \
    --time=00:30:00 --output="pack-merge-%j.out" --chdir="$REPO" \
    --wrap="$PYTHON data_tools/pack.py --merge-manifests --out '$OUT_DIR'"
fi

# --num-parts / --part come from SLURM_ARRAY_TASK_COUNT / SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN).
srun --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "$PYTHON" data_tools/pack.py "${SRCS[@]}" --out "$OUT_DIR" \
  --workers "${SLURM_CPUS_PER_TASK:-1}" --no-progress "$@"
