"""Ablate the conditioning modules of docs/METHOD.md §10: one arm per module (and all on), same recipe.

Each arm trains the same from-scratch pixel-space teacher and one-step student as
``benchmarks/learn.py`` (same packed wallpapers, seed, steps, width), with one module switched on,
then upscales the two held-out ×4 sets (Real-ESRGAN and bicubic protocols) with the teacher (25
Euler steps) and the student (1 step) and scores PSNR-Y, SSIM-Y and LPIPS. It writes
``ablate.md`` (the table, with seconds and parameters per arm) and ``ablate.png`` (bar charts)
into ``--out``. A measurement, not a claim: nothing is asserted about which arm wins.

    python benchmarks/ablate.py --quick          # 2-core CPU: learn.py's recipe, 600 + 150 steps, 128^2 held-out
    python benchmarks/ablate.py                  # GPU size: learn.py's GPU recipe per arm

Arms: ``baseline`` (all off), ``dinov3`` (semantic tokens from a DINOv3 ViT through timm: random
weights unless ``--dinov3-path`` gives local ones, so without them the arm measures the cost and
the cross-attention path, not GramSR's features), ``degradation`` (degradation scores + estimator
on the DINOv3 tokens), ``lr_pixel``, ``cond_noise`` and ``all``. The baseline, like learn.py, has
no semantic encoder.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _learn_module():
    """``benchmarks/learn.py`` as a module: the recipe and the stage helpers every arm shares (no copy here)."""
    spec = importlib.util.spec_from_file_location("_vosr_learn", REPO / "benchmarks" / "learn.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


learn = _learn_module()
run = learn.run


def bicubic_folder(lr_dir: Path, out: Path) -> None:
    """The bicubic ×4 baseline of every LR image in ``lr_dir`` as PNGs in ``out``."""
    from vosr.data.degrade import upsample_lr
    from vosr.images import list_images, read_image, save_image, to_tensor, to_uint8

    for path in list_images(lr_dir):
        lr = to_tensor(read_image(path).rgb)
        save_image(out / f"{path.stem}.png", to_uint8(upsample_lr(lr, (lr.shape[-2] * 4, lr.shape[-1] * 4))))


DINOV3 = ["semantic.kind=timm", "semantic.timm_name=vit_small_patch16_dinov3", "semantic.block_index=1",
          "semantic.input_size=64", "semantic.timm_kwargs={depth: 2, embed_dim: 64, num_heads: 2}"]
ARMS: dict[str, list[str]] = {
    "baseline": [],
    "dinov3": DINOV3,
    "degradation": [*DINOV3, "model.degradation_condition=true", "model.degradation_estimator=true"],
    "lr_pixel": ["model.lr_pixel_branch=true", "model.lr_pixel_blocks=1"],
    "cond_noise": ["flow.cond_noise_map=gradient"],
}
ARMS["all"] = sorted(set(ARMS["degradation"] + ARMS["lr_pixel"] + ARMS["cond_noise"]))
METRICS = ("psnr", "ssim", "lpips")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    import torch

    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "ablate")
    p.add_argument("--quick", action="store_true",
                   help="learn.py's CPU recipe at 600 + 150 steps and 128^2 held-out crops, on any device")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--teacher-steps", type=int, default=None)
    p.add_argument("--student-steps", type=int, default=None)
    p.add_argument("--eval-crop", type=int, default=None)
    p.add_argument("--dinov3-path", default=None, help="local DINOv3 weights for the dinov3/degradation arms "
                   "(with --dinov3-name); default: a random tiny DINOv3")
    p.add_argument("--dinov3-name", default="vit_small_patch16_dinov3")
    p.add_argument("recipe", nargs="*", metavar="FIELD=VALUE",
                   help="override a field of learn.py's recipe, as learn.py takes it (e.g. width=96)")
    args = p.parse_args(argv)
    # --quick = learn.py's CPU recipe (its steps and held-out crop) on any device; else learn.py's device defaults.
    steps = (600, 150, 128) if args.quick or not gpu else (20000, 4000, 512)
    args.teacher_steps = steps[0] if args.teacher_steps is None else args.teacher_steps
    args.student_steps = steps[1] if args.student_steps is None else args.student_steps
    args.eval_crop = steps[2] if args.eval_crop is None else args.eval_crop
    base = learn.RECIPES["gpu" if gpu and not args.quick else "cpu"]
    # FIELD=VALUE items are applied last, so an explicit recipe field is never silently replaced by a flag default.
    args.recipe = learn.override(replace(base, teacher_steps=args.teacher_steps, student_segments=(args.student_steps,),
                                         eval_crop=args.eval_crop), args.recipe)
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        p.error(f"unknown arms {sorted(unknown)}; choose from {','.join(ARMS)}")
    return args


def arm_overrides(arm: str, args: argparse.Namespace) -> list[str]:
    """The arm's config overrides (random-init tiny DINOv3 unless local weights are given)."""
    sets = list(ARMS[arm])
    if any(s.startswith("semantic.kind=timm") for s in sets):
        if args.dinov3_path:
            sets = [s for s in sets if not s.startswith(("semantic.timm_kwargs", "semantic.timm_name",
                                                         "semantic.block_index"))]
            sets += [f"semantic.timm_name={args.dinov3_name}", f"semantic.path={args.dinov3_path}",
                     "semantic.block_index=8", "semantic.input_size=224"]
        else:
            sets.append("semantic.random_init=true")
    return sets


def count_params(export: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(export), "pt") as f:  # the RoPE tables are buffers, not parameters
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys() if not k.startswith("feat_rope."))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def train_arm(arm: str, args: argparse.Namespace, out: Path, log: Path) -> dict[str, float]:
    """Teacher and student of one arm; returns stage CPU seconds."""
    py = sys.executable
    arm_dir = out / arm
    recipe = args.recipe
    common = [*learn.common_overrides(recipe, out / "shards", 0), "checkpoint.resume=none", *arm_overrides(arm, args)]
    teacher = learn.teacher_overrides(recipe)
    student = [*learn.student_overrides(recipe, arm_dir / "teacher"), f"optim.max_steps={recipe.student_segments[-1]}",
               "flow.sample_steps=25"]
    times = {"teacher": run([py, "-m", "vosr.train", "--config", "configs/tiny.yaml", *common,
                             f"run_dir={arm_dir / 'teacher'}", *teacher], log)}
    times["student"] = run([py, "-m", "vosr.distill", "--config", "configs/tiny_distill.yaml", *common,
                            f"run_dir={arm_dir / 'student'}", *student], log)
    return times


def score_arm(arm: str, args: argparse.Namespace, out: Path, log: Path) -> tuple[list[tuple], dict[str, float]]:
    """Upscale both held-out sets with the arm's teacher and student and score them."""
    py, rows, times = sys.executable, [], {}
    for protocol in ("realesrgan", "bicubic"):
        evalset = out / f"eval_{protocol}"
        for who, steps in (("teacher", 25), ("student", 1)):
            pred = out / arm / f"pred_{who}_{protocol}"
            cmd = [py, "-m", "vosr.infer", "-c", str(out / arm / who / "ema.safetensors"), "-i", str(evalset / "LR"),
                   "-o", str(pred), "--steps", str(steps), "--seed", "0", "--overwrite"]
            if who == "teacher":
                cmd += ["--guidance", str(args.recipe.guidance)]
            times[f"infer_{who}_{protocol}"] = run(cmd, log)
            report = out / arm / f"report_{who}_{protocol}"
            run([py, "-m", "vosr.evaluate", "score", "--pred", str(pred), "--gt", str(evalset / "HR"),
                 "--lr", str(evalset / "LR"), "--out", str(report), "--metrics", *METRICS, "--scale", "4"], log)
            summary = json.loads((report / "summary.json").read_text())
            rows.append((arm, protocol, who, {m: v["mean"] for m, v in summary["metrics"].items()}))
    return rows, times


def prepare(args: argparse.Namespace, out: Path, log: Path) -> list[tuple]:
    """Pack the wallpapers, build the held-out sets, score bicubic (shared by every arm)."""
    from data_tools.photos import write_heldout

    py = sys.executable
    learn.pack(out, log)  # learn.py's shards (multi-scale wallpapers)
    write_heldout(out / "heldout")
    rows = []
    for protocol in ("realesrgan", "bicubic"):
        evalset = out / f"eval_{protocol}"
        if not (evalset / "HR").exists():
            run([py, "-m", "vosr.evaluate", "make-set", "--hr", str(out / "heldout"), "--out", str(evalset),
                 "--protocol", protocol, "--crop", str(args.eval_crop), "--seed", "0"], log)
        pred = evalset / "pred_bicubic"
        bicubic_folder(evalset / "LR", pred)
        report = evalset / "report_bicubic"
        run([py, "-m", "vosr.evaluate", "score", "--pred", str(pred), "--gt", str(evalset / "HR"),
             "--lr", str(evalset / "LR"), "--out", str(report), "--metrics", *METRICS, "--scale", "4"], log)
        summary = json.loads((report / "summary.json").read_text())
        rows.append(("bicubic", protocol, "-", {m: v["mean"] for m, v in summary["metrics"].items()}))
    return rows


def table(rows: list[tuple], seconds: dict[str, float], params: dict[str, int]) -> str:
    """Markdown table: one row per (arm, protocol, model)."""
    lines = ["| arm | set | model | PSNR-Y | SSIM-Y | LPIPS | train s | params |", "|---|---|---|---|---|---|---|---|"]
    for arm, protocol, who, means in rows:
        cells = [f"{means[m]:.4f}" if m in means else "n/a" for m in METRICS]
        secs = f"{seconds[arm]:.0f}" if arm in seconds else "-"
        n = f"{params[arm] / 1e6:.3f}M" if arm in params else "-"
        lines.append(f"| {arm} | {protocol} | {who} | {' | '.join(cells)} | {secs} | {n} |")
    return "\n".join(lines)


def bar_chart(rows: list[tuple], path: Path) -> None:
    """PSNR-Y, SSIM-Y and LPIPS bars per arm, one panel per (metric, protocol), teacher and student side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r[0] for r in rows if r[0] != "bicubic"))
    fig, axes = plt.subplots(2, 3, figsize=(15, 7), squeeze=False)
    for i, protocol in enumerate(("realesrgan", "bicubic")):
        for j, metric in enumerate(METRICS):
            ax = axes[i][j]
            for k, who in enumerate(("teacher", "student")):
                vals = [next((r[3].get(metric, float("nan")) for r in rows if r[:3] == (a, protocol, who)),
                             float("nan")) for a in arms]
                ax.bar([x + 0.4 * k for x in range(len(arms))], vals, width=0.4, label=who)
            base = next((r[3].get(metric) for r in rows if r[:2] == ("bicubic", protocol)), None)
            if base is not None:
                ax.axhline(base, color="gray", linestyle="--", label="bicubic")
            ax.set_xticks([x + 0.2 for x in range(len(arms))], arms, rotation=30, fontsize=8)
            ax.set_title(f"{metric.upper()}{'-Y' if metric != 'lpips' else ''} ({protocol})", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.suptitle("vosr conditioning modules: ablation (lower LPIPS is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "ablate.log"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    arms = args.arms.split(",")
    print(f"# ablate: arms {arms}; learn.py recipe {args.recipe}, on {device}; log {log}", flush=True)
    t0 = time.perf_counter()
    rows = prepare(args, out, log)
    seconds, params = {}, {}
    for arm in arms:
        times = train_arm(arm, args, out, log)
        seconds[arm] = times["teacher"] + times["student"]
        params[arm] = count_params(out / arm / "student" / "ema.safetensors")
        arm_rows, _ = score_arm(arm, args, out, log)
        rows += arm_rows
        print(f"# {arm}: trained in {seconds[arm]:.0f} s, {params[arm] / 1e6:.3f}M student parameters", flush=True)
    text = table(rows, seconds, params)
    (out / "ablate.md").write_text(f"{text}\n\nall arms: {time.perf_counter() - t0:.0f} s on {device}\n")
    bar_chart(rows, out / "ablate.png")
    print(text)
    print(f"total {time.perf_counter() - t0:.0f} s; table {out / 'ablate.md'}, chart {out / 'ablate.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
