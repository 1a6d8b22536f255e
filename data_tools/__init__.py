"""Offline data tools: pack image folders into WebDataset shards (``pack.py``), verify them
(``verify.py``), preview training pairs (``preview.py``) and find demo photos (``photos.py``).

Installed beside ``vosr`` and still run as scripts (``python data_tools/pack.py``); images are read
and converted through ``vosr.images``, so packing and inference agree on every odd mode.
"""
