"""Properties of the rectified-flow objective and samplers (METHOD.md §4) on small toy models."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor, nn

from tests import toy_models
from vosr.config.run import FlowConfig
from vosr.method.flow import (
    flow_loss,
    guided_velocity,
    interpolate,
    noise_condition,
    partial_condition,
    sample_euler,
    sample_one_step,
    sample_time,
    weak_anchor,
    zero_semantic,
)

B, C, H, W, N, D = 3, 4, 8, 8, 5, 6


ToyVelocity = functools.partial(toy_models.ToyVelocity, C, D)


class ConstantVelocity(nn.Module):
    """The exact velocity ``eps - x0`` of the straight path from one data point x0 to one noise eps."""

    def __init__(self, x0: Tensor, eps: Tensor) -> None:
        super().__init__()
        self.v = eps - x0

    def forward(self, x_in: Tensor, t: Tensor, sem: Tensor | None, r: Tensor | None = None) -> Tensor:
        if r is not None:  # the one-step sampler must ask for the whole interval 1 -> 0
            assert torch.all(t == 1) and torch.all(r == 0)
        return self.v.repeat(x_in.shape[0] // self.v.shape[0], 1, 1, 1)


class OracleVelocity(nn.Module):
    """Knows the clean latent: on the path, ``v = eps - x0 = (x_t - x0) / t``."""

    def __init__(self, x0: Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, x_in: Tensor, t: Tensor, sem: Tensor | None, r: Tensor | None = None) -> Tensor:
        x_t = x_in[:, self.x0.shape[1]:]
        return (x_t - self.x0) / t.to(x_t.dtype).view(-1, 1, 1, 1)


def _latents(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    z_hq = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    z_lq = z_hq + 0.3 * torch.randn(B, C, H, W, generator=g, dtype=dtype)
    sem = torch.randn(B, N, D, generator=g, dtype=dtype)
    return z_hq, z_lq, sem


def test_path_endpoints_and_target() -> None:
    x0, eps, _ = _latents()
    assert torch.equal(interpolate(x0, eps, torch.zeros(B)), x0)
    assert torch.equal(interpolate(x0, eps, torch.ones(B)), eps)
    t = torch.tensor([0.0, 0.5, 1.0])
    x_t = interpolate(x0, eps, t)
    torch.testing.assert_close(x_t[1], 0.5 * (x0[1] + eps[1]))
    # d x_t / dt is the target velocity eps - x0
    torch.testing.assert_close(interpolate(x0, eps, t + 0.25) - x_t, 0.25 * (eps - x0))


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_sample_time_range_and_generator(kind: str) -> None:
    cfg = FlowConfig(time_sampling=kind)
    t = sample_time(20000, cfg, torch.Generator().manual_seed(0), "cpu")
    assert t.shape == (20000,) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) < 1.0
    assert abs(float(t.mean()) - 0.5) < 0.01
    again = sample_time(20000, cfg, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(t, again)
    if kind == "uniform":
        assert abs(float(t.var()) - 1 / 12) < 0.005


def test_flow_loss_zero_for_oracle_and_positive_otherwise() -> None:
    z_hq, z_lq, sem = _latents(dtype=torch.float64)
    cfg = FlowConfig(time_sampling="logit_normal")
    loss, stats = flow_loss(OracleVelocity(z_hq), z_hq, z_lq, sem, cfg, torch.Generator().manual_seed(1))
    assert float(loss) < 1e-12 and stats["loss/flow"] < 1e-12
    toy = ToyVelocity().double()
    loss, stats = flow_loss(toy, z_hq, z_lq, sem, cfg, torch.Generator().manual_seed(1))
    assert loss.requires_grad and float(loss.detach()) > 0.1
    loss.backward()
    assert toy.conv.weight.grad is not None and toy.calls == [(B, True)]
    assert set(stats) == {"loss/flow", "flow/weak_fraction"}


def test_flow_loss_reproducible_and_shape_checked() -> None:
    z_hq, z_lq, sem = _latents()
    cfg = FlowConfig()
    a, _ = flow_loss(ToyVelocity(), z_hq, z_lq, sem, cfg, torch.Generator().manual_seed(3))
    b, _ = flow_loss(ToyVelocity(), z_hq, z_lq, sem, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    flow_loss(ToyVelocity(), z_hq, z_lq, None, cfg, None)  # semantic encoder off, global RNG
    with pytest.raises(ValueError, match="data.scale"):
        flow_loss(ToyVelocity(), z_hq, z_lq[..., :4], sem, cfg, None)


def test_spherical_condition_noise_keeps_unit_variance() -> None:
    lq = torch.randn(4000, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for mean in (5.0, 0.0, -2.0):
        c = noise_condition(lq, FlowConfig(cond_noise_mean=mean), torch.Generator().manual_seed(1))
        assert c.shape == lq.shape
        assert abs(float(c.var()) - 1.0) < 0.01 and abs(float(c.mean())) < 0.01
    # default a = sigmoid(N(5, 1)) ~ 0.99: the condition stays close to lq
    c = noise_condition(lq, FlowConfig(), torch.Generator().manual_seed(1))
    assert float(torch.nn.functional.cosine_similarity(c.flatten(1), lq.flatten(1)).mean()) > 0.95


def test_partial_condition_weak_fraction_and_contents() -> None:
    batch = 20000
    lq = torch.randn(batch, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    sem = torch.randn(batch, 2, 3, generator=torch.Generator().manual_seed(1))
    cfg = FlowConfig(cfg_ratio=0.1, weak_min=0.05, weak_max=0.25)
    conds = partial_condition(lq, sem, cfg, torch.Generator().manual_seed(2))
    weak = conds.weak
    assert weak.dtype == torch.bool and abs(float(weak.float().mean()) - 0.1) < 0.01
    assert torch.all(conds.sem[weak] == 0) and torch.equal(conds.sem[~weak], sem[~weak])
    w = (conds.cond[weak] / lq[weak]).flatten(1)  # the weak anchor is w * lq with one w per sample
    torch.testing.assert_close(w, w[:, :1].expand_as(w))
    assert float(w.min()) >= 0.05 - 1e-6 and float(w.max()) <= 0.25 + 1e-6
    assert not torch.equal(conds.cond[~weak], lq[~weak])  # the rest carry spherical noise
    assert partial_condition(lq, None, cfg, None).sem is None
    assert partial_condition(lq, sem, FlowConfig(cfg_ratio=0.0), None).weak.sum() == 0


def test_weak_anchor_and_zero_semantic() -> None:
    _, lq, sem = _latents()
    torch.testing.assert_close(weak_anchor(lq, 0.1), 0.1 * lq)
    w = torch.tensor([0.1, 0.2, 0.3])
    torch.testing.assert_close(weak_anchor(lq, w)[2], 0.3 * lq[2])
    assert zero_semantic(None) is None and torch.equal(zero_semantic(sem), torch.zeros_like(sem))


def test_guidance_one_is_conditional_only_in_one_forward() -> None:
    x_t, z_lq, sem = _latents()
    t = torch.tensor([0.9, 0.5, 0.1])
    model = ToyVelocity()
    v = guided_velocity(model, x_t, t, z_lq, sem, guidance=1.0, weak_anchor=0.15)
    assert model.calls == [(B, True)]
    torch.testing.assert_close(v, model(torch.cat([z_lq, x_t], 1), t, sem, None))


@pytest.mark.parametrize("sem_on", [True, False])
def test_guidance_combines_branches_in_one_batched_forward(sem_on: bool) -> None:
    x_t, z_lq, sem = _latents()
    sem = sem if sem_on else None
    t = torch.tensor([0.9, 0.5, 0.1])
    model = ToyVelocity()
    v = guided_velocity(model, x_t, t, z_lq, sem, guidance=-0.5, weak_anchor=0.15)
    assert model.calls == [(2 * B, True)]
    v_cond = model(torch.cat([z_lq, x_t], 1), t, sem, None)
    v_weak = model(torch.cat([0.15 * z_lq, x_t], 1), t, zero_semantic(sem), None)
    torch.testing.assert_close(v, v_weak - 0.5 * (v_cond - v_weak), atol=1e-5, rtol=1e-5)
    v0 = guided_velocity(model, x_t, t, z_lq, sem, guidance=0.0, weak_anchor=0.15)
    torch.testing.assert_close(v0, v_weak)


@pytest.mark.parametrize("steps", [1, 3, 25])
@pytest.mark.parametrize("guidance", [1.0, -0.5])
def test_euler_exact_on_linear_flow(steps: int, guidance: float) -> None:
    x0, z_lq, sem = _latents(dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out = sample_euler(ConstantVelocity(x0, eps), z_lq, sem, eps, steps=steps, guidance=guidance,
                       weak_anchor=0.15, progress=steps == 3)
    torch.testing.assert_close(out, x0, atol=1e-12, rtol=0)


def test_one_euler_step_with_exact_velocity_reaches_data() -> None:
    x0, z_lq, sem = _latents(dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out = sample_euler(OracleVelocity(x0), z_lq, sem, eps, steps=1, guidance=1.0, weak_anchor=0.15)
    torch.testing.assert_close(out, x0, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="flow.sample_steps"):
        sample_euler(OracleVelocity(x0), z_lq, sem, eps, steps=0, guidance=1.0, weak_anchor=0.15)


def test_guidance_one_sampler_equals_conditional_only_sampler() -> None:
    _, z_lq, sem = _latents()
    eps = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(4))
    model = ToyVelocity()
    out = sample_euler(model, z_lq, sem, eps, steps=4, guidance=1.0, weak_anchor=0.15)
    assert all(call == (B, True) for call in model.calls) and len(model.calls) == 4
    x = eps
    for k in range(4):
        t = torch.full((B,), 1 - k / 4)
        x = x - 0.25 * model(torch.cat([z_lq, x], 1), t, sem, None)
    torch.testing.assert_close(out, x)


def test_sample_one_step_exact_for_oracle() -> None:
    x0, z_lq, sem = _latents(dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    torch.testing.assert_close(sample_one_step(ConstantVelocity(x0, eps), z_lq, sem, eps), x0, atol=1e-12, rtol=0)
