"""vosr: vision-only generative super-resolution, trained from scratch and distilled to one step.

Entry points: ``vosr.train``, ``vosr.distill``, ``vosr.infer``, ``vosr.evaluate``, ``vosr.launch``;
the README's "Where things are" table maps every sub-package to what it owns.
"""
