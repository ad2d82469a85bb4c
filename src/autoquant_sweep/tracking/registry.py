"""Registry of best recipes: one registered model per (model, objective), aliases ``best`` and one per
budget band (``best-b9``), lookup.

A version's source is the ``recipe/`` artifact folder of the run that **computed** the result (for a
cache hit: its ``cache_source_run_id``); its ``quant_cfg.json`` is ModelOpt's per-layer recipe at the
run's budget, loadable into ``mtq.quantize`` unchanged (JSON: block_sizes keys are strings like
``"-1"``). The uniform effective config of the pair x granularity stays a second artifact
(``config/effective_quant_cfg.json``; ``uniform=True`` / ``--uniform``). Only satisfied recipes (achieved
effective bits <= budget) are registered.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autoquant_sweep.errors import UserInputError
from autoquant_sweep.objectives import finite

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


#: objectives whose value must be strictly positive to count (an all-zero score is not a result)
POSITIVE_OBJECTIVES = ("total_sensitivity", "constrained_score")


def qualifying(rows: Sequence[Mapping[str, Any]], objective: str) -> list[Mapping[str, Any]]:
    """Rows that may become ``best``: FINISHED, with a finite objective (strictly positive for the
    sensitivity objectives) and a recipe that fits its budget (``recipe_satisfied`` == 1 when known)."""
    out = []
    for row in rows:
        value = row.get(objective, math.nan)
        counts = finite(value)
        positive = objective not in POSITIVE_OBJECTIVES or (counts and value > 0)
        satisfied = row.get("recipe_satisfied", 1.0) == 1.0
        if row.get("status") == "FINISHED" and counts and positive and satisfied:
            out.append(row)
    return out


def best_row(rows: Sequence[Mapping[str, Any]], objective: str) -> Mapping[str, Any] | None:
    """The row :func:`register_best` registers: qualifying, lowest objective (ties: a computed run before
    a cache hit, then run id); also what the sweep prints without a registry."""
    candidates = qualifying(rows, objective)
    if not candidates:
        return None
    return min(candidates, key=lambda r: (r[objective], r.get("cache_hit") == "true", r["run_id"]))


def band_alias(budget: float) -> str:
    """Registry alias of a budget band: ``best-b9`` for 9 bits, ``best-b6p5`` for 6.5 bits.

    Example:
        >>> band_alias(9.0), band_alias(6.5)
        ('best-b9', 'best-b6p5')
    """
    text = f"{float(budget):g}".replace(".", "p")
    return f"best-b{text}"


def alias_version(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _fmt(value: Any, spec: str, default: str = "n/a") -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return format(number, spec) if math.isfinite(number) else default


def version_description(tags: Mapping[str, str]) -> str:
    """One paragraph: recipe, budget, achieved bits, predicted score, measured loss / perplexity increase."""
    measured = (f"measured held-out loss {_fmt(tags.get('eval_loss_delta'), '+.4f')} nats "
                f"(perplexity {_fmt(tags.get('ppl_increase_pct'), '+.2f')} %)"
                if tags.get("eval_loss_delta") not in (None, "", "nan") else "not evaluated")
    bits = _fmt(tags.get("recipe_effective_bits"), ".3f")
    score = _fmt(tags.get("recipe_predicted_score"), ".4e")
    return (
        f"Per-layer recipe of {tags.get('quant_pair')} x {tags.get('granularity')} at "
        f"{_fmt(tags.get('budget'), 'g')} effective bits: achieves {bits} bits, keeps "
        f"{tags.get('kept_16bit_groups', '?')} of {tags.get('recipe_groups', '?')} layer groups at 16 bits; "
        f"predicted score {score}; {measured}; "
        f"{tags.get('objective')}={_fmt(tags.get('objective_value'), '.6e')}. Load with "
        f"lookup_best_config('{tags.get('registered_name', '')}') or `autoquant-sweep apply`."
    )


def _same_study(ct: Mapping[str, str], vt: Mapping[str, str]) -> bool:
    return all(ct.get(k) == vt.get(k) for k in ("objective", "dataset", "dataset_size", "budget"))


def _version_value(mv: Any) -> float:
    try:
        return float(mv.tags.get("objective_value", "nan"))
    except ValueError:
        return math.nan


def best_version(versions: Sequence[Any], study_tags: Mapping[str, str]) -> Any | None:
    """The version an alias belongs on: the lowest finite ``objective_value`` among the satisfied versions
    of the same study (objective, dataset, size, budget) as ``study_tags``; ties go to the oldest.

    Example:
        >>> from types import SimpleNamespace as V
        >>> study = {"objective": "constrained_score", "dataset": "captions", "dataset_size": "small",
        ...          "budget": "10.0", "recipe_satisfied": "true"}
        >>> versions = [V(version="1", tags=study | {"objective_value": "2e-7"}),
        ...             V(version="2", tags=study | {"objective_value": "1e-7"}),
        ...             V(version="3", tags=study | {"objective_value": "1e-8", "budget": "8.0"})]
        >>> best_version(versions, study).version
        '2'
    """
    candidates = [v for v in versions if _same_study(v.tags, study_tags)
                  and v.tags.get("recipe_satisfied") == "true" and math.isfinite(_version_value(v))]
    return min(candidates, key=lambda v: (_version_value(v), int(v.version)), default=None)


def settle_alias(client: Any, name: str, alias: str, study_tags: Mapping[str, str], attempts: int = 10
                 ) -> Any | None:
    """Point ``alias`` at :func:`best_version` of *all* registered versions of ``name``, then read the
    registry again until alias and versions agree; returns the version the alias is on.

    Derived from the registry, not read-then-set: two sweeps registering at the same time each create
    their version first and check after their own write, so the last writer always sees every version
    and the end state does not depend on timing. A holder measured on another study keeps the alias.
    """
    for _ in range(attempts):
        current = alias_version(client, name, alias)
        if current is not None and not _same_study(current.tags, study_tags):
            log.warning("registry: %s@%s (v%s) was measured on another dataset/objective/budget; alias kept",
                        name, alias, current.version)
            return current
        best = best_version(client.search_model_versions(f"name='{name}'"), study_tags)
        if best is None or (current is not None and current.version == best.version):
            return current
        client.set_registered_model_alias(name, alias, best.version)
    return alias_version(client, name, alias)


def register_best(client: Any, rows: Sequence[Mapping[str, Any]], objective: str) -> dict[str, Any] | None:
    """Register the best qualifying child's recipe as a new version, then put ``best`` and the budget band's
    alias (``best-b9``) on the best satisfied version of all (same objective, dataset, budget):
    :func:`settle_alias`, so concurrent sweeps end on the best version whatever the timing.

    The version points at the run that computed the result (a cache hit's ``cache_source_run_id``).
    Returns ``{"name", "version", "value", "alias_moved", "band_alias", "band_moved", "run_id",
    "selected_run_id"}`` or None when no child qualifies.
    """
    from mlflow.exceptions import MlflowException

    from autoquant_sweep.report import RECIPE_CFG, RECIPE_DIR

    best = best_row(rows, objective)
    if best is None:
        log.warning("registry: no child qualifies (finished, finite %s, recipe within its budget); "
                    "nothing registered", objective)
        return None
    selected = client.get_run(best["run_id"])
    computed_id = selected.data.tags.get("cache_source_run_id") or best["run_id"]
    run = client.get_run(computed_id) if computed_id != best["run_id"] else selected
    params, tags, metrics = selected.data.params, selected.data.tags, selected.data.metrics
    name = registered_name(params.get("model", "model"), objective)
    try:
        client.create_registered_model(
            name, description=f"Best AutoQuant per-layer recipe of {params.get('model')} by {objective}, "
                              "one alias per budget (best-b<bits>) next to best"
        )
    except MlflowException:
        pass  # already exists
    value = float(best[objective])
    recipe = run_recipe_summary(client, computed_id)
    kept = recipe.get("kept_16bit_groups", [])
    version_tags = {
        "quant_pair": params.get("quant_pair", ""),
        "granularity": tags.get("canonical_granularity") or params.get("quant_granularity", ""),
        "requested_granularity": params.get("quant_granularity", ""),
        "weight": params.get("weight", ""),
        "activation": params.get("activation", ""),
        "base_format": params.get("base_format", ""),
        "dataset": params.get("dataset", ""),
        "dataset_size": params.get("dataset_size", ""),
        "objective": objective,
        "objective_value": repr(value),
        "budget": params.get("effective_bits_budget", ""),
        "recipe_effective_bits": repr(metrics.get("recipe_effective_bits", math.nan)),
        "recipe_predicted_score": repr(metrics.get("recipe_predicted_score", math.nan)),
        "recipe_satisfied": "true",
        "kept_16bit_groups": str(len(kept)),
        "recipe_groups": str(len(kept) + len(recipe.get("quantized_groups", []))),
        "eval_loss": repr(metrics.get("eval_loss", math.nan)),
        "eval_loss_delta": repr(metrics.get("eval_loss_delta", math.nan)),
        "ppl_increase_pct": repr(metrics.get("ppl_increase_pct", math.nan)),
        "artifact": f"{RECIPE_DIR}/{RECIPE_CFG}",
        "uniform_artifact": "config/effective_quant_cfg.json",
        "source_run_id": computed_id,
        "selected_run_id": best["run_id"],
        "config_fingerprint": tags.get("config_fingerprint", ""),
        "run_fingerprint": tags.get("run_fingerprint", ""),
        "registered_name": name,
    }
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{RECIPE_DIR}", run_id=computed_id,
        tags=version_tags, description=version_description(version_tags),
    )
    aliases = settle_aliases(client, name, version.version, version_tags)
    log.info("registry: %s v%s (%s=%.6e from run %s); alias best %s, %s %s", name, version.version,
             objective, value, computed_id, "moved here" if aliases["alias_moved"] else "kept",
             aliases["band_alias"], "moved here" if aliases["band_moved"] else "kept")
    return {"name": name, "version": version.version, "value": value, **aliases, "run_id": computed_id,
            "selected_run_id": best["run_id"]}


def settle_aliases(client: Any, name: str, version: str, version_tags: Mapping[str, str]) -> dict[str, Any]:
    """:func:`settle_alias` of ``best`` and of the budget band's alias (``best-b9``) after ``version`` was
    created; returns ``{"alias_moved", "band_alias", "band_moved"}`` (moved: the alias is on ``version``)."""
    holder = settle_alias(client, name, BEST_ALIAS, version_tags)
    band = band_alias(float(version_tags["budget"])) if version_tags["budget"] else None
    band_holder = settle_alias(client, name, band, version_tags) if band else None
    return {"alias_moved": holder is not None and holder.version == version, "band_alias": band,
            "band_moved": band_holder is not None and band_holder.version == version}


def run_manifest(client: Any, run_id: str) -> dict[str, Any] | None:
    """The manifest a run logged with its report (``None``: a run without one, e.g. from before reports
    were logged)."""
    import mlflow.artifacts

    from autoquant_sweep.report import MANIFEST
    from autoquant_sweep.tracking.run_logging import REPORT_ARTIFACT_DIR

    try:
        uri = f"{client.get_run(run_id).info.artifact_uri}/{REPORT_ARTIFACT_DIR}/{MANIFEST}"
        return mlflow.artifacts.load_dict(uri)
    except Exception:  # no report, or no such run: the caller's defaults apply
        return None


def run_recipe_summary(client: Any, run_id: str) -> dict[str, Any]:
    """The ``recipe`` section of a run's manifest (empty when it has none)."""
    return (run_manifest(client, run_id) or {}).get("recipe") or {}


def store_client(tracking_uri: str | None) -> Any:
    """A client of ``tracking_uri``, else of the store a run would use (``$MLFLOW_TRACKING_URI``, else
    ``<root>/mlflow.db``: :func:`~autoquant_sweep.tracking.store.resolve_tracking_uri`)."""
    from autoquant_sweep.tracking.store import TrackingSettings, connect, resolve_tracking_uri

    uri, source = resolve_tracking_uri(tracking_uri)
    return connect(TrackingSettings("local", uri, None, "", True, source=source))


def artifact_path(mv: Any, uniform: bool = False) -> str:
    """Run-relative path of a version's config: the recipe (``recipe/quant_cfg.json``), or with ``uniform``
    the pair x granularity's uniform effective config. Versions registered before recipes existed
    only have the uniform config."""
    from autoquant_sweep.tracking.run_logging import CONFIG_ARTIFACT_DIR, EFFECTIVE_CFG_FILE

    uniform_path = f"{CONFIG_ARTIFACT_DIR}/{EFFECTIVE_CFG_FILE}"
    if uniform:
        return mv.tags.get("uniform_artifact") or uniform_path
    return mv.tags.get("artifact") or uniform_path


def get_version(name: str, alias: str | None = BEST_ALIAS, version: int | str | None = None,
                tracking_uri: str | None = None, uniform: bool = False) -> tuple[Any, bytes]:
    """The model version (by ``version``, else ``alias``) and the bytes of its recipe
    (``recipe/quant_cfg.json``; with ``uniform`` the uniform ``config/effective_quant_cfg.json``)."""
    from mlflow.exceptions import MlflowException

    client = store_client(tracking_uri)
    try:
        mv = (client.get_model_version(name, str(version)) if version is not None
              else client.get_model_version_by_alias(name, alias or BEST_ALIAS))
    except MlflowException as exc:
        what = f"version {version}" if version is not None else f"alias '{alias}'"
        raise UserInputError(f"registry: no {what} of registered model '{name}': {exc.message}") from exc
    with tempfile.TemporaryDirectory(prefix="aqs-lookup-") as tmp:
        relative = artifact_path(mv, uniform)
        if mv.run_id:
            path = client.download_artifacts(mv.run_id, relative, tmp)
        else:
            import mlflow.artifacts

            path = mlflow.artifacts.download_artifacts(f"{mv.source}/{relative.rsplit('/', 1)[-1]}",
                                                       dst_path=tmp)
        data = Path(path).read_bytes()
    return mv, data


def lookup_best_config(name: str, alias: str = BEST_ALIAS, version: int | str | None = None,
                       tracking_uri: str | None = None, uniform: bool = False) -> dict[str, Any]:
    """The per-layer recipe of registered model ``name`` at ``alias`` (``best``, ``best-b9``, ...) or
    ``version``, ready for ``mtq.quantize``; ``uniform=True``: the pair x granularity's uniform config.

    ``tracking_uri``: default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db`` (``<root>``: the
    working directory or ``$AUTOQUANT_SWEEP_ROOT``).

    Example:
        >>> cfg = lookup_best_config("autoquant-qwen3_tiny-constrained_score")  # doctest: +SKIP
        >>> mtq.quantize(model, cfg, forward_loop)  # doctest: +SKIP
    """
    from autoquant_sweep.recipe import quantize_config_from_json

    _, data = get_version(name, alias, version, tracking_uri, uniform)
    return quantize_config_from_json(data)
