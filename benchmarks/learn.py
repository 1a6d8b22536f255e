"""Does the stack learn? Train from scratch on the wallpaper photos, score on photos it never saw.

1. pack the installed wallpapers into shards (``data_tools/pack.py``);
2. train a pixel-space teacher from scratch (``vosr.train``; no pretrained part at all:
   ``autoencoder.kind=pixel``, ``semantic.kind=none``), then its one-step student
   (``vosr.distill``);
3. build two held-out ×4 sets from the lossless scikit-image + sporco photos at a fixed seed
   (``vosr.evaluate make-set``): the Real-ESRGAN degradation and plain bicubic;
4. upscale them with the teacher (25 Euler steps) and the student (1 step) (``vosr.infer``),
   and score PSNR/SSIM (Y, border = 4) and LPIPS against bicubic upsampling.

    python benchmarks/learn.py                                  # GPU: ~10 min teacher + ~5 min student
    python benchmarks/learn.py --teacher-steps 300 --student-steps 100 --width 64 --depth 2   # CPU, tiny

Every stage is the user-facing command, run as a subprocess; all outputs stay in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from data_tools.photos import wallpaper_dirs, write_heldout
from vosr.data.degrade import upsample_lr
from vosr.images import list_images, read_image, save_image, to_tensor, to_uint8

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "learn")
    p.add_argument("--teacher-steps", type=int, default=12000 if gpu else 300)
    p.add_argument("--student-steps", type=int, default=3000 if gpu else 100)
    p.add_argument("--width", type=int, default=384 if gpu else 64, help="transformer width")
    p.add_argument("--depth", type=int, default=12 if gpu else 2, help="transformer blocks")
    p.add_argument("--heads", type=int, default=6 if gpu else 2)
    p.add_argument("--unshuffle", type=int, default=4 if gpu else 2,
                   help="pixel space: space-to-depth factor (tokens carry unshuffle^2 x patch^2 x 3 values)")
    p.add_argument("--guidance", type=float, default=1.0, help="teacher sampling guidance s")
    p.add_argument("--distill-guidance", type=float, default=None,
                   help="omega of the teacher velocity the student learns (default: --guidance, so the student "
                        "is compared with the teacher it imitates; METHOD.md's 0.5 suits a fully trained teacher)")
    p.add_argument("--crop", type=int, default=256 if gpu else 64, help="HR training crop side")
    p.add_argument("--batch", type=int, default=32 if gpu else 8, help="micro-batch")
    p.add_argument("--lr", type=float, default=3e-4 if gpu else 2e-3)
    p.add_argument("--eval-crop", type=int, default=512 if gpu else 256, help="held-out HR centre crop")
    p.add_argument("--workers", type=int, default=6 if gpu else 1, help="data workers")
    return p.parse_args(argv)


def run(cmd: list[str], log: Path) -> float:
    """Run a stage, its output appended to ``log``; returns seconds; raises with the log's tail on failure."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"stage failed ({code}): {' '.join(cmd)}\n" + log.read_text()[-3000:])
    return time.perf_counter() - t0


def bicubic_folder(lr_dir: Path, out: Path) -> None:
    """Bicubic ×4 of every LR image (the baseline row)."""
    for path in list_images(lr_dir):
        lr = to_tensor(read_image(path).rgb)
        up = upsample_lr(lr, (lr.shape[-2] * 4, lr.shape[-1] * 4))  # the model's own LR upsampling
        save_image(out / f"{path.stem}.png", to_uint8(up))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "learn.log"
    py = sys.executable
    env_note = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"# learn: pixel-space teacher {args.depth}x{args.width}, {args.teacher_steps} + {args.student_steps} "
          f"steps at batch {args.batch}, {args.crop}^2 crops, on {env_note}; log {log}", flush=True)
    times = {}
    distill_guidance = args.guidance if args.distill_guidance is None else args.distill_guidance
    times["pack"] = run([py, "data_tools/pack.py", *map(str, wallpaper_dirs()), "--out", str(out / "shards"),
                         "--min-size", "512", "--crop-size", "1024", "--format", "jpg", "--quality", "95",
                         "--max-samples", "128", "--workers", str(max(1, min(8, os.cpu_count() or 1))),
                         "--no-progress"], log)
    common = [f"data.train=[{{shards: '{out / 'shards'}'}}]", f"data.crop_size={args.crop}",
              f"data.batch_size={args.batch}", f"data.num_workers={args.workers}", "data.shuffle_buffer_mb=64",
              f"model.hidden_size={args.width}", f"model.depth={args.depth}", f"model.num_heads={args.heads}",
              "semantic.kind=none", f"autoencoder.pixel_unshuffle={args.unshuffle}",
              "log.every_steps=50", "log.progress=false", "log.val_every=0",
              "engine.precision=" + ("bf16" if torch.cuda.is_available() else "fp32"), "checkpoint.every_steps=1000"]
    times["teacher"] = run([py, "-m", "vosr.train", "--config", "configs/tiny.yaml", *common,
                            f"run_dir={out / 'teacher'}", f"optim.max_steps={args.teacher_steps}",
                            f"optim.lr={args.lr}", "optim.ema_decay=0.999", "optim.warmup_steps=100"], log)
    times["student"] = run([py, "-m", "vosr.distill", "--config", "configs/tiny_distill.yaml", *common,
                            f"run_dir={out / 'student'}", f"distill.teacher={out / 'teacher'}",
                            f"optim.max_steps={args.student_steps}", f"optim.lr={args.lr / 2}",
                            "optim.ema_decay=0.999", "flow.sample_steps=25", f"distill.guidance={distill_guidance}"],
                           log)
    write_heldout(out / "heldout")
    rows = []
    for protocol in ("realesrgan", "bicubic"):
        evalset = out / f"eval_{protocol}"
        run([py, "-m", "vosr.evaluate", "make-set", "--hr", str(out / "heldout"), "--out", str(evalset),
             "--protocol", protocol, "--crop", str(args.eval_crop), "--seed", "0"], log)
        preds = {"bicubic": evalset / "pred_bicubic"}
        bicubic_folder(evalset / "LR", preds["bicubic"])
        for who, steps in (("teacher", 25), ("student", 1)):
            preds[who] = evalset / f"pred_{who}"
            t = run([py, "-m", "vosr.infer", "-c", str(out / who / "ema.safetensors"), "-i", str(evalset / "LR"),
                     "-o", str(preds[who]), "--steps", str(steps), "--seed", "0", "--overwrite",
                     "--guidance", str(args.guidance)], log)
            times[f"infer_{who}_{protocol}"] = t
        for who, pred in preds.items():
            report = evalset / f"report_{who}"
            run([py, "-m", "vosr.evaluate", "score", "--pred", str(pred), "--gt", str(evalset / "HR"),
                 "--lr", str(evalset / "LR"), "--out", str(report), "--metrics", "psnr", "ssim", "lpips",
                 "--scale", "4"], log)
            summary = json.loads((report / "summary.json").read_text())
            rows.append((protocol, who, summary))
    print(f"{'set':>11} {'model':>8} {'PSNR-Y':>8} {'SSIM-Y':>7} {'LPIPS':>7}")
    for protocol, who, summary in rows:
        means = {m: v["mean"] for m, v in summary["metrics"].items()}
        cells = [f"{means[m]:.4f}" if m in means else "n/a" for m in ("psnr", "ssim", "lpips")]
        print(f"{protocol:>11} {who:>8} {cells[0]:>8} {cells[1]:>7} {cells[2]:>7}")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(f"comparison sheets: {out}/eval_*/report_*/comparison.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
