"""model.prediction: x — the network outputs x0 and the forward returns the velocity through x_t."""
from __future__ import annotations

import torch

from vosr.models.dit import DiTConfig, VOSRDiT


def _pair(**kw) -> tuple[VOSRDiT, VOSRDiT]:
    torch.manual_seed(0)
    base = dict(hidden_size=32, depth=1, num_heads=2, in_channels=6, out_channels=3, input_size=8)
    v_model = VOSRDiT(DiTConfig(**base))
    x_model = VOSRDiT(DiTConfig(**base, prediction="x", **kw))
    x_model.load_state_dict(v_model.state_dict())  # same weights: only the reading of the output differs
    for m in (v_model, x_model):
        torch.nn.init.normal_(m.final_layer.linear.weight, std=0.1)  # a non-zero output
    x_model.final_layer.load_state_dict(v_model.final_layer.state_dict())
    return v_model, x_model


def test_x_prediction_returns_the_velocity_through_x_t() -> None:
    v_model, x_model = _pair(x_min_t=0.05)
    x_in = torch.randn(4, 6, 8, 8)
    t = torch.tensor([1.0, 0.5, 0.2, 0.01])
    with torch.no_grad():
        x0 = v_model(x_in, t, None)  # what the shared network outputs
        v = x_model(x_in, t, None)
    floor = t.clamp(min=0.05).view(-1, 1, 1, 1)
    torch.testing.assert_close(v, (x_in[:, 3:] - x0) / floor)
    # one Euler step from t to 0 with that velocity lands on the network's x0 (t >= x_min_t)
    torch.testing.assert_close(x_in[:3, 3:] - t[:3].view(-1, 1, 1, 1) * v[:3], x0[:3], atol=1e-5, rtol=1e-5)


def test_x_prediction_keeps_the_parameter_names() -> None:
    v_model, x_model = _pair()
    assert list(v_model.state_dict()) == list(x_model.state_dict())


def test_x_residual_adds_the_condition() -> None:
    v_model, x_model = _pair()
    x_model.cfg.prediction = "x_residual"
    x_in = torch.randn(2, 6, 8, 8)
    t = torch.tensor([0.7, 0.3])
    with torch.no_grad():
        out, v = v_model(x_in, t, None), x_model(x_in, t, None)
    torch.testing.assert_close(v, (x_in[:, 3:] - (x_in[:, :3] + out)) / t.view(-1, 1, 1, 1))
