"""How well does a guidance-conditioned one-step student follow its teacher across omega? (issue 10)

Trains the tiny pixel-space teacher and its student over ``distill.guidance_range`` in-process on crops of
the scikit-image photos (``tests/omega_tiny.py``: 32-px crops, bicubic x4, no semantic encoder, Adam),
then on held-out crops reports, at three omegas: LPIPS (AlexNet) between the student's one-step output and
the teacher's guided Euler output at that omega, PSNR of each against the HR crop, and the distance to the
bicubic upsample. It also exports the student and writes a ``vosr.infer --guidance-sweep`` sheet.

    python benchmarks/omega_student.py --out runs/omega_student      # ~1 min of CPU
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.omega_tiny import build, distill_student, encode, one_step_images, photo_crops, train_teacher  # noqa: E402
from vosr.evaluation.metrics import load_lpips, psnr_y  # noqa: E402
from vosr.method.flow import sample_euler  # noqa: E402
from vosr.training.export import save_export  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "omega_student")
    p.add_argument("--lo", type=float, default=-0.5)
    p.add_argument("--hi", type=float, default=1.0)
    p.add_argument("--teacher-steps", type=int, default=300)
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument("--euler-steps", type=int, default=8)
    p.add_argument("--unshuffle", type=int, default=2, help="pixel space-to-depth factor (4 = the tests', noisier)")
    args = p.parse_args(argv)
    start = time.process_time()
    cfg, parts = build(args.lo, args.hi, args.unshuffle)
    data = encode(parts, photo_crops(256, 0), 0)
    held = encode(parts, photo_crops(32, 99), 1)
    teacher = train_teacher(cfg, parts, data, args.teacher_steps)
    _, student = distill_student(cfg, parts, teacher, data, args.student_steps)
    train_s = time.process_time() - start
    lpips = load_lpips("cpu")
    noise = torch.randn(held.z_lq.shape, generator=torch.Generator().manual_seed(5))
    rows = []
    for omega in (args.lo, (args.lo + args.hi) / 2, args.hi):
        with torch.no_grad():
            t_img = parts.autoencoder.decode(sample_euler(teacher, held.z_lq, None, noise, steps=args.euler_steps,
                                                          guidance=omega, weak_anchor=cfg.distill.weak_anchor))
            t_img = t_img.clamp(0, 1)
            s_img = one_step_images(student, parts, held, omega)
            lp = float(lpips(s_img * 2 - 1, t_img * 2 - 1).mean())
        rows.append({"omega": omega, "lpips_student_vs_teacher": lp,
                     "psnr_student_vs_hr": float(psnr_y(s_img, held.hr).mean()),
                     "psnr_teacher_vs_hr": float(psnr_y(t_img, held.hr).mean()),
                     "mse_student_vs_bicubic": float((s_img - held.lr_up).pow(2).mean()),
                     "mse_teacher_vs_bicubic": float((t_img - held.lr_up).pow(2).mean())})
        print(json.dumps(rows[-1]))
    args.out.mkdir(parents=True, exist_ok=True)
    save_export(args.out / "student.safetensors", student.state_dict(), cfg)
    save_export(args.out / "teacher.safetensors", teacher.state_dict(), cfg)
    summary = {"train_cpu_s": train_s, "teacher_steps": args.teacher_steps, "student_steps": args.student_steps,
               "pixel_unshuffle": args.unshuffle,
               "held_out_crops": held.hr.shape[0], "rows": rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"trained in {train_s:.1f} CPU-s; exports and summary.json in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
