#!/usr/bin/env bash
# The whole pipeline, small, on the CPU, on the installed wallpaper photos (about 310 CPU-seconds, 4.5 minutes on 2 cores):
#   pack -> degraded-pair preview -> tiny pixel-space teacher -> one-step student -> infer -> evaluate
#
#   bash scripts/setup.sh && bash scripts/demo.sh
#
# Everything lands in $VOSR_DEMO_DIR (default runs/demo); a re-run reuses finished stages
# (shards are skipped by pack, runs resume from their checkpoints). Knobs:
#   VOSR_DEMO_TEACHER_STEPS (default 1500), VOSR_DEMO_STUDENT_STEPS (default 300),
#   VOSR_PYTHON (default .venv/bin/python). The tiny models (0.16M parameters, ~3 CPU-minutes of
#   training) are far from a real SR model, but beat bicubic on LPIPS on photos they never saw;
#   benchmarks/learn.py measures the same recipe more thoroughly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VOSR_PYTHON:-.venv/bin/python}
OUT=${VOSR_DEMO_DIR:-runs/demo}
TEACHER_STEPS=${VOSR_DEMO_TEACHER_STEPS:-1500}
STUDENT_STEPS=${VOSR_DEMO_STUDENT_STEPS:-300}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1 DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export WANDB_SILENT=true
# One torch thread beside the one data worker: on a 2-core machine more threads only spin against each other.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
stage() { echo; echo "=== $* ==="; }

stage "1/6 pack the wallpaper photos into WebDataset shards ($OUT/shards)"
mapfile -t WALLPAPERS < <("$PY" data_tools/photos.py wallpapers)
# Downscaled to short sides 512 and 320 (Lanczos): small crops of multi-megapixel wallpapers would be
# nearly flat, unlike the photos the model is tested on.
"$PY" data_tools/pack.py "${WALLPAPERS[@]}" --out "$OUT/shards" --min-size 512 --short-side 512,320 \
  --max-samples 128 --workers 2

stage "2/6 stream + degrade: LR | LR upsampled | HR pairs"
"$PY" data_tools/preview.py --shards "$OUT/shards" --out "$OUT/pairs.png"

# Small but real: pixel space (no pretrained autoencoder; 4x4 space-to-depth), a width-64 transformer
# that predicts x0 as a residual over its LR condition (model.prediction=x_residual: a token narrower
# than its 8x8 pixels still passes the LR's detail through), a random-weight DINOv2-shaped encoder,
# 64-px HR crops -> 16-px LR, the Real-ESRGAN degradation with 70% plain bicubic LR images, condition
# noise sized for pixels (flow.cond_noise_mean=7), guidance s = 2 for the teacher and the student it
# teaches (benchmarks/learn.py's CPU recipe, README: what to expect), one process with DeepSpeed.
COMMON=("data.train=[{shards: '$OUT/shards'}]" data.crop_size=64 data.batch_size=8 data.num_workers=1
        data.shuffle_buffer_mb=4 data.crops_per_image=16 data.val="$OUT/shards" data.val_size=4
        log.every_steps=100 checkpoint.every_steps=500 autoencoder.pixel_unshuffle=4
        model.prediction=x_residual degradation.bicubic_prob=0.7 flow.cond_noise_mean=7 flow.guidance=2.0)

stage "3/6 teacher: flow matching with partial conditioning ($TEACHER_STEPS steps)"
"$PY" -m vosr.train --config configs/tiny.yaml "${COMMON[@]}" run_dir="$OUT/teacher" \
  optim.max_steps="$TEACHER_STEPS" optim.lr=2e-3 optim.ema_decay=0.999 optim.ema_warmup=true \
  log.val_every="$TEACHER_STEPS"

stage "4/6 distil the teacher into a one-step student ($STUDENT_STEPS steps)"
"$PY" -m vosr.distill --config configs/tiny_distill.yaml "${COMMON[@]}" run_dir="$OUT/student" \
  distill.teacher="$OUT/teacher" optim.max_steps="$STUDENT_STEPS" optim.lr=1e-4 optim.ema_decay=0.999 \
  distill.guidance=2.0 log.val_every="$STUDENT_STEPS"

stage "5/6 upscale held-out photos (scikit-image + sporco, never trained on) x4"
"$PY" data_tools/photos.py heldout --out "$OUT/heldout"
"$PY" -m vosr.evaluate make-set --hr "$OUT/heldout" --out "$OUT/evalset" --protocol realesrgan --crop 256 --seed 0
"$PY" -m vosr.infer -c "$OUT/student/ema.safetensors" -i "$OUT/evalset/LR" -o "$OUT/sr_student" --steps 1
"$PY" -m vosr.infer -c "$OUT/teacher/ema.safetensors" -i "$OUT/evalset/LR" -o "$OUT/sr_teacher" --steps 25 \
  --guidance 2.0
"$PY" - "$OUT/evalset/LR" "$OUT/sr_bicubic" <<'PY'
import sys
from pathlib import Path
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
for p in sorted(src.glob("*.png")):  # the baseline: PIL bicubic x4, as the sheets draw it
    lr = Image.open(p).convert("RGB")
    lr.resize((lr.width * 4, lr.height * 4), Image.BICUBIC).save(dst / p.name)
PY

stage "6/6 score against the HR photos"
for who in bicubic teacher student; do
  "$PY" -m vosr.evaluate score --pred "$OUT/sr_$who" --gt "$OUT/evalset/HR" --lr "$OUT/evalset/LR" \
    --out "$OUT/report_$who" --metrics psnr ssim lpips
done

"$PY" -m vosr.evaluate compare "$OUT/report_bicubic" "$OUT/report_teacher" "$OUT/report_student" \
  --out "$OUT/compare"

echo
echo "degraded training pairs:       $OUT/pairs.png"
echo "teacher / student val grids:   $OUT/teacher/val/  $OUT/student/val/"
echo "comparison sheet (student):    $OUT/report_student/comparison.png"
echo "comparison sheet (teacher):    $OUT/report_teacher/comparison.png"
echo "bicubic | teacher | student:   $OUT/compare/table.md  $OUT/compare/chart.png"
