"""Registry of best configs: one registered model per (model, objective), alias ``best``, lookup.

A version's source is the child run's ``config/`` artifact folder; its ``effective_quant_cfg.json`` is the
effective quant config exactly as the run used it (JSON: block_sizes keys are strings like ``"-1"``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autoquant_sweep.errors import UserInputError

log = logging.getLogger(__name__)

BEST_ALIAS = "best"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def registered_name(model: str, objective: str) -> str:
    """``autoquant-<model>-<objective>`` with unsafe characters replaced by ``-``.

    Example:
        >>> registered_name("qwen3_tiny", "total_sensitivity")
        'autoquant-qwen3_tiny-total_sensitivity'
    """
    return _UNSAFE.sub("-", f"autoquant-{model}-{objective}").strip("-")


def qualifying(rows: Sequence[Mapping[str, Any]], objective: str) -> list[Mapping[str, Any]]:
    """Rows that may become ``best``: FINISHED, with a finite, strictly positive objective."""
    out = []
    for row in rows:
        value = row.get(objective, math.nan)
        finite = isinstance(value, float) and math.isfinite(value)
        if row.get("status") == "FINISHED" and finite and value > 0:
            out.append(row)
    return out


def _current_best(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, BEST_ALIAS)
    except MlflowException:
        return None


def register_best(client: Any, rows: Sequence[Mapping[str, Any]], objective: str) -> dict[str, Any] | None:
    """Register the best qualifying child as a new version; move ``best`` only if it beats the current one.

    Returns ``{"name", "version", "value", "alias_moved", "run_id"}`` or None when no child qualifies.
    """
    from mlflow.exceptions import MlflowException

    from autoquant_sweep.tracking.run_logging import CONFIG_ARTIFACT_DIR

    candidates = qualifying(rows, objective)
    if not candidates:
        log.warning("registry: no child qualifies (finished, finite, > 0 %s); nothing registered", objective)
        return None
    best = min(candidates, key=lambda r: (r[objective], r["run_id"]))
    run = client.get_run(best["run_id"])
    params, tags = run.data.params, run.data.tags
    name = registered_name(params.get("model", "model"), objective)
    try:
        client.create_registered_model(
            name, description=f"Best AutoQuant effective quant config of {params.get('model')} by {objective}"
        )
    except MlflowException:
        pass  # already exists
    value = float(best[objective])
    version_tags = {
        "quant_pair": params.get("quant_pair", ""),
        "granularity": params.get("quant_granularity", ""),
        "weight": params.get("weight", ""),
        "activation": params.get("activation", ""),
        "base_format": params.get("base_format", ""),
        "dataset": params.get("dataset", ""),
        "dataset_size": params.get("dataset_size", ""),
        "objective": objective,
        "objective_value": repr(value),
        "source_run_id": best["run_id"],
        "config_fingerprint": tags.get("config_fingerprint", ""),
        "run_fingerprint": tags.get("run_fingerprint", ""),
    }
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{CONFIG_ARTIFACT_DIR}", run_id=best["run_id"],
        tags=version_tags,
        description=f"{version_tags['quant_pair']} / {version_tags['granularity']}: {objective}={value:.6e}",
    )
    current = _current_best(client, name)
    moved = False
    if current is None:
        moved = True
    else:
        ct = current.tags
        same = (ct.get("objective") == objective and ct.get("dataset") == version_tags["dataset"]
                and ct.get("dataset_size") == version_tags["dataset_size"])
        try:
            current_value = float(ct.get("objective_value", "nan"))
        except ValueError:
            current_value = math.nan
        if not same:
            log.warning("registry: %s@best (v%s) was measured on another dataset/objective; alias kept",
                        name, current.version)
        elif not math.isfinite(current_value) or value < current_value:
            moved = True
    if moved:
        client.set_registered_model_alias(name, BEST_ALIAS, version.version)
    log.info("registry: %s v%s (%s=%.6e from run %s); alias best %s", name, version.version, objective, value,
             best["run_id"], "moved here" if moved else "kept")
    return {"name": name, "version": version.version, "value": value, "alias_moved": moved,
            "run_id": best["run_id"]}


def _client(tracking_uri: str | None) -> Any:
    from autoquant_sweep.tracking.store import TrackingSettings, connect, default_tracking_uri

    uri = tracking_uri or _env_uri() or default_tracking_uri()
    return connect(TrackingSettings("local", uri, None, "", True))


def _env_uri() -> str | None:
    import os

    return os.environ.get("MLFLOW_TRACKING_URI") or None


def get_version(name: str, alias: str | None = BEST_ALIAS, version: int | str | None = None,
                tracking_uri: str | None = None) -> tuple[Any, bytes]:
    """The model version (by ``version``, else ``alias``) and the bytes of its effective_quant_cfg.json."""
    from mlflow.exceptions import MlflowException

    from autoquant_sweep.tracking.run_logging import CONFIG_ARTIFACT_DIR, EFFECTIVE_CFG_FILE

    client = _client(tracking_uri)
    try:
        mv = (client.get_model_version(name, str(version)) if version is not None
              else client.get_model_version_by_alias(name, alias or BEST_ALIAS))
    except MlflowException as exc:
        what = f"version {version}" if version is not None else f"alias '{alias}'"
        raise UserInputError(f"registry: no {what} of registered model '{name}': {exc.message}") from exc
    with tempfile.TemporaryDirectory(prefix="aqs-lookup-") as tmp:
        if mv.run_id:
            path = client.download_artifacts(mv.run_id, f"{CONFIG_ARTIFACT_DIR}/{EFFECTIVE_CFG_FILE}", tmp)
        else:
            import mlflow.artifacts

            path = mlflow.artifacts.download_artifacts(f"{mv.source}/{EFFECTIVE_CFG_FILE}", dst_path=tmp)
        data = Path(path).read_bytes()
    return mv, data


def _normalise_cfg(cfg: Any) -> Any:
    from autoquant_sweep.quant.overlay import normalize_block_sizes

    if isinstance(cfg, list):
        return [_normalise_cfg(stage) for stage in cfg]
    if isinstance(cfg, Mapping):
        out = dict(cfg)
        for key in ("block_sizes",):
            if isinstance(out.get(key), Mapping):
                out[key] = normalize_block_sizes(out[key], where=key)
        return out
    return cfg


def quantize_config_from_json(text: str | bytes) -> dict[str, Any]:
    """Effective quant config JSON -> a dict ready for ``mtq.quantize`` (int block_sizes keys, rule list)."""
    from autoquant_sweep.quant.overlay import to_rule_list

    raw = json.loads(text)
    out = dict(raw)
    rules = to_rule_list(raw["quant_cfg"])
    for rule in rules:
        if "cfg" in rule and rule["cfg"] is not None:
            rule["cfg"] = _normalise_cfg(rule["cfg"])
    out["quant_cfg"] = rules
    return out


def lookup_best_config(name: str, alias: str = BEST_ALIAS, version: int | str | None = None,
                       tracking_uri: str | None = None) -> dict[str, Any]:
    """Effective quant config of registered model ``name`` at ``alias`` (or ``version``) for ``mtq.quantize``.

    ``tracking_uri``: default ``$MLFLOW_TRACKING_URI``, else the project's ``sqlite:///<root>/mlflow.db``.

    Example:
        >>> cfg = lookup_best_config("autoquant-qwen3_tiny-total_sensitivity")  # doctest: +SKIP
        >>> mtq.quantize(model, cfg, forward_loop)  # doctest: +SKIP
    """
    _, data = get_version(name, alias, version, tracking_uri)
    return quantize_config_from_json(data)
