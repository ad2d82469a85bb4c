"""AutoQuant sensitivity of one (model, dataset, dtype pair, granularity) combination, or a sweep (-m).

python experiments/sensitivity.py quant_pair=wint4_afp16 quant_granularity=w_group64
python experiments/sensitivity.py -m quant_pair=wint4_aint8,wint8_aint8 quant_granularity=default,w_group64
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from autoquant_sweep.app import sensitivity_task
from autoquant_sweep.config import register_configs

register_configs()
# absolute, so the app composes the same way when imported (benchmarks) as when run as a script
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


# What config-selected `_target_`s may instantiate (Hydra 1.4 execution whitelist): the project's own
# classes (callback, sweeper), Hydra's launcher / sweeper plugins, Optuna samplers, logging handlers.
EXECUTION_WHITELIST = ["autoquant_sweep.*", "hydra_plugins.*", "optuna.samplers.*", "logging.*"]


@hydra.main(config_path=CONF_DIR, config_name="sensitivity", execution_whitelist=EXECUTION_WHITELIST)
def main(cfg: DictConfig) -> float | list[float]:
    return sensitivity_task(cfg)


if __name__ == "__main__":
    main()
