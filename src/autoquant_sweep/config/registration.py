"""Registration of the schemas and resolvers with Hydra, apart from the schemas themselves.

Kept out of ``schema.py``: registering needs the search space's resolvers, whose module reads the config
groups, which are typed by ``schema.py``; here nothing imports back.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from autoquant_sweep.config.schema import SensitivityConfig


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore and the project's resolvers (idempotent)."""
    from autoquant_sweep.search.space import register_resolvers

    register_resolvers()
    ConfigStore.instance().store(name="sensitivity_schema", node=SensitivityConfig, replace=True)
