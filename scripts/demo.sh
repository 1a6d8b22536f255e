#!/usr/bin/env bash
# The whole pipeline, small, on the CPU, on the installed wallpaper photos (a few minutes):
#   pack -> degraded-pair preview -> tiny pixel-space teacher -> one-step student -> infer -> evaluate
#
#   bash scripts/setup.sh && bash scripts/demo.sh
#
# Everything lands in $VOSR_DEMO_DIR (default runs/demo); a re-run reuses finished stages
# (shards are skipped by pack, runs resume from their checkpoints). Knobs:
#   VOSR_DEMO_TEACHER_STEPS (default 300), VOSR_DEMO_STUDENT_STEPS (default 150),
#   VOSR_PYTHON (default .venv/bin/python). The tiny models here show that every stage runs
#   and connects; they are far too small to beat a real SR model (benchmarks/learn.py trains
#   a larger one on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VOSR_PYTHON:-.venv/bin/python}
OUT=${VOSR_DEMO_DIR:-runs/demo}
TEACHER_STEPS=${VOSR_DEMO_TEACHER_STEPS:-300}
STUDENT_STEPS=${VOSR_DEMO_STUDENT_STEPS:-150}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1 DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export WANDB_SILENT=true
mkdir -p "$OUT"
stage() { echo; echo "=== $* ==="; }

stage "1/6 pack the wallpaper photos into WebDataset shards ($OUT/shards)"
mapfile -t WALLPAPERS < <("$PY" data_tools/photos.py wallpapers)
"$PY" data_tools/pack.py "${WALLPAPERS[@]}" --out "$OUT/shards" --min-size 512 --crop-size 1024 \
  --format jpg --quality 95 --max-samples 128 --workers 2

stage "2/6 stream + degrade: LR | LR upsampled | HR pairs"
"$PY" data_tools/preview.py --shards "$OUT/shards" --out "$OUT/pairs.png"

# Small but real: pixel space (no pretrained autoencoder; 2x2 space-to-depth so a width-64
# token can carry its pixels), random-weight DINOv2-shaped encoder, 64-px HR crops -> 16-px LR,
# the full Real-ESRGAN degradation, one process with DeepSpeed.
COMMON=("data.train=[{shards: '$OUT/shards'}]" data.crop_size=64 data.batch_size=8 data.num_workers=1
        data.val="$OUT/shards" data.val_size=4 log.every_steps=25 checkpoint.every_steps=100
        autoencoder.pixel_unshuffle=2)

stage "3/6 teacher: flow matching with partial conditioning ($TEACHER_STEPS steps)"
"$PY" -m vosr.train --config configs/tiny.yaml "${COMMON[@]}" run_dir="$OUT/teacher" \
  optim.max_steps="$TEACHER_STEPS" optim.lr=2e-3 log.val_every="$TEACHER_STEPS"

stage "4/6 distil the teacher into a one-step student ($STUDENT_STEPS steps)"
"$PY" -m vosr.distill --config configs/tiny_distill.yaml "${COMMON[@]}" run_dir="$OUT/student" \
  distill.teacher="$OUT/teacher" optim.max_steps="$STUDENT_STEPS" log.val_every="$STUDENT_STEPS"

stage "5/6 upscale held-out photos (scikit-image + sporco, never trained on) x4"
"$PY" data_tools/photos.py heldout --out "$OUT/heldout"
"$PY" -m vosr.evaluate make-set --hr "$OUT/heldout" --out "$OUT/evalset" --protocol realesrgan --crop 256 --seed 0
"$PY" -m vosr.infer -c "$OUT/student/ema.safetensors" -i "$OUT/evalset/LR" -o "$OUT/sr_student" --steps 1
"$PY" -m vosr.infer -c "$OUT/teacher/ema.safetensors" -i "$OUT/evalset/LR" -o "$OUT/sr_teacher" --steps 25

stage "6/6 score against the HR photos"
for who in student teacher; do
  "$PY" -m vosr.evaluate score --pred "$OUT/sr_$who" --gt "$OUT/evalset/HR" --lr "$OUT/evalset/LR" \
    --out "$OUT/report_$who" --metrics psnr ssim lpips
done

echo
echo "degraded training pairs:       $OUT/pairs.png"
echo "teacher / student val grids:   $OUT/teacher/val/  $OUT/student/val/"
echo "comparison sheet (student):    $OUT/report_student/comparison.png"
echo "comparison sheet (teacher):    $OUT/report_teacher/comparison.png"
echo "scores:                        $OUT/report_student/summary.json  $OUT/report_teacher/summary.json"
