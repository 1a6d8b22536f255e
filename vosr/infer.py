"""Upscale images with an exported VOSR model: ``python -m vosr.infer -c CKPT -i FILE_OR_DIR -o DIR``.

Any size and aspect ratio (tiled beyond the training size); outputs are PNG files named after
the inputs. Existing outputs are skipped unless ``--overwrite``; an output never replaces an
input, and ``-o`` may not be ``-i``; the PNGs it writes carry a marker (``vosr.images.OUTPUT_MARKER``)
and are never taken as inputs. Unusable inputs (corrupt, truncated, too small or too large) are skipped with a message;
grayscale, palette, 16-bit and CMYK files are converted, and transparency is carried over
(the alpha plane is resized bicubically). The exit status is non-zero only when nothing was
produced although there was work to do.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

# Names only, so --help needs no torch; tests check they match vosr.inference.colorfix.COLOR_FIXES.
COLOR_FIXES = ("none", "adain", "wavelet")
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments."""
    p = argparse.ArgumentParser(prog="python -m vosr.infer",
                                description="Upscale images with an exported VOSR model (any size; tiled beyond "
                                            "the training size); outputs are PNGs named after the inputs.")
    p.add_argument("-c", "--checkpoint", required=True, help="exported .safetensors, a run folder (its "
                   "ema.safetensors), or released weights with --config")
    p.add_argument("-i", "--input", required=True, help="an image file or a folder of images")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--config", default=None, help="run YAML; required for checkpoints without embedded config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable), e.g. --set flow.weak_anchor=0.1")
    p.add_argument("--scale", type=float, default=None, help="upscaling factor (default: the model's data.scale)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default flow.sample_steps; one-step "
                   "models use 1 unless more are asked for)")
    p.add_argument("--guidance", type=float, default=None, help="guidance s (default flow.guidance); for a student "
                   "distilled with distill.guidance_range, its omega inside that range")
    p.add_argument("--guidance-lr", type=float, default=None, help="teacher: guidance of the LR branch s_lr "
                   "(fidelity to the input; default --guidance)")
    p.add_argument("--guidance-sem", type=float, default=None, help="teacher: guidance of the semantic branch s_sem "
                   "(generated detail; default --guidance)")
    p.add_argument("--guidance-sweep", default=None, metavar="LO:HI:N", help="on one image: N outputs with the "
                   "guidance from LO to HI on one labelled sheet <stem>_sweep.png (PSNR vs bicubic and sharpness "
                   "under each); sweeps s, or s_lr / s_sem when the other is fixed, or a student's omega. A "
                   "negative LO needs the = form: --guidance-sweep=-0.5:1.5:5")
    p.add_argument("--weak-anchor", type=float, default=None, help="weak-anchor w (default flow.weak_anchor)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same for every image)")
    p.add_argument("--degradation", default=None, metavar="NAME=S,...",
                   help="degradation scores in [0, 1] for a model trained with model.degradation_condition, e.g. "
                   "noise=0.3,blur=0.5,jpeg=0.2 (names: blur, resize, noise, jpeg for both stages, or blur1 ... "
                   "jpeg2; unnamed = 0); default: the model's estimator, if it has one")
    p.add_argument("--cond-noise", type=float, default=0.0, metavar="S",
                   help="region-adaptive condition noise strength in [0, 1] (more noise in textured regions, "
                   "flow.cond_noise_a_min/max): 0 = fidelity (default), 1 = the training map, more realism")
    p.add_argument("--color-fix", choices=COLOR_FIXES, default="adain",
                   help="colour correction against the upsampled LR (default adain, as the reference)")
    p.add_argument("--tile", type=int, default=None, help="tile side in output pixels for the transformer and the "
                   "autoencoder (default: data.crop_size / autoencoder.tile_size; 0 = no tiling)")
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in output pixels")
    p.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto = cuda when available)")
    p.add_argument("--dtype", choices=tuple(DTYPE_NAMES), default="fp32", help="transformer precision")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the transformer and encoders once per shape (default backend inductor; "
                        "'eager' only traces); on CUDA a batch-1 one-step image that fits one tile replays a "
                        "CUDA graph of the whole pipeline")
    p.add_argument("--max-pixels", type=int, default=8_388_608, help="skip inputs with more pixels (width x height)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns the exit status (0 = something produced or nothing left to do)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The heavy imports (torch, the models) come after the arguments are known to be good.
    import torch

    from vosr.images import list_images
    from vosr.inference.files import check_not_input, drop_own_outputs, plan_outputs, upscale_files
    from vosr.inference.pipeline import load_pipeline
    from vosr.runtime.distributed import resolve_device

    try:
        check_not_input(Path(args.input), Path(args.output))
        inputs = drop_own_outputs(list_images(args.input))
        pairs = plan_outputs(inputs, Path(args.output).expanduser())
        pipe = load_pipeline(args.checkpoint, config=args.config, overrides=args.overrides,
                             device=resolve_device(args.device), dtype=getattr(torch, DTYPE_NAMES[args.dtype]))
        pipe.sample_options(args.steps, args.guidance, args.weak_anchor,  # sampler flags fail before any work
                            guidance_lr=args.guidance_lr, guidance_sem=args.guidance_sem)
        if args.compile:
            pipe.compile(backend=args.compile)
        check_conditioning_flags(pipe, args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    if not pairs:
        logger.error("no image files found in %s", args.input)
        return 1
    if args.guidance_sweep is not None:
        return _sweep(pipe, inputs, args)
    counts = upscale_files(pipe, pairs, args)
    logger.info("done: %d produced, %d already existed, %d skipped or failed", counts["produced"],
                counts["existing"], counts["failed"])
    return 0 if counts["produced"] or not counts["failed"] else 1


def _sweep(pipe, inputs: list[Path], args: argparse.Namespace) -> int:
    """``--guidance-sweep`` on the one input image; 2 with a one-line error when it cannot run."""
    from vosr.images import ImageError
    from vosr.inference.sweep import run_sweep

    try:
        if len(inputs) != 1:
            raise ValueError(f"--guidance-sweep takes one image, {args.input} has {len(inputs)}")
        path = run_sweep(pipe, inputs[0], Path(args.output).expanduser(), args)
    except (ValueError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger.info("guidance sweep sheet: %s", path)
    return 0


def check_conditioning_flags(pipe, args) -> None:
    """``--degradation`` / ``--cond-noise`` fail (ValueError) before any work when they cannot apply."""
    from vosr.inference.files import conditioning_args

    extra = conditioning_args(args)  # parses --degradation
    if not 0.0 <= args.cond_noise <= 1.0:
        raise ValueError(f"--cond-noise {args.cond_noise} must be in [0, 1]")
    if "degradation" in extra and pipe.model.degradation_embed is None:
        raise ValueError("--degradation was given, but this model has no degradation conditioning "
                         "(model.degradation_condition=false)")


if __name__ == "__main__":
    sys.exit(main())
