"""DISTS (Ding et al., TPAMI 2020) through its authors' own module, ``DISTS_pytorch.DISTS``.

The module builds its VGG16 with torchvision's ImageNet weights, which torchvision reads from
``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`` (installed by scripts/setup.sh; checked first so
torchvision never downloads), and is constructed with ``load_weights=False`` so that its learned
α/β are read here from the installed ``DISTS_weights-f5e65c96.pth`` (the package's ``weights.pt``)
instead of the package's ``sys.prefix`` copy; they are checked to have the module's shapes before
use, so random α/β can never score. No resizing: full-resolution inputs, as the authors' and pyiqa's
DISTS, whose published values the tests reproduce.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from vosr.evaluation import weights


def load_alpha_beta() -> dict[str, Tensor]:
    """The learned α/β ((1, 1475, 1, 1) each); FileNotFoundError naming the file when missing."""
    path = weights.installed_file(weights.DISTS_FILE)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or set(state) != {"alpha", "beta"}:
        raise ValueError(f"{path} is not DISTS' alpha/beta file (keys {list(state)}); {weights.SETUP_HINT}")
    return state


class DISTSMetric(nn.Module):
    """Frozen DISTS; ``forward(pred, gt)`` with (B, 3, H, W) in [0, 1] returns (B,) distances (0 = identical)."""

    def __init__(self) -> None:
        super().__init__()
        weights.installed_file(weights.VGG16_FILE)  # else torchvision would download it
        from DISTS_pytorch import DISTS

        state = load_alpha_beta()
        # fork_rng: the module draws its placeholder alpha/beta (replaced below) from the global generator.
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained is deprecated" from DISTS
            self.net = DISTS(load_weights=False)
        for key in ("alpha", "beta"):
            param = getattr(self.net, key)
            if state[key].shape != param.shape:
                raise ValueError(f"DISTS {key} has shape {tuple(state[key].shape)}, the module expects "
                                 f"{tuple(param.shape)}; {weights.SETUP_HINT}")
            param.data = state[key].float()
        self.net.eval().requires_grad_(False)

    def forward(self, pred: Tensor, gt: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] each -> (B,) DISTS."""
        return self.net(pred, gt).reshape(-1)
