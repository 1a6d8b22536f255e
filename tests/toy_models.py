"""Small conditional velocity nets with the DiT calling convention, for the flow and distillation tests."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ToyVelocity(nn.Module):
    """``conv([cond, x]) * (1 + t)`` plus a semantic term; records each call's batch size and whether r was None."""

    def __init__(self, channels: int, sem_dim: int, seed: int = 7) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.sem_proj = nn.Linear(sem_dim, channels)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        self.calls: list[tuple[int, bool]] = []

    def semantic_term(self, sem: Tensor | None) -> Tensor | float:
        return 0.0 if sem is None else torch.tanh(self.sem_proj(sem).mean(1))[:, :, None, None]

    def forward(self, x_in: Tensor, t: Tensor, sem: Tensor | None, r: Tensor | None = None) -> Tensor:
        self.calls.append((x_in.shape[0], r is None))
        return self.conv(x_in) * (1 + t.view(-1, 1, 1, 1)) + self.semantic_term(sem)


class ToyStudent(ToyVelocity):
    """A nonlinear model of (x, t, r, sem): ``r`` changes the output unless ``r == t``."""

    def forward(self, x_in: Tensor, t: Tensor, sem: Tensor | None, r: Tensor | None = None) -> Tensor:
        self.calls.append((x_in.shape[0], r is None))
        t_b = t.view(-1, 1, 1, 1)
        h = torch.tanh(self.conv(x_in)) * (1 + t_b)
        if r is not None:
            h = h + (t_b - r.view(-1, 1, 1, 1)) * torch.sin(3 * h)
        return h + self.semantic_term(sem)
