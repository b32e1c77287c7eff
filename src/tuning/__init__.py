"""Optuna search at the pipeline's own budget: the space from `tune.space` (space), the
objective, pruning ladder and study loop (runner), per-trial seeded sampling (sampler), the
shared storage and its outages (storage, retry), worker processes on one machine (processes) and
the table of best trials (results). The command is `python -m src.tune` (src/tune.py).
"""
