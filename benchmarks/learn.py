"""Does the stack learn? Train a teacher from scratch, distil it to one step, score both on photos never seen.

1. pack the installed wallpaper photos into shards (``data_tools/pack.py``), downscaled to short sides 512
   and 320 so that the small training crops carry the detail per pixel of the held-out photos;
2. train a pixel-space teacher from scratch (``python -m vosr.train``; no pretrained part at all:
   ``autoencoder.kind=pixel``, ``semantic.kind=none``);
3. build two held-out ×4 sets from the lossless scikit-image + sporco photos at a fixed seed
   (``python -m vosr.evaluate make-set``): the Real-ESRGAN degradation and plain bicubic;
4. distil the teacher into a one-step student (``python -m vosr.distill``) in segments, keeping the
   raw and the EMA weights after each (step 0 is the student as initialised from the teacher);
5. score, on both sets, bicubic (PIL), the teacher at 25 and 1 Euler steps and every student
   export, through the inference pipeline ``vosr.infer`` uses (PSNR/SSIM on Y, border 4; LPIPS);
   print the table, write ``results.json`` and ``learn.png`` (LPIPS against distillation steps).

    python benchmarks/learn.py                 # CPU: the recipe below, ~480 CPU-s (README: what to expect)
    python benchmarks/learn.py --size gpu      # the same recipe at GPU size (the default on a CUDA machine)

Every training stage is the user-facing command run as a subprocess; all outputs stay in ``--out``.
A finished stage is reused when the script is run again (delete its folder to redo it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from data_tools.photos import wallpaper_dirs, write_heldout

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = ("realesrgan", "bicubic")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what is trained; ``--size`` picks the numbers, the shape stays."""

    width: int
    depth: int
    heads: int
    unshuffle: int
    """Pixel space: space-to-depth factor (a token carries unshuffle² x patch² x 3 pixels' values)."""
    crop: int
    """HR training crop side (pixels)."""
    batch: int
    teacher_steps: int
    teacher_lr: float
    student_segments: tuple[int, ...]
    """Distillation steps at which the student is exported and scored."""
    student_lr: float
    eval_crop: int
    """Held-out HR centre crop (pixels)."""
    guidance: float
    """The teacher's guidance s when scored, and the omega the student learns (like with like). A tiny
    teacher's 25-step samples drift from the LR's low frequencies (each step trusts x_t's, which carry the
    first step's error and the noise's); s = 2 holds them to the condition (README: what to expect)."""
    workers: int
    prediction: str = "x_residual"
    """``model.prediction``: a small pixel-space model outputs x0 as a residual over its LR condition."""
    bicubic_prob: float = 0.7
    """``degradation.bicubic_prob``: the share of plain bicubic LR images among the Real-ESRGAN ones. A small
    model that cannot tell a clean LR from a degraded one "corrects" the low frequencies of clean LR images
    it should trust; with more clean images its 25-step samples improve on both held-out sets."""
    cond_noise_mean: float = 7.0
    """``flow.cond_noise_mean``: keep ratio a = sigmoid(N(7, 1)), condition noise std ~0.04 on [-1, 1]
    pixels; the reference's N(5, 1) (std ~0.12) is sized for unit-variance VAE latents and, in pixel
    space, drowns the LR's fine detail (25-step LPIPS on the bicubic set 0.58 -> 0.54 at s = 1)."""
    teacher_extra: tuple[str, ...] = ()
    student_extra: tuple[str, ...] = ()


RECIPES = {
    "cpu": Recipe(width=64, depth=2, heads=2, unshuffle=4, crop=64, batch=8, teacher_steps=3000, teacher_lr=2e-3,
                  student_segments=(200, 400, 800), student_lr=1e-4, eval_crop=256, guidance=2.0, workers=1),
    "gpu": Recipe(width=384, depth=12, heads=6, unshuffle=2, crop=128, batch=32, teacher_steps=20000,
                  teacher_lr=3e-4, student_segments=(500, 1000, 2000, 4000), student_lr=2e-5, eval_crop=512,
                  guidance=1.0, workers=6),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/learn.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "learn", help="where everything goes")
    p.add_argument("--size", choices=sorted(RECIPES), default="gpu" if torch.cuda.is_available() else "cpu",
                   help="recipe numbers (default: gpu on a CUDA machine, else cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-after", choices=("teacher", "student"), default=None,
                   help="stop after training (and scoring) this stage")
    p.add_argument("recipe", nargs="*", metavar="FIELD=VALUE",
                   help="override a recipe field, e.g. width=96 crop=48 (tuples comma-separated)")
    return p.parse_args(argv)


def override(recipe: Recipe, items: list[str]) -> Recipe:
    """``recipe`` with ``FIELD=VALUE`` items applied (types follow the field's current value)."""
    known = {f.name: getattr(recipe, f.name) for f in fields(recipe)}
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"error: recipe field {item!r}: expected FIELD=VALUE with FIELD one of {sorted(known)}")
        current = known[key]
        if isinstance(current, tuple):
            kind = type(current[0]) if current else str
            changes[key] = tuple(kind(v) for v in value.split(",") if v)
        else:
            changes[key] = type(current)(value)
    return replace(recipe, **changes)


# --------------------------------------------------------------------------------- stages
def stage_env() -> dict[str, str]:
    """The stages' environment: on the CPU, torch threads = cores minus the data worker (no oversubscription)."""
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) - 1)))
    return env


def run(cmd: list[str], log: Path) -> float:
    """Run a stage with its output appended to ``log``; returns its CPU seconds (children), raises on failure."""
    before = os.times()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.call(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=stage_env())
    if code != 0:
        raise SystemExit(f"stage failed ({code}): {' '.join(cmd)}\n" + log.read_text()[-3000:])
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system)


def common_overrides(recipe: Recipe, shards: Path, seed: int) -> list[str]:
    """Config overrides shared by the teacher and the student runs (pixel space, no pretrained part)."""
    precision = "bf16" if torch.cuda.is_available() else "fp32"
    return [f"data.train=[{{shards: '{shards}'}}]", f"data.crop_size={recipe.crop}",
            f"data.batch_size={recipe.batch}", f"data.num_workers={recipe.workers}",
            "data.shuffle_buffer_mb=4", "data.crops_per_image=16",
            f"model.hidden_size={recipe.width}", f"model.depth={recipe.depth}", f"model.num_heads={recipe.heads}",
            "semantic.kind=none", f"autoencoder.pixel_unshuffle={recipe.unshuffle}", f"seed={seed}",
            f"model.prediction={recipe.prediction}", f"degradation.bicubic_prob={recipe.bicubic_prob}",
            f"flow.cond_noise_mean={recipe.cond_noise_mean}",
            "log.every_steps=50", "log.progress=false", "log.val_every=0", f"engine.precision={precision}",
            "checkpoint.every_steps=100000"]


def teacher_overrides(recipe: Recipe) -> list[str]:
    """The teacher from scratch: EMA with warm-up (a short from-scratch run must follow its model quickly)."""
    return [f"optim.max_steps={recipe.teacher_steps}", f"optim.lr={recipe.teacher_lr}", "optim.ema_decay=0.999",
            "optim.ema_warmup=true", "optim.warmup_steps=100", f"flow.guidance={recipe.guidance}",
            *recipe.teacher_extra]


def student_overrides(recipe: Recipe, teacher: Path) -> list[str]:
    """The student: the teacher's omega and weak anchor as the teacher is scored, raw weights exported too."""
    return [f"distill.teacher={teacher}", f"optim.lr={recipe.student_lr}", "optim.ema_decay=0.999",
            f"distill.guidance={recipe.guidance}", "checkpoint.export_raw=true", *recipe.student_extra]


def pack(out: Path, log: Path) -> float:
    if (out / "shards" / "manifest.json").exists():
        return 0.0
    return run([sys.executable, "data_tools/pack.py", *map(str, wallpaper_dirs()), "--out", str(out / "shards"),
                "--min-size", "512", "--short-side", "512,320", "--workers", str(max(1, min(8, os.cpu_count() or 1))),
                "--no-progress"], log)


def eval_sets(out: Path, recipe: Recipe, log: Path) -> dict[str, Path]:
    heldout = out / "heldout"
    if not heldout.is_dir():
        write_heldout(heldout)
    sets = {}
    for protocol in PROTOCOLS:
        sets[protocol] = out / f"eval_{protocol}"
        if not (sets[protocol] / "manifest.json").exists():
            run([sys.executable, "-m", "vosr.evaluate", "make-set", "--hr", str(heldout), "--out", str(sets[protocol]),
                 "--protocol", protocol, "--crop", str(recipe.eval_crop), "--seed", "0"], log)
    return sets


def student_start(out: Path, recipe: Recipe, teacher: Path, shards: Path, seed: int) -> Path:
    """The student exactly as ``vosr.distill`` initialises it (teacher EMA + its own r branch), as step 0."""
    from vosr.config import load_run_config
    from vosr.training.export import save_export
    from vosr.training.setup import build_frozen_parts
    from vosr.training.student import build_teacher_and_student

    path = out / "exports" / "student_0000000_ema.safetensors"
    if not path.exists():
        cfg = load_run_config(str(REPO / "configs" / "tiny_distill.yaml"),
                              [*common_overrides(recipe, shards, seed), *student_overrides(recipe, teacher)])
        torch.manual_seed(cfg.seed)  # what vosr.distill's seed_everything does before building the student
        _, student = build_teacher_and_student(cfg, build_frozen_parts(cfg, torch.device("cpu")), torch.device("cpu"))
        save_export(path, student.state_dict(), cfg, extra={"step": "0"})
    return path


def distil(out: Path, recipe: Recipe, teacher: Path, shards: Path, seed: int, log: Path) -> tuple[list[int], float]:
    """Run ``vosr.distill`` up to each segment end (resuming), keeping the raw and EMA exports of each."""
    cpu, run_dir, exports = 0.0, out / "student", out / "exports"
    for steps in recipe.student_segments:
        ema, raw = exports / f"student_{steps:07d}_ema.safetensors", exports / f"student_{steps:07d}_raw.safetensors"
        if ema.exists() and raw.exists():
            continue
        cpu += run([sys.executable, "-m", "vosr.distill", "--config", "configs/tiny_distill.yaml",
                    *common_overrides(recipe, shards, seed), *student_overrides(recipe, teacher),
                    f"run_dir={run_dir}", f"optim.max_steps={steps}"], log)
        shutil.copyfile(run_dir / "ema.safetensors", ema)
        shutil.copyfile(run_dir / "model.safetensors", raw)
    return [0, *recipe.student_segments], cpu


# --------------------------------------------------------------------------------- scoring
class Scorer:
    """PSNR/SSIM (Y, border = scale) and LPIPS of upscales of one evaluation set, through the inference pipeline."""

    def __init__(self, evalset: Path) -> None:
        from vosr.evaluation.metrics import MetricSuite
        from vosr.images import list_images, read_image, to_tensor

        self.lrs = [to_tensor(read_image(p).rgb) for p in list_images(evalset / "LR")]
        self.hrs = [to_tensor(read_image(p).rgb) for p in list_images(evalset / "HR")]
        self.suite = MetricSuite(["psnr", "ssim", "lpips"], device=torch.device("cpu"), crop_border=4)

    def score(self, outputs: list[torch.Tensor]) -> dict[str, float]:
        values: dict[str, list[float]] = {}
        for out, hr in zip(outputs, self.hrs, strict=True):
            for key, v in self.suite.compute(out, hr).items():
                values.setdefault(key, []).append(float(v[0]))
        return {k: sum(v) / len(v) for k, v in values.items()}

    def bicubic(self) -> dict[str, float]:
        from vosr.images import resize_bicubic

        return self.score([resize_bicubic(lr, tuple(hr.shape[-2:])) for lr, hr in zip(self.lrs, self.hrs)])

    def model(self, export: Path, **sample) -> dict[str, float]:
        from vosr.inference.pipeline import TileOptions, load_pipeline

        pipe = load_pipeline(export)
        tiles = TileOptions(batch=64)  # tiles of the training crop: many per photo at CPU size
        return self.score([pipe.upscale(lr, seed=0, tiles=tiles, **sample) for lr in self.lrs])


def score_all(sets: dict[str, Path], teacher: Path, students: dict[str, Path], guidance: float) -> dict:
    """{protocol: {row: metrics}} for bicubic, the teacher at 25 and 1 steps, and every student export."""
    table = {}
    for protocol, evalset in sets.items():
        scorer = Scorer(evalset)
        rows = {"bicubic": scorer.bicubic(),
                "teacher_25": scorer.model(teacher, steps=25, guidance=guidance),
                "teacher_1": scorer.model(teacher, steps=1, guidance=guidance)}
        for name, path in students.items():
            rows[name] = scorer.model(path)
        table[protocol] = rows
    return table


def plot(table: dict, steps: list[int], path: Path) -> None:
    """LPIPS against distillation steps (raw and EMA), beside the teacher at 25 / 1 steps and bicubic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(6 * len(table), 4.2), squeeze=False)
    for ax, (protocol, rows) in zip(axes[0], table.items()):
        for kind, style in (("ema", "o-"), ("raw", "s--")):
            xs = [s for s in steps if f"student_{s}_{kind}" in rows]
            ax.plot(xs, [rows[f"student_{s}_{kind}"]["lpips"] for s in xs], style, label=f"student, 1 step ({kind})")
        for key, label, color in (("teacher_25", "teacher, 25 steps", "tab:green"),
                                  ("teacher_1", "teacher, 1 Euler step", "tab:red"), ("bicubic", "bicubic", "gray")):
            ax.axhline(rows[key]["lpips"], color=color, linestyle=":", label=label)
        ax.set(title=f"held-out photos, {protocol} x4", xlabel="distillation steps", ylabel="LPIPS (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(table: dict, steps: list[int]) -> None:
    last = steps[-1]
    print(f"{'set':>11} {'model':>24} {'PSNR-Y':>7} {'SSIM-Y':>7} {'LPIPS':>7}")
    for protocol, rows in table.items():
        for key, label in (("bicubic", "bicubic"), ("teacher_25", "teacher, 25 steps"),
                           ("teacher_1", "teacher, 1 Euler step"), ("student_0_ema", "student, step 0"),
                           (f"student_{last}_raw", f"student {last} (raw)"),
                           (f"student_{last}_ema", f"student {last} (EMA)")):
            if key not in rows:
                continue
            m = rows[key]
            print(f"{protocol:>11} {label:>24} {m['psnr']:>7.2f} {m['ssim']:>7.3f} {m['lpips']:>7.4f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    recipe = override(RECIPES[args.size], args.recipe)
    out: Path = args.out.resolve()
    (out / "exports").mkdir(parents=True, exist_ok=True)
    log = out / "learn.log"
    where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"# learn ({args.size}): {recipe}\n# on {where}; log {log}", flush=True)
    cpu = {"pack": pack(out, log)}
    shards = out / "shards"
    teacher = out / "teacher" / "ema.safetensors"
    if not teacher.exists():
        cpu["teacher"] = run([sys.executable, "-m", "vosr.train", "--config", "configs/tiny.yaml",
                              *common_overrides(recipe, shards, args.seed), *teacher_overrides(recipe),
                              f"run_dir={out / 'teacher'}"], log)
    sets = eval_sets(out, recipe, log)
    students, steps = {}, [0]
    if args.stop_after != "teacher":
        students["student_0_ema"] = student_start(out, recipe, teacher, shards, args.seed)
        steps, cpu["student"] = distil(out, recipe, teacher, shards, args.seed, log)
    for s in steps[1:]:
        for kind in ("ema", "raw"):
            students[f"student_{s}_{kind}"] = out / "exports" / f"student_{s:07d}_{kind}.safetensors"
    t0 = time.process_time()
    table = score_all(sets, teacher, students, recipe.guidance)
    cpu["scoring"] = time.process_time() - t0
    print_table(table, steps)
    plot(table, steps, out / "learn.png")
    (out / "results.json").write_text(json.dumps({"recipe": asdict(recipe), "size": args.size, "machine": where,
                                                  "cpu_seconds": cpu, "steps": steps, "scores": table}, indent=1))
    print("CPU seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    print(f"plot {out / 'learn.png'}; scores {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
