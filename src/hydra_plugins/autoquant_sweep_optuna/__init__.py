"""Hydra discovers sweepers in the ``hydra_plugins`` namespace: re-export the project's Optuna sweeper."""

from autoquant_sweep.search.sweeper import AutoquantOptunaSweeper

__all__ = ["AutoquantOptunaSweeper"]
