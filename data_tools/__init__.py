"""Offline data tools: pack image folders into WebDataset shards (``pack.py``) and verify them (``verify.py``).

Standalone: nothing here imports ``vosr``.
"""
