"""The memory model's bookkeeping (pure functions) and the peak meter."""
from __future__ import annotations

import pytest
import torch

from vosr.runtime.memory import PeakMeter, plan_memory, state_bytes, transformer_activation_bytes

P = 1_000_000


def test_zero_stages_shard_what_they_should():
    z0, z1, z2, z3 = (state_bytes(trainable=P, zero_stage=z, world_size=8, precision="fp32") for z in range(4))
    assert z0["optimizer"] == 12 * P and z1["optimizer"] == z2["optimizer"] == z3["optimizer"] == 12 * P / 8
    assert z0["master"] == 0 and z1["master"] == 4 * P / 8
    assert z0["grads"] == 4 * P and z1["grads"] == 4 * P + 4 * P / 8  # + DeepSpeed's flat fp32 copy
    assert z2["grads"] == z3["grads"] == 2 * 4 * P / 8
    assert z2["params"] == 4 * P and z3["params"] == 4 * P / 8
    assert z2["ema"] == 4 * P and z3["ema"] == 4 * P / 8
    assert z2["grad_buckets"] == 2 * 5e8 * 4 and z3["grad_buckets"] == 5e8 * 4  # allocated whole on a GPU
    resident = state_bytes(trainable=P, zero_stage=2, world_size=8, precision="fp32", resident=True)
    assert resident["grad_buckets"] == 4 * P  # on the CPU only the pages the gradients fill


def test_bf16_mode_halves_params_and_grads_and_shards_the_ema():
    fp32 = state_bytes(trainable=P, zero_stage=2, world_size=4, precision="bf16_autocast")
    bf16 = state_bytes(trainable=P, zero_stage=2, world_size=4, precision="bf16")
    assert bf16["params"] == fp32["params"] / 2
    assert bf16["grads"] == 2 * P / 4 + 4 * P / 4  # bf16 partition + DeepSpeed's fp32 copy of it
    assert bf16["ema"] == 4 * P / 4 and fp32["ema"] == 4 * P
    assert bf16["master"] == fp32["master"] and bf16["optimizer"] == fp32["optimizer"]


def test_activations_scale_with_batch_and_shrink_with_checkpointing():
    kw = dict(tokens=256, width=128, depth=8, ffn_hidden=341, cross_tokens=16)
    one = transformer_activation_bytes(micro_batch=1, **kw)
    assert transformer_activation_bytes(micro_batch=4, **kw) == pytest.approx(4 * one)
    ckpt = transformer_activation_bytes(micro_batch=1, checkpointing=True, **kw)
    assert ckpt < one / 3
    plan = plan_memory(trainable=P, frozen_bytes=10.0, activation_bytes=one, zero_stage=2, world_size=1,
                       precision="fp32", resident=True)
    assert plan.total == pytest.approx(sum(v for k, v in plan.as_dict().items() if k != "total"))
    assert plan.allocated_by_steps() == plan.activations + plan.grads + plan.grad_buckets + plan.optimizer


def test_peak_meter_sees_a_cpu_allocation():
    meter = PeakMeter(torch.device("cpu")).start()
    meter.mark()
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
    del x
    assert meter.since_mark() >= 0.9 * 64 * 2**20 and meter.peak() >= meter.since_mark() - 2**20


def test_launch_dry_run_prints_the_memory_model(capsys, tmp_path, photo_shards):
    from tests.training.helpers import TINY
    from vosr import launch

    assert launch.main(["teacher", "--config", TINY, "--dry-run", "--cluster", "local", "--gpus-per-node", "0",
                        "--tasks-per-node", "2", f"run_dir={tmp_path / 'r'}",
                        f"data.train=[{{shards: '{photo_shards[0].parent}'}}]"]) == 0
    out = capsys.readouterr().out
    assert "memory model per rank: ZeRO-2, 2 ranks" in out and "activations" in out and "total" in out
