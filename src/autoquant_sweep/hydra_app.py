"""The Hydra app: one sensitivity run, or a sweep with ``-m``; the ``autoquant-sweep-run`` command.

``experiments/sensitivity.py`` is a thin entry to the same ``main``. The config tree ships inside the
package (``autoquant_sweep/conf``, package data of the wheel), so a non-editable ``pip install .`` runs
the main job from any folder; runs write under the working directory (``conf/paths/default.yaml``).

    autoquant-sweep-run quant_pair=wint4_afp16 quant_granularity=w_group64
    autoquant-sweep-run -m hydra/sweeper=optuna
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from autoquant_sweep.app import sensitivity_task
from autoquant_sweep.config import register_configs
from autoquant_sweep.paths import conf_dir

register_configs()
# absolute, so the app composes the same way from a checkout, a wheel, or imported (benchmarks)
CONF_DIR = str(conf_dir())

# What config-selected `_target_`s may instantiate (Hydra 1.4 execution whitelist): the project's own
# classes (callback, sweeper), Hydra's launcher / sweeper plugins, Optuna samplers, logging handlers.
EXECUTION_WHITELIST = ["autoquant_sweep.*", "hydra_plugins.*", "optuna.samplers.*", "logging.*"]


@hydra.main(config_path=CONF_DIR, config_name="sensitivity", execution_whitelist=EXECUTION_WHITELIST)
def main(cfg: DictConfig) -> float | list[float]:
    return sensitivity_task(cfg)
