"""The categorical search space of a study, derived from the configs and the capability rules.

Registered as OmegaConf resolvers so ``conf/hydra/sweeper/optuna.yaml`` can say
``quant_pair: ${aqs_search_pairs:${autoquant.device}}`` and get, on this machine, only the pairs that
can run here (CPU: the INT and FP8 pairs; CUDA: all). Resolving it imports neither ModelOpt nor
(on a CPU build of torch) torch: the presets are stored data and the capability rules are pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf

from autoquant_sweep.config.groups import load_group

_UNSAFE_STUDY_CHARS = re.compile(r"[^A-Za-z0-9_.+-]+")


def searchable_pairs(device: str) -> list[str]:
    """Pairs whose base format runs on ``device`` (``auto``: what torch sees), in their conf ``order``.

    Example:
        >>> searchable_pairs("cpu")
        ['wint8_aint8', 'wint8_afp16', 'wint4_afp16', 'wint4_aint8', 'wint4_afp8', 'wfp8_afp8', 'wfp8_afp16']
    """
    from autoquant_sweep.devices import device_view
    from autoquant_sweep.quant.capability import check_combination
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
    """``parts`` joined by ``-``, safe for any storage.

    Example:
        >>> study_name("sensitivity", "qwen3 tiny", "b10")
        'sensitivity-qwen3_tiny-b10'
    """
    return _UNSAFE_STUDY_CHARS.sub("_", "-".join(str(p) for p in parts))


#: what a trial's objective value depends on besides the pair x granularity it is asked for: trials of
#: one study must be comparable, so each of these is part of the study's identity
_IDENTITY_KEYS = {
    "model": ("name", "embedded", "path", "kind", "dtype", "disabled_layers", "cost_excluded_modules"),
    "dataset": ("name", "root", "size", "path", "max_samples", "seq_len"),  # the scoring data
    "autoquant": ("objective", "method", "effective_bits", "batch_size", "num_calib_samples",
                  "num_score_samples", "seed"),  # steps = ceil(samples / batch_size), capped by the data
}
#: the held-out data, for the objective that measures on it
_EVAL_KEYS = ("eval_path", "eval_samples")


def study_identity(model: Mapping[str, Any], dataset: Mapping[str, Any], autoquant: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """Everything that changes what a study's objective means: model, scoring data, objective, budget,
    method, steps (samples and batch size), seed; the held-out data for ``eval_loss_delta``."""
    sections = {"model": model, "dataset": dataset, "autoquant": autoquant}
    identity = {f"{name}.{key}": _plain(sections[name].get(key))
                for name, keys in _IDENTITY_KEYS.items() for key in keys}
    if autoquant.get("objective") == "eval_loss_delta":
        identity |= {f"dataset.{key}": _plain(dataset.get(key)) for key in _EVAL_KEYS}
    identity["autoquant.effective_bits"] = float(identity["autoquant.effective_bits"])
    return identity


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def study_name_of(experiment: str, model: Mapping[str, Any], dataset: Mapping[str, Any],
                  autoquant: Mapping[str, Any], params: Mapping[str, Any] | None = None,
                  overrides: Sequence[str] = ()) -> str:
    """The study of a sweep: ``<experiment>-<model>-<dataset>-<size>-b<budget>-<method>-<hash>-<objective>``.

    The readable parts say which study it is; ``<hash>`` (8 hex digits of :func:`study_identity` and of
    the search space: ``hydra.sweeper.params`` with the command line's ``overrides``) covers the rest
    (steps, seed, scoring data, checkpoint, the choices of each parameter), so a rerun with any of them
    changed starts its own study instead of mixing trials whose values mean something else (Optuna itself
    refuses changed choices within a study). The objective stays last
    (:func:`autoquant_sweep.search.study_report.objective_names` reads it there).

    Example:
        >>> model = {"name": "qwen3_tiny", "embedded": "qwen3_tiny", "path": None, "kind": "causal_lm",
        ...          "dtype": "float32", "disabled_layers": ["*lm_head*"]}
        >>> data = {"name": "captions", "root": None, "size": "small", "path": None, "max_samples": None,
        ...         "seq_len": 32}
        >>> aq = {"objective": "constrained_score", "method": "gradient", "effective_bits": 10,
        ...       "batch_size": 4, "num_calib_samples": 16, "num_score_samples": 16, "seed": 0}
        >>> name = study_name_of("sensitivity", model, data, aq)
        >>> name.startswith("sensitivity-qwen3_tiny-captions-small-b10-gradient-"), name.split("-")[-1]
        (True, 'constrained_score')
        >>> name != study_name_of("sensitivity", model, data, {**aq, "effective_bits": 8})
        True
        >>> name == study_name_of("sensitivity", model, data, {**aq, "effective_bits": 10.0})
        True
    """
    import hashlib
    import json

    from autoquant_sweep.search.grid import space_identity

    identity = study_identity(model, dataset, autoquant)
    if params or overrides:
        identity["search_space"] = space_identity(_plain(params), [str(o) for o in _plain(overrides) or ()])
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    bits = format(identity["autoquant.effective_bits"], "g")
    return study_name(experiment, model.get("name"), dataset.get("name"), dataset.get("size"), f"b{bits}",
                      autoquant.get("method"), digest, autoquant.get("objective"))


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
    OmegaConf.register_resolver("aqs_study_name", study_name_of, replace=True)
    from autoquant_sweep.layout import sweep_id

    OmegaConf.register_resolver("aqs_sweep_id", sweep_id, replace=True)  # hydra.sweep.dir, per process
