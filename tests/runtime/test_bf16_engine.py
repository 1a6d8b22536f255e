"""DeepSpeed's bf16 mode (``engine.precision=bf16``) on the CPU over gloo: a real engine, one and two processes.

What runs here: bf16 parameters and gradients, gloo reduce/all-gather of bf16 tensors, fp32 master
weights and AdamW state inside DeepSpeed (ZeRO-1/2/3), the EMA and the raw export following the
fp32 masters, checkpoint save and resume. What does not: NCCL, CUDA bf16 kernels, fused AdamW.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.runtime import bf16_engine_worker
from tests.training.helpers import TINY, read_metrics, tiny_overrides, torchrun
from vosr.config import EngineConfig
from vosr.runtime.checkpoint import complete_checkpoints
from vosr.runtime.engine import build_ds_config


def test_precision_modes_map_to_deepspeed_config():
    from vosr.config import OptimConfig

    on = build_ds_config(EngineConfig(precision="bf16", zero_stage=2), OptimConfig(), 4, 1)
    off = build_ds_config(EngineConfig(precision="bf16_autocast", zero_stage=2), OptimConfig(), 4, 1)
    assert on["bf16"] == {"enabled": True} and off["bf16"] == {"enabled": False}
    with pytest.raises(ValueError, match="engine.zero_stage >= 1"):
        EngineConfig(precision="bf16", zero_stage=0)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_bf16_engine_single_process(stage):
    out = bf16_engine_worker.run(stage)
    bf16_engine_worker.check(out, stage)


@pytest.mark.dist
@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_engine_two_processes(stage):
    """The flat (ZeRO-2) and per-parameter (ZeRO-3) master partitions gathered across two ranks."""
    result = torchrun("tests.runtime.bf16_engine_worker", [str(stage)])
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"OK stage={stage} world=2" in result.stdout


@pytest.mark.dist
@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_training_run_and_resume(photo_shards, tmp_path, stage):
    run_dir = tmp_path / f"bf16_zero{stage}"
    args = ["--config", TINY, *tiny_overrides(photo_shards[0].parent, run_dir, f"engine.zero_stage={stage}",
                                              "engine.precision=bf16", "checkpoint.every_steps=2",
                                              "checkpoint.export_raw=true")]
    first = torchrun("vosr.train", [*args, "optim.max_steps=2"])
    assert first.returncode == 0, first.stderr[-4000:]
    second = torchrun("vosr.train", [*args, "optim.max_steps=4"])
    assert second.returncode == 0, second.stderr[-4000:]
    log = (run_dir / "log.txt").read_text()
    assert "resumed from" in log and "DeepSpeed bf16" in log
    assert [p.name for p in complete_checkpoints(run_dir / "checkpoints")] == ["step_00000002", "step_00000004"]
    ema, raw = load_file(str(run_dir / "ema.safetensors")), load_file(str(run_dir / "model.safetensors"))
    key = "blocks.0.attn.qkv.weight"
    assert ema[key].dtype == torch.float32 and ema[key].shape == raw[key].shape and ema[key].numel() > 0
    assert not torch.equal(raw[key], raw[key].bfloat16().float())  # fp32 masters, not the bf16 copies
    assert not torch.equal(ema[key], raw[key])
    assert sorted(read_metrics(run_dir)) == [1, 2, 3, 4]
