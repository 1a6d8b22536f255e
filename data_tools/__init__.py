"""Offline data tools: pack image folders into WebDataset shards (``pack.py``) and verify them (``verify.py``).

Packing, verification and ``photos.py`` are standalone (they do not import ``vosr``);
``preview.py`` shows the training stream's pairs and so imports ``vosr``.
"""
