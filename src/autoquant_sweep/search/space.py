"""The categorical search space of a study, derived from the configs and the capability rules.

Registered as OmegaConf resolvers so ``conf/hydra/sweeper/optuna.yaml`` can say
``quant_pair: ${aqs_search_pairs:${autoquant.device}}`` and get, on this machine, only the pairs that
can run here (CPU: the INT and FP8 pairs; CUDA: all). Resolving it imports neither ModelOpt nor
(on a CPU build of torch) torch: the presets are stored data and the capability rules are pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from omegaconf import OmegaConf

from autoquant_sweep.config.groups import load_group

_UNSAFE_STUDY_CHARS = re.compile(r"[^A-Za-z0-9_.+-]+")


def searchable_pairs(device: str) -> list[str]:
    """Pairs whose base format runs on ``device`` (``auto``: what torch sees), in vocabulary order.

    Example:
        >>> searchable_pairs("cpu")
        ['wint8_aint8', 'wint8_afp16', 'wint4_afp16', 'wint4_aint8', 'wint4_afp8', 'wfp8_afp8', 'wfp8_afp16']
    """
    from autoquant_sweep.quant.capability import check_combination, device_view
    from autoquant_sweep.quant.formats import resolve_format

    device = device_view(device)
    names = []
    for pair in load_group("quant_pair"):
        verdict = check_combination(
            resolve_format(pair["format_name"]),
            {},
            cuda_available=device == "cuda",
            format_name=pair["format_name"],
            granularity_name="default",
        )
        if verdict.status != "refused":
            names.append(pair["name"])
    return names


def granularity_names() -> list[str]:
    """Every option of ``conf/quant_granularity``."""
    return [g["name"] for g in load_group("quant_granularity")]


def choice(names: Sequence[str]) -> str:
    """Hydra's sweep syntax for a categorical parameter: ``choice(a,b,c)``."""
    if not names:
        raise ValueError("empty search space: no option left to choose from")
    return f"choice({','.join(names)})"


def study_name(*parts: str) -> str:
    """A study name derived from experiment, model, dataset and objective, safe for any storage."""
    return _UNSAFE_STUDY_CHARS.sub("_", "-".join(str(p) for p in parts))


def _pairs_choice(device: str) -> str:
    return choice(searchable_pairs(str(device)))


def _granularities_choice() -> str:
    return choice(granularity_names())


def register_resolvers() -> None:
    """``aqs_root``, ``aqs_search_pairs``, ``aqs_search_granularities``, ``aqs_study_name`` (idempotent)."""
    from autoquant_sweep.tracking.store import resolver_root

    OmegaConf.register_resolver("aqs_root", resolver_root, replace=True)
    OmegaConf.register_resolver("aqs_search_pairs", _pairs_choice, replace=True)
    OmegaConf.register_resolver("aqs_search_granularities", _granularities_choice, replace=True)
    OmegaConf.register_resolver("aqs_study_name", study_name, replace=True)
    from autoquant_sweep.layout import sweep_id

    OmegaConf.register_resolver("aqs_sweep_id", sweep_id, replace=True)  # hydra.sweep.dir, per process
