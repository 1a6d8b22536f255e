"""Runtime: distributed set-up, DeepSpeed engine, EMA, checkpoints, metrics, preemption."""
