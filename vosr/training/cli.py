"""The command line of the training stages: ``--config PATH [key=value ...]``, loaded, validated
and checked for every file it names before any heavy work starts."""
from __future__ import annotations

import argparse
from pathlib import Path

from vosr.config import RunConfig, load_run_config
from vosr.data.mix import resolve_sources


def parse_cli(argv: list[str] | None, description: str) -> tuple[str, list[str]]:
    """``--config PATH [key=value ...]``."""
    parser = argparse.ArgumentParser(description=description,
                                     epilog="Overrides are dotted keys, e.g. optim.lr=2e-4 data.batch_size=8")
    parser.add_argument("--config", "-c", required=True, help="run config YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    return args.config, args.overrides


def load_cli_config(argv: list[str] | None, description: str) -> RunConfig:
    """Parse the CLI and load a validated ``RunConfig`` (fails before any heavy work)."""
    path, overrides = parse_cli(argv, description)
    cfg = load_run_config(path, overrides)
    if cfg.name is None:
        cfg.name = Path(path).stem
    check_paths(cfg)
    return cfg


def check_paths(cfg: RunConfig) -> None:
    """Every file the run will read exists; raises naming the config key (before any GPU work)."""
    wanted = [("autoencoder.path", cfg.autoencoder.path), ("autoencoder.decoder_path", cfg.autoencoder.decoder_path),
              ("model.init_from", cfg.model.init_from)]
    if cfg.semantic.kind != "none" and not cfg.semantic.random_init:
        wanted.append(("semantic.path", cfg.semantic.path))
    if cfg.stage == "distill":
        wanted.append(("distill.teacher", cfg.distill.teacher))
    for key, value in wanted:
        if value is not None and not Path(value).expanduser().exists():
            raise FileNotFoundError(f"{key}={value} does not exist; set {key} to a local file")
    if cfg.stage == "distill" and cfg.distill.lpips_weight > 0:
        from vosr.evaluation.metrics import lpips_unavailable_reason

        if (reason := lpips_unavailable_reason()) is not None:
            raise FileNotFoundError(f"distill.lpips_weight={cfg.distill.lpips_weight} needs LPIPS: {reason}; "
                                    "or set distill.lpips_weight=0")
    resolve_sources(cfg.data)  # raises FileNotFoundError naming data.train / data.mix_file
