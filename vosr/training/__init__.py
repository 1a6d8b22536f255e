"""Training runs: the command line, the run's set-up, the teacher and student stages, the loop
that steps the engine, validation during training and the exported-weights format."""
