"""The fast one-step path: ``torch.compile`` of the student and the encoders, and a CUDA graph at batch 1.

``compile_pipeline`` compiles the transformer, the autoencoder's ``encode``/``decode`` and the semantic
encoder in place, with static shapes: each new input shape compiles once and is cached (a tiled image
reuses its tile shape). On CUDA, ``OneStepGraph`` captures the whole one-step pipeline of one padded input
shape (encode, semantic tokens, the student, decode) in one CUDA graph, so a batch-1 image costs one
graph replay instead of hundreds of kernel launches; ``SRPipeline.upscale`` uses it when the image fits
one tile, the batch is 1, the model is a one-step student and ``cuda_graphs`` is on. CUDA graphs need a
GPU: on the CPU that path is never taken (and is not tested here).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vosr.method.flow import sample_one_step

if TYPE_CHECKING:
    from vosr.inference.pipeline import SRPipeline

logger = logging.getLogger(__name__)


def compile_pipeline(pipe: SRPipeline, *, backend: str = "inductor", mode: str | None = None,
                     cuda_graphs: bool | None = None) -> None:
    """Compile ``pipe``'s transformer and encoders in place (once per input shape).

    ``backend="eager"`` traces with dynamo but runs the ops eagerly (seconds; what the CPU tests use).
    ``cuda_graphs`` (default: on when the pipeline is on CUDA) enables ``OneStepGraph`` at batch 1.
    """
    kw = {"backend": backend, "dynamic": False, **({"mode": mode} if mode else {})}
    pipe.model = torch.compile(pipe.model, **kw)
    ae = pipe.autoencoder
    ae.encode = torch.compile(ae.encode, **kw)
    ae.decode = torch.compile(ae.decode, **kw)
    if pipe.semantic is not None:
        pipe.semantic = torch.compile(pipe.semantic, **kw)
    pipe.cuda_graphs = pipe.device.type == "cuda" if cuda_graphs is None else cuda_graphs
    pipe.graphs = {}
    logger.info("compiled the transformer and encoders (backend %s%s); CUDA graphs at batch 1: %s", backend,
                f", mode {mode}" if mode else "", pipe.cuda_graphs)


class OneStepGraph:
    """One padded input shape's whole one-step pipeline in a CUDA graph (static input and noise buffers).

    ``__call__(padded (1, 3, H, W), noise (1, C, H/d, W/d))`` copies both into the captured buffers, replays
    the graph and returns the decoded image (1, 3, H, W) in fp32, before cropping and colour fixes.
    """

    def __init__(self, pipe: SRPipeline, padded: Tensor, noise: Tensor, warmup: int = 3) -> None:
        if pipe.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.pipe = pipe
        self.static_in = padded.detach().clone()
        self.static_noise = noise.detach().clone()
        side = torch.cuda.Stream(pipe.device)
        side.wait_stream(torch.cuda.current_stream(pipe.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(warmup):  # compile and let the allocator settle outside the capture
                self._run()
        torch.cuda.current_stream(pipe.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.static_out = self._run()

    def _run(self) -> Tensor:
        pipe = self.pipe
        z_lq = pipe.autoencoder.encode(self.static_in).float().to(pipe.dtype)
        sem = pipe.semantic(self.static_in.to(pipe.dtype)).to(pipe.dtype) if pipe.semantic is not None else None
        z0 = sample_one_step(pipe.model, z_lq, sem, self.static_noise)
        return pipe.autoencoder.decode(z0.float()).float()

    def __call__(self, padded: Tensor, noise: Tensor) -> Tensor:
        self.static_in.copy_(padded)
        self.static_noise.copy_(noise)
        self.graph.replay()
        return self.static_out.clone()


def graph_for(pipe: SRPipeline, padded: Tensor, noise: Tensor) -> OneStepGraph:
    """The cached graph of this input shape (captured on first use)."""
    key = (tuple(padded.shape), tuple(noise.shape))
    if key not in pipe.graphs:
        logger.info("capturing the one-step pipeline for input %s in a CUDA graph", key[0])
        pipe.graphs[key] = OneStepGraph(pipe, padded, noise)
    return pipe.graphs[key]


def can_use_graph(pipe: SRPipeline, padded: Tensor, *, student: bool, steps: int, single_tile: bool) -> bool:
    """The CUDA-graph path applies: CUDA, graphs on, batch 1, a one-step student, one tile, no AE tiling."""
    return (bool(getattr(pipe, "cuda_graphs", False)) and pipe.device.type == "cuda" and padded.shape[0] == 1
            and student and steps == 1 and single_tile)
