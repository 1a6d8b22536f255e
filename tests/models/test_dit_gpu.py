"""VOSRDiT on CUDA: same function as on CPU, bf16 autocast, compiled blocks, checkpointing."""
from __future__ import annotations

import pytest
import torch

from vosr.models.dit import DiTConfig, VOSRDiT

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _model(**kw: object) -> VOSRDiT:
    torch.manual_seed(0)
    model = VOSRDiT(DiTConfig(hidden_size=128, depth=3, num_heads=4, semantic_dim=48, with_r=True, **kw))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def _inputs(device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(2, 8, 24, 40, generator=g), torch.randn(2, 16, 48, generator=g)
    t, r = torch.rand(2, generator=g), torch.rand(2, generator=g)
    return tuple(v.to(device) for v in (x, t, z, r))


def test_cuda_matches_cpu_and_bf16_is_close() -> None:
    model = _model()
    with torch.no_grad():
        ref = model(*_inputs("cpu"))
        model = model.cuda()
        out = model(*_inputs("cuda"))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out_bf16 = model(*_inputs("cuda"))
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)
    assert (out_bf16.float().cpu() - ref).abs().max() < 0.05 * ref.abs().max()


def test_cuda_compile_and_checkpointing() -> None:
    model = _model(grad_checkpointing=True).cuda().train()
    inputs = _inputs("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(*inputs).float().square().mean()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.compile_blocks()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss2 = model(*inputs).float().square().mean()
    loss2.backward()
    torch.testing.assert_close(loss2, loss, atol=2e-2, rtol=2e-2)
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in grads]),
                                                torch.cat([p.grad.flatten() for p in model.parameters()]), dim=0)
    assert cos > 0.99
