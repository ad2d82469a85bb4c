"""MLflow tracking: store resolution, per-run logging, result cache, sweep callback, registry, CLI.

Every module imports ``mlflow`` lazily (inside functions), so ``tracking=off`` and bad-input paths
stay fast.
"""
