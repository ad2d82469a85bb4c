"""Every fingerprint of a run, in one place: what makes two runs the same computation.

* the **config fingerprint** of an effective quant config (:func:`config_fingerprint`: a hash of its
  :func:`canonical_json`);
* the **run fingerprint** (:func:`run_fingerprint`): checkpoint identity, captions, batching, AutoQuant
  settings, device, effective format, recipe / curve / evaluation inputs and package versions. A
  FINISHED MLflow run with the same one answers a new run from the result cache (the lookup stage);
* the **scoring fingerprint** (:func:`scoring_fingerprint`): the run fingerprint's scoring inputs
  without the format, the budget and the evaluation: the key of which trials mix.

Pure and cheap (hashes of data the plan already holds, ``importlib.metadata`` for versions): plan
computes the fingerprint before anything heavy is imported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

#: bump when a run's manifest gains results a cached run would lack (2: recipe, budget curve, evaluation;
#: 3: the realized granularity, checked against the declared one; per-token inputs in the quantizer-level
#: ``type: dynamic`` form, so no result of the static docstring form is ever reused; 4: a VL model's vision
#: tower out of the effective-bits cost, ``model.cost_excluded_modules``)
RESULT_SCHEMA = 4

#: the packages a result depends on (manifest ``versions``, MLflow ``version.*`` tags, run fingerprint)
VERSIONED_PACKAGES = (
    "torch",
    "nvidia-modelopt",
    "transformers",
    "hydra-core",
    "optuna",
    "mlflow",
    "autoquant-sweep",
)


def _canon(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _canon(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canon(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def canonical_json(obj: Any) -> str:
    """Deterministic compact JSON: sorted keys, tuples as lists, int keys as strings.

    Example:
        >>> canonical_json({"b": (4, 3), "a": {-1: 64}})
        '{"a":{"-1":64},"b":[4,3]}'
    """
    return json.dumps(_canon(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_fingerprint(obj: Any) -> str:
    """First 16 hex chars of the sha256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:16]




def package_versions() -> dict[str, str]:
    """Installed versions of :data:`VERSIONED_PACKAGES` (from package metadata: nothing is imported)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def captions_sha256(captions: Sequence[str]) -> str:
    """SHA-256 of the captions as the run reads them (one per line)."""
    return hashlib.sha256("\n".join(captions).encode()).hexdigest()


def recipe_eval_inputs(c: Mapping[str, Any], eval_split: tuple[str, list[str]] | None) -> dict[str, Any]:
    """What the recipe, the budget curve and the evaluation depend on beyond the scoring inputs
    (part of the run fingerprint, so a cached run always carries the same sections).

    ``eval_split``: ``(source, captions)`` of the held-out split, ``None`` when nothing is evaluated
    (:func:`autoquant_sweep.plan.eval_split`).

    Example:
        >>> recipe_eval_inputs({"autoquant": {"budget_grid": [8, 10]}}, None)["budget_grid"]
        [8.0, 10.0]
    """
    return {
        "result_schema": RESULT_SCHEMA,
        "budget_grid": [float(b) for b in c["autoquant"].get("budget_grid") or []],
        "evaluate": eval_split is not None,
        "eval_captions_sha256": captions_sha256(eval_split[1]) if eval_split else None,
    }


def run_fingerprint(
    c: Mapping[str, Any],
    *,
    checkpoint_identity: str,
    captions: Sequence[str],
    batch_plan: Any,
    device: str,
    effective_format: Mapping[str, Any],
    eval_split: tuple[str, list[str]] | None,
    versions: Mapping[str, str],
) -> str:
    """The run fingerprint: equal for two runs exactly when they compute the same result.

    The project's own version is left out (a release that changes no result keeps the cache); a change
    that does is a :data:`RESULT_SCHEMA` bump.
    """
    aq = c["autoquant"]
    source = {
        **_scoring_source(c, checkpoint_identity=checkpoint_identity, captions=captions,
                          batch_plan=batch_plan, device=device, versions=versions),
        "effective_bits": float(aq["effective_bits"]),
        "effective_format": effective_format,
        "recipe_and_evaluation": recipe_eval_inputs(c, eval_split),
    }
    return config_fingerprint(canonical_json(source))


def scoring_fingerprint(
    c: Mapping[str, Any],
    *,
    checkpoint_identity: str,
    captions: Sequence[str],
    batch_plan: Any,
    device: str,
    versions: Mapping[str, str],
) -> str:
    """The scoring fingerprint: the run fingerprint without the format (and without the budget and the
    evaluation inputs, which change no score). Trials with the same one scored every layer on the same
    model, batches, method, steps, seed, disabled layers, cost model and package versions, so their
    per-layer candidates can be merged into one search (the mix key, :mod:`autoquant_sweep.mix`)."""
    return config_fingerprint(canonical_json({
        "scoring": _scoring_source(c, checkpoint_identity=checkpoint_identity, captions=captions,
                                   batch_plan=batch_plan, device=device, versions=versions),
        "result_schema": RESULT_SCHEMA,
    }))


def _scoring_source(c: Mapping[str, Any], *, checkpoint_identity: str, captions: Sequence[str],
                    batch_plan: Any, device: str, versions: Mapping[str, str]) -> dict[str, Any]:
    model_cfg, data_cfg, aq = c["model"], c["dataset"], c["autoquant"]
    return {
        "checkpoint": checkpoint_identity,
        "model_kind": model_cfg["kind"],
        "dtype": model_cfg["dtype"],
        "disabled_layers": model_cfg["disabled_layers"],
        "cost_excluded_modules": list(model_cfg.get("cost_excluded_modules") or []),
        "captions_sha256": captions_sha256(captions),
        "seq_len": data_cfg["seq_len"],
        "batch_plan": [batch_plan.batch_size, batch_plan.num_calib_steps, batch_plan.num_score_steps],
        "method": aq["method"],
        "seed": aq["seed"],
        "device": device,
        "cost_model": aq.get("cost_model", "storage"),
        "versions": {k: v for k, v in versions.items() if k != "autoquant-sweep"},
    }
