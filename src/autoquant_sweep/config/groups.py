"""Loading the options of a config group (``conf/<group>/*.yaml``) as plain dicts, in vocabulary order.

Used wherever the project needs every option of a group outside Hydra's composition: the
``validate`` sub-command, the Optuna search space and the generated ``docs/granularity.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

GRANULARITY_ORDER = (
    "default",
    "recipe_match_channel_token",
    "w_per_tensor",
    "w_per_out_channel",
    "w_per_in_channel",
    "w_group64",
    "w_group128",
    "a_per_token_dynamic",
    "a_per_tensor_static",
)
PAIR_ORDER = (
    "wint8_aint8",
    "wint8_afp16",
    "wint4_afp16",
    "wint4_aint8",
    "wint4_afp8",
    "wfp8_afp8",
    "wfp8_afp16",
    "wfp4_afp16",
    "wfp4_afp8",
    "wfp4_afp4",
)


def _ordered(items: list[dict], order: Sequence[str]) -> list[dict]:
    rank = {name: i for i, name in enumerate(order)}
    return sorted(items, key=lambda item: (rank.get(str(item["name"]), len(rank)), str(item["name"])))


def load_group(group: str, conf_dir: Path | None = None) -> list[dict]:
    """Load every ``conf/<group>/*.yaml`` as a plain dict (OmegaConf, resolved)."""
    from omegaconf import OmegaConf

    from autoquant_sweep.paths import conf_dir as default_conf_dir

    conf_dir = conf_dir or default_conf_dir()
    items = []
    for path in sorted((conf_dir / group).glob("*.yaml")):
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping")
        items.append(data)
    order = GRANULARITY_ORDER if group == "quant_granularity" else PAIR_ORDER
    return _ordered(items, order)
