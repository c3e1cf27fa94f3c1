"""Grad-TAG: task affinity from projected gradients (Li, Sharma, Zhang, KDD 2024) — the algorithm as importable functions."""
