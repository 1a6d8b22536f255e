"""Upscaling with a trained model: the pipeline (encode, sample, decode), tiling for any size,
colour correction, and the file handling behind ``vosr.infer``."""
