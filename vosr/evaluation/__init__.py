"""Measuring upscalers: image-quality metrics, reproducible evaluation sets, scoring folders,
and the reports and comparison sheets ``vosr.evaluate`` writes."""
