"""Training data: shard sources and mixes, the streaming crop pipeline, and the batched
Real-ESRGAN degradation with its kernels. Knows nothing about models."""
