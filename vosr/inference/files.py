"""Files in, files out for ``vosr.infer``: pair inputs with outputs, upscale each, skip bad ones.

``args`` is the parsed ``vosr.infer`` command line (sampler, tiling and colour-fix options).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from vosr.images import (
    OUTPUT_MARKER,
    ImageError,
    is_vosr_output,
    read_image,
    resize_alpha,
    save_image,
    to_tensor,
    to_uint8,
)
from vosr.inference.pipeline import SRPipeline, TileOptions

logger = logging.getLogger(__name__)


def drop_own_outputs(inputs: list[Path]) -> list[Path]:
    """``inputs`` without the images ``vosr.infer`` wrote itself (PNGs carrying ``OUTPUT_MARKER``)."""
    kept = [p for p in inputs if not is_vosr_output(p)]
    if len(kept) < len(inputs):
        logger.info("skipping %d input(s) that vosr.infer wrote itself (outputs are never inputs)",
                    len(inputs) - len(kept))
    return kept


def check_not_input(source: Path, out_dir: Path) -> None:
    """Refuse ``-o`` equal to ``-i`` (the same folder, or the input file itself), whatever the inputs' types."""
    src, dst = source.expanduser().resolve(), out_dir.expanduser().resolve()
    if dst == src:
        raise ValueError(f"-o/--output {out_dir} is the input {source}: outputs would mix with (and on a rerun "
                         "become) inputs; choose another -o/--output folder")


def plan_outputs(inputs: list[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """Pair each input with ``out_dir/<stem>.png`` (``<stem>_<ext>.png`` when stems repeat).

    Raises ValueError when an output would be one of the inputs.
    """
    stems: dict[str, int] = {}
    for path in inputs:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    pairs = []
    for path in inputs:
        name = f"{path.stem}.png" if stems[path.stem] == 1 else f"{path.stem}_{path.suffix.lstrip('.')}.png"
        pairs.append((path, out_dir / name))
    sources = {p.resolve() for p in inputs}
    clashes = [str(dst) for _, dst in pairs if dst.resolve() in sources]
    if clashes:
        raise ValueError(f"output(s) {clashes[:3]} would overwrite input files; choose another -o/--output folder")
    return pairs


def upscale_file(pipe: SRPipeline, src: Path, dst: Path, args: argparse.Namespace) -> tuple[int, int]:
    """Read, upscale and write one image (a progress bar over its tiles and steps); returns the output
    (H, W). Raises ImageError for bad inputs."""
    image = read_image(src, max_pixels=args.max_pixels)
    tiles = TileOptions(tile=args.tile, overlap=args.overlap, ae_tile=args.tile, ae_overlap=args.overlap,
                        batch=args.batch)
    out = pipe.upscale(to_tensor(image.rgb), steps=args.steps, guidance=args.guidance, weak_anchor=args.weak_anchor,
                       seed=args.seed, tiles=tiles, color_fix=args.color_fix, scale=args.scale, progress=src.name,
                       guidance_lr=getattr(args, "guidance_lr", None), guidance_sem=getattr(args, "guidance_sem", None),
                       **conditioning_args(args))
    rgb = to_uint8(out)
    alpha = None if image.alpha is None else resize_alpha(image.alpha, rgb.shape[:2])
    save_image(dst, rgb, alpha, text=OUTPUT_MARKER)  # marked, so a rerun never takes it as an input
    return rgb.shape[0], rgb.shape[1]


def upscale_files(pipe: SRPipeline, pairs: list[tuple[Path, Path]], args: argparse.Namespace) -> dict[str, int]:
    """Process every pair with a progress bar; returns counts of produced, existing and failed."""
    from tqdm.auto import tqdm

    counts = {"produced": 0, "existing": 0, "failed": 0}
    for src, dst in tqdm(pairs, desc="upscale", unit="img", disable=len(pairs) < 2):
        if dst.exists() and not args.overwrite:
            counts["existing"] += 1
            logger.info("skip %s: %s exists (use --overwrite)", src.name, dst)
            continue
        start = time.perf_counter()
        try:
            size = upscale_file(pipe, src, dst, args)
        except ImageError as e:
            counts["failed"] += 1
            logger.warning("skip %s: %s", src, e)
            continue
        except (RuntimeError, ValueError) as e:  # e.g. out of memory on one huge image: carry on
            counts["failed"] += 1
            logger.error("failed %s: %s", src, e)
            continue
        counts["produced"] += 1
        logger.info("%s -> %s (%dx%d) in %.2fs", src.name, dst, size[1], size[0], time.perf_counter() - start)
    return counts


def conditioning_args(args) -> dict:
    """``upscale`` keywords of the conditioning flags (``--degradation``, ``--cond-noise``) that were given."""
    out = {}
    if getattr(args, "degradation", None):
        from vosr.data.degrade import parse_scores

        out["degradation"] = parse_scores(args.degradation)
    if getattr(args, "cond_noise", None):
        out["cond_noise"] = float(args.cond_noise)
    return out
