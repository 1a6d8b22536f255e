"""Running anything at scale, knowing nothing about super-resolution: distributed set-up, the
DeepSpeed engine, EMA, checkpoints, preemption, experiment tracking and Slurm submission."""
