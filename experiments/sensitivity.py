"""AutoQuant sensitivity of one (model, dataset, dtype pair, granularity) combination, or a sweep (-m).

python experiments/sensitivity.py quant_pair=wint4_afp16 quant_granularity=w_group64
python experiments/sensitivity.py -m quant_pair=wint4_aint8,wint8_aint8 quant_granularity=default,w_group64

A thin entry to the package's Hydra app (:mod:`autoquant_sweep.hydra_app`), which an installed package
also runs as ``autoquant-sweep-run``.
"""

from autoquant_sweep.hydra_app import CONF_DIR, EXECUTION_WHITELIST, main

__all__ = ["CONF_DIR", "EXECUTION_WHITELIST", "main"]

if __name__ == "__main__":
    main()
