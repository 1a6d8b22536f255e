"""A real ``TrainEngine`` in DeepSpeed's bf16 mode on this process (1 process, or a rank under torchrun).

``python -m tests.runtime.bf16_engine_worker STAGE`` trains a small MLP a few steps and checks, on
every rank, that the module holds bf16 copies while the EMA and the raw export follow the fp32
master weights; prints ``OK stage=S world=W`` on rank 0. Used by tests/runtime/test_bf16_engine.py.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from vosr.config import EngineConfig, OptimConfig
from vosr.runtime import distributed
from vosr.runtime.engine import TrainEngine


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    # Odd sizes, so ZeRO's flat groups need padding and per-parameter alignment.
    return nn.Sequential(nn.Linear(13, 37), nn.GELU(), nn.LayerNorm(37), nn.Linear(37, 5))


def run(stage: int, steps: int = 4) -> dict:
    info = distributed.world_info_from_env()
    distributed.init_distributed(info, "gloo")
    try:
        engine = TrainEngine(tiny_model(), EngineConfig(zero_stage=stage, precision="bf16"),
                             OptimConfig(lr=1e-2, ema_decay=0.5, grad_clip=1.0), micro_batch=4, world=info,
                             device=torch.device("cpu"))
        gen = torch.Generator().manual_seed(1 + info.rank)
        for _ in range(steps):
            x = torch.randn(4, 13, generator=gen)
            with engine.autocast():
                loss = engine.forward_model()(x).float().pow(2).mean()
            engine.backward_step(loss)
        dtypes = {str(p.dtype) for p in engine.module.parameters()}
        master = engine.master_state_dict()  # collective
        raw = engine.full_state_dict()  # collective
        ema = engine.ema.full_state_dict(engine.module)  # collective
        # The EMA with decay 0.5 after n updates from the masters m_k: shadow = sum 0.5^(n-k+1) m_k + 0.5^n m_0.
        # Check instead what must hold whatever the history: one more update with decay 0 gives the master.
        engine.ema.decay, engine.ema.warmup = 0.0, False
        engine.ema.update()
        ema_now = engine.ema.full_state_dict(engine.module)
        out = {"dtypes": dtypes, "master": master, "raw": raw, "ema": ema, "ema_now": ema_now,
               "module": {k: v.detach().float().clone() for k, v in engine.module.state_dict().items()}
               if stage < 3 else None, "ema_state": engine.ema.state_dict(), "rank": info.rank,
               "world": info.world_size}
        return out
    finally:
        distributed.destroy()


def check(out: dict, stage: int) -> None:
    assert out["dtypes"] == {"torch.bfloat16"}, out["dtypes"]
    master, raw, ema, ema_now = out["master"], out["raw"], out["ema"], out["ema_now"]
    names = [n for n, _ in tiny_model().named_parameters()]
    assert set(names) <= set(master) and set(master) == set(ema) == set(raw)
    shapes = dict((n, p.shape) for n, p in tiny_model().named_parameters())
    for name in names:
        assert master[name].dtype == torch.float32 and master[name].shape == shapes[name], name
        torch.testing.assert_close(raw[name], master[name], rtol=0, atol=0)
        torch.testing.assert_close(ema_now[name], master[name], rtol=0, atol=0)  # the EMA follows the master
        assert not torch.equal(ema[name], master[name]) or name.endswith("bias"), name  # a real average
    if out["module"] is not None:  # ZeRO-1/2: the module's bf16 copies are the rounded masters
        rounded = out["module"]
        key = "0.weight"
        torch.testing.assert_close(rounded[key], master[key].bfloat16().float(), rtol=0, atol=0)
        assert not torch.equal(rounded[key], master[key]), "master weights should not be bf16-representable"


def main(argv: list[str]) -> int:
    stage = int(argv[0])
    out = run(stage)
    check(out, stage)
    if out["rank"] == 0:
        print(f"OK stage={stage} world={out['world']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
