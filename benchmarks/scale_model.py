"""Scaling model: step time, samples/s, efficiency and GPU-hours of ZeRO data parallelism from 1 to 512 GPUs.

From a single-device step time (measured, or the default: the 0.5B teacher's 79.8 samples/s at micro-batch 16
on one H100) and stated network figures it predicts, for each world size and ZeRO stage, the bytes each GPU
sends per optimizer step, the step time, samples/s, the scaling efficiency, the H100-hours of the paper's
teacher schedule (400k steps x global batch 512) and distillation schedule (100k steps x global batch 16),
and the data side: crops/s each node must stream and the CPU cores that takes at the measured streaming
rates (README: 60 crops per CPU-second per worker from whole-image shards, 314 from ``pack.py --tile 768``
shards, ``crops_per_image`` 4). The model and its assumptions: docs/scaling.md.

    python benchmarks/scale_model.py                                   # the defaults (H100 nodes, 0.5B, bf16)
    python benchmarks/scale_model.py --samples-per-s 27.3 --micro-batch 8 --preset 1.4B
    python benchmarks/scale_model.py --measure                         # time the tiny model here (CPU)
    python benchmarks/scale_model.py --ib-gbps 200 --latency-us 10     # a slower fabric
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True, kw_only=True)
class Network:
    gpus_per_node: int = 8
    nvlink_gbps: float = 450.0
    """Per-GPU NVLink bandwidth in GB/s, one direction (H100 SXM: 900 GB/s both ways)."""
    ib_gbps: float = 400.0
    """Inter-node bandwidth per node in GB/s, one direction (8 x 400 Gb/s NDR = 400 GB/s)."""
    latency_us: float = 5.0
    """Per hop of a ring collective across nodes (NVLink hops: a fifth of it)."""
    efficiency: float = 0.8
    """Fraction of the link bandwidth a collective achieves (NCCL bus bandwidth / link)."""


@dataclass(frozen=True, kw_only=True)
class Workload:
    params: float
    """Trained parameters."""
    step_s: float
    """Compute time of one micro-batch step (forward + backward) on one GPU at ``micro_batch``."""
    micro_batch: int
    global_batch: int
    grad_bytes: int = 2
    """Bytes per gradient / parameter element on the wire: 2 in DeepSpeed's bf16 mode, 4 with fp32 params."""
    depth: int = 28
    """Transformer blocks (ZeRO-3 gathers parameters per block: one collective each way)."""
    overlap: float = 0.9
    """Fraction of the backward (ZeRO-2 reduce-scatter) or of the whole step (ZeRO-3 prefetched gathers) that
    communication can hide behind; ZeRO-1 reduces after the backward (not overlapped)."""


def ring_time(bytes_per_gpu: float, world: int, net: Network) -> float:
    """Seconds of one ring reduce-scatter or all-gather that moves ``bytes_per_gpu`` x (W-1)/W per GPU."""
    if world <= 1:
        return 0.0
    nodes = math.ceil(world / net.gpus_per_node)
    if nodes == 1:
        bw, hop = net.nvlink_gbps, net.latency_us / 5
    else:  # the ring crosses nodes: each GPU's share of the node's inter-node links is the bottleneck
        bw, hop = net.ib_gbps / net.gpus_per_node, net.latency_us
    return bytes_per_gpu * (world - 1) / world / (bw * GB * net.efficiency) + (world - 1) * hop * 1e-6


@dataclass(frozen=True, kw_only=True)
class Prediction:
    world: int
    zero: int
    micro_batch: int
    accum: int
    comm_gb: float
    """GB each GPU sends per optimizer step."""
    compute_s: float
    exposed_comm_s: float
    step_s: float
    samples_per_s: float
    efficiency: float


def predict(work: Workload, net: Network, world: int, zero: int) -> Prediction | None:
    """One configuration; None when the global batch cannot be split over ``world`` GPUs."""
    per_gpu = work.global_batch / world
    if per_gpu < 1 or per_gpu != int(per_gpu):
        return None
    micro = min(work.micro_batch, int(per_gpu))
    while per_gpu % micro:
        micro -= 1
    accum = int(per_gpu) // micro
    t_micro = work.step_s * micro / work.micro_batch  # compute scales with the micro-batch (see docs)
    compute = accum * t_micro
    grads = work.params * work.grad_bytes  # one full set of gradients or parameters on the wire
    backward = 2 / 3 * t_micro
    if zero <= 1:  # gradients accumulate locally; one reduce-scatter (+ all-gather of the new weights) per step
        volume, exposed = 2 * grads, 2 * ring_time(grads, world, net)
    elif zero == 2:  # a reduce-scatter each micro-batch, overlapped with its backward; one all-gather per step
        rs = ring_time(grads, world, net)
        ag = ring_time(grads, world, net)
        volume = (accum + 1) * grads
        exposed = accum * max(0.0, rs - work.overlap * backward) + ag
    else:  # parameters gathered for the forward and again for the backward, gradients reduce-scattered
        per_micro = 3 * ring_time(grads, world, net) + 2 * work.depth * ring_time(0.0, world, net)
        volume = 3 * accum * grads
        exposed = accum * max(0.0, per_micro - work.overlap * t_micro)
    volume *= (world - 1) / world if world > 1 else 0.0
    step = compute + exposed
    samples = work.global_batch / step
    single = work.micro_batch / work.step_s
    return Prediction(world=world, zero=zero, micro_batch=micro, accum=accum, comm_gb=volume / GB,
                      compute_s=compute, exposed_comm_s=exposed, step_s=step, samples_per_s=samples,
                      efficiency=samples / (world * single))


def gpu_hours(pred: Prediction, steps: int) -> float:
    return steps * pred.step_s * pred.world / 3600


def preset_params(preset: str, with_r: bool = False) -> tuple[int, int]:
    """(parameters, depth) of a vosr preset, built on the meta device (SD-VAE latents, DINOv2 tokens)."""
    import torch

    from vosr.config import ModelConfig
    from vosr.models.dit import build_dit

    semantic_dim = {"tiny": 48, "0.5B": 768, "1.4B": 1024}[preset]
    channels = {"tiny": 48, "0.5B": 4, "1.4B": 16}[preset]
    with torch.device("meta"):
        model = build_dit(ModelConfig(preset=preset, with_r=with_r), latent_channels=channels,
                          semantic_dim=semantic_dim, input_size=16 if preset == "tiny" else 64)
    return model.num_params(), model.cfg.depth


def measure_tiny_step() -> tuple[float, int]:
    """Seconds of one forward + backward of the tiny preset at micro-batch 4 here, and that micro-batch."""
    import time

    import torch

    from vosr.config import ModelConfig
    from vosr.models.dit import build_dit

    model = build_dit(ModelConfig(preset="tiny"), latent_channels=48, semantic_dim=48, input_size=16)
    x, t, z = torch.randn(4, 96, 16, 16), torch.rand(4), torch.randn(4, 16, 48)
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        model(x, t, z).square().mean().backward()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2], 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="0.5B", choices=("tiny", "0.5B", "1.4B"))
    p.add_argument("--samples-per-s", type=float, default=79.8, help="measured single-GPU training samples/s")
    p.add_argument("--step-time", type=float, default=None, help="or: seconds per micro-batch step on one GPU")
    p.add_argument("--measure", action="store_true", help="measure the tiny preset's step here instead")
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--global-batch", type=int, default=512)
    p.add_argument("--precision", choices=("bf16", "bf16_autocast", "fp32"), default="bf16")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--nvlink-gbps", type=float, default=450.0, help="per GPU, GB/s one way")
    p.add_argument("--ib-gbps", type=float, default=400.0, help="per node, GB/s one way")
    p.add_argument("--latency-us", type=float, default=5.0)
    p.add_argument("--overlap", type=float, default=0.9)
    p.add_argument("--teacher-steps", type=int, default=400_000)
    p.add_argument("--distill-steps", type=int, default=100_000)
    p.add_argument("--distill-batch", type=int, default=16)
    p.add_argument("--distill-cost", type=float, default=10 / 3,
                   help="student step cost per sample / teacher's (FLOPs: 10 forward-equivalents vs 3)")
    p.add_argument("--crops-per-cpu-s", type=float, nargs=2, default=(60.0, 314.0),
                   metavar=("WHOLE", "TILED"), help="streaming rate per worker core (README)")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params, depth = preset_params(args.preset)
    if args.measure:
        step_s, micro = measure_tiny_step()
        params, depth = preset_params("tiny")
        source = f"measured here: tiny preset, {micro} samples in {step_s * 1e3:.1f} ms (CPU time)"
    else:
        micro = args.micro_batch
        step_s = args.step_time if args.step_time is not None else micro / args.samples_per_s
        source = f"given: {micro / step_s:.1f} samples/s per GPU at micro-batch {micro}"
    net = Network(gpus_per_node=args.gpus_per_node, nvlink_gbps=args.nvlink_gbps, ib_gbps=args.ib_gbps,
                  latency_us=args.latency_us)
    grad_bytes = 2 if args.precision == "bf16" else 4
    teacher = Workload(params=params, step_s=step_s, micro_batch=micro, global_batch=args.global_batch,
                       grad_bytes=grad_bytes, depth=depth, overlap=args.overlap)
    student = Workload(params=params, step_s=step_s * args.distill_cost, micro_batch=micro,
                       global_batch=args.distill_batch, grad_bytes=grad_bytes, depth=depth, overlap=args.overlap)
    print(f"# scaling model: {args.preset} ({params / 1e6:.0f}M params, depth {depth}), {args.precision} "
          f"({grad_bytes} B/element on the wire); {source}")
    print(f"# network: {net.gpus_per_node} GPUs/node, NVLink {net.nvlink_gbps:g} GB/s/GPU, inter-node "
          f"{net.ib_gbps:g} GB/s/node, {net.latency_us:g} us/hop, {net.efficiency:.0%} of link; overlap "
          f"{args.overlap:.0%}")
    print(f"# teacher: {args.teacher_steps} steps x global batch {args.global_batch}; distillation: "
          f"{args.distill_steps} steps x {args.distill_batch} (x{args.distill_cost:.2f} cost per sample)")
    head = (f"{'GPUs':>5} {'ZeRO':>4} {'mb x acc':>8} {'comm GB':>8} {'step s':>7} {'samples/s':>9} {'eff':>5} "
            f"{'teacher H100-h':>14} {'distill H100-h':>14} {'crops/s/node':>12} {'cores whole/tiled':>17}")
    print(head)
    for world in args.worlds:
        for zero in (1, 2, 3):
            pred = predict(teacher, net, world, zero)
            if pred is None:
                continue
            dist = predict(student, net, world, zero) if world <= args.distill_batch else None
            nodes = math.ceil(world / net.gpus_per_node)
            crops_node = pred.samples_per_s / nodes
            cores = " / ".join(f"{crops_node / r:.1f}" for r in args.crops_per_cpu_s)
            dist_h = f"{gpu_hours(dist, args.distill_steps):14.0f}" if dist else f"{'-':>14}"
            print(f"{world:>5} {zero:>4} {pred.micro_batch:>3} x{pred.accum:<3} {pred.comm_gb:8.2f} "
                  f"{pred.step_s:7.3f} {pred.samples_per_s:9.1f} {pred.efficiency:5.2f} "
                  f"{gpu_hours(pred, args.teacher_steps):14.0f} {dist_h} {crops_node:12.0f} {cores:>17}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
