"""Optuna search over dtype pair x granularity: search space, study naming, study artifacts."""
