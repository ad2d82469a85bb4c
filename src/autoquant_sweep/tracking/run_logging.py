"""One run -> one MLflow run: params, metrics, artifacts and tags (design: "Tracking conventions").

Overrides are flattened as ``override.<quantizer>.<attr>[.<key>]=<value>``, where ``<quantizer>`` is the
override pattern without ``*`` and ``_quantizer`` (``*weight_quantizer`` -> ``weight``), other
characters MLflow refuses in names become ``_``, and values are written as Python literals
(``override.weight.axis=0``, ``override.input.block_sizes.-1=None``, ``override.input.type=dynamic``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoquant_sweep.config.groups import short_granularity
from autoquant_sweep.objectives import finite
from autoquant_sweep.report import RECIPE_DIR, REPORT_FILES, dump_json

log = logging.getLogger(__name__)

REPORT_ARTIFACT_DIR = "report"
CONFIG_ARTIFACT_DIR = "config"
EFFECTIVE_CFG_FILE = "effective_quant_cfg.json"
BASE_CFG_FILE = "base_quant_cfg.json"
OVERRIDES_FILE = "overrides.json"
HYDRA_CFG_FILE = "config.yaml"
TABLE_FILE = "per_layer_table.json"
LAYER_SCORE_METRIC = "layer_score"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI (Markdown)
RUN_NAME_TAG = "mlflow.runName"  # set in a log_batch, MLflow also renames the run
JOB_NUM_TAG = "hydra_job_num"  # a sweep job's number; its Optuna trial has it too (study_report)
FAILURE_ARTIFACT_DIR = "failure"
# metrics too small to read in MLflow's table and charts (2.47e-7 shows as "2.47300962..."): each also
# gets ``log10_<name>`` (-6.61), which sorts the same way and reads at a glance
# (not eval_loss_delta: it can be <= 0; ppl_increase_pct is its readable form)
LOG10_METRICS = ("total_sensitivity", "constrained_score", LAYER_SCORE_METRIC)
SECONDS_KEYS = ("calibration", "scoring", "autoquant", "load_and_tokenize", "budget_curve", "evaluation",
                "realized_check")
VERSION_TAGS = {
    "torch": "version.torch",
    "nvidia-modelopt": "version.modelopt",
    "transformers": "version.transformers",
    "hydra-core": "version.hydra",
    "optuna": "version.optuna",
    "mlflow": "version.mlflow",
    "autoquant-sweep": "version.autoquant_sweep",
}
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def _literal(value: Any) -> str:
    return repr(value) if isinstance(value, str) and value == "" else str(value)


def quantizer_key(pattern: str) -> str:
    """``*weight_quantizer`` -> ``weight``; other patterns lose ``*`` and unsafe characters."""
    key = pattern.strip("*")
    if key.endswith("_quantizer"):
        key = key[: -len("_quantizer")]
    return _BAD_NAME_CHARS.sub("_", key) or "all"


def flatten_overrides(overrides: Mapping[str, Any]) -> dict[str, str]:
    """Flatten ``quant_cfg_overrides`` to ``override.<quantizer>.<attr>[.<key>]`` params.

    Example:
        >>> flatten_overrides({"*input_quantizer": {"type": "dynamic", "block_sizes": {-1: None}}})
        {'override.input.type': 'dynamic', 'override.input.block_sizes.-1': 'None'}
    """
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}.{_BAD_NAME_CHARS.sub('_', str(k))}", v)
        else:
            out[prefix] = _literal(value)

    for pattern, attrs in overrides.items():
        walk(f"override.{quantizer_key(str(pattern))}", attrs if attrs else "unchanged")
    return out


def _normalised_overrides(gran: Mapping[str, Any]) -> dict:
    from autoquant_sweep.quant.overlay import OverlayError, validate_overrides

    raw = gran.get("quant_cfg_overrides") or {}
    try:
        return validate_overrides(raw)
    except OverlayError:
        return dict(raw)


def overlay_effect(c: Mapping[str, Any], base_format: Any | None = None) -> Any | None:
    """The :class:`~autoquant_sweep.quant.overlay.OverlayResult` of a run's granularity on its pair's
    format (``None`` when it cannot be computed, e.g. an unknown format or an overlay error)."""
    from autoquant_sweep.quant.formats import resolve_format
    from autoquant_sweep.quant.overlay import apply_overlay, validate_overrides

    try:
        base = base_format if base_format is not None else resolve_format(c["quant_pair"]["format_name"])
        overrides = validate_overrides(c["quant_granularity"].get("quant_cfg_overrides") or {})
        return apply_overlay(base, overrides, format_name=c["quant_pair"]["format_name"])
    except Exception:  # refused or malformed overlays keep every requested override as a param
        return None


def effective_override_params(overrides: Mapping[str, Any], effect: Any | None,
                              status: str | None = None) -> dict[str, str]:
    """``override.*`` params for what took effect, and ``override.status`` saying what happened.

    ``override.status``: ``none`` (no overrides), ``noop`` (nothing changed: no ``override.<q>.*``
    params), ``ok``, ``partial`` (some quantizers unchanged: listed in ``override.ignored``), or the
    run's failure kind (``refused``: every requested override is listed, that is what was refused).
    """
    if not overrides:
        return {"override.status": "none"}
    if status in ("refused", "input_error", "error") or effect is None:
        return {**flatten_overrides(overrides), "override.status": status or "unknown"}
    from autoquant_sweep.quant.overlay import expand_overrides

    changed = set(effect.changed_patterns)
    if not changed:
        return {"override.status": "noop"}
    expanded = expand_overrides(overrides)  # a ``default`` entry becomes weight + input entries
    out = flatten_overrides({p: a for p, a in expanded.items() if p in changed})
    ignored = [p for p, a in expanded.items() if a and p not in changed]
    if ignored:
        disabled = set(effect.noop_patterns)
        out["override.ignored"] = ", ".join(
            f"{quantizer_key(p)} ({'quantizer disabled' if p in disabled else 'no change'})" for p in ignored)
    out["override.status"] = "partial" if ignored else "ok"
    return out


def run_params(c: Mapping[str, Any], batch_plan: Any | None = None, *, effect: Any | None = None,
               status: str | None = None) -> dict[str, str]:
    """Params of a run from its resolved config (``batch_plan``: the planned steps, when known).

    Overrides are params only where they took effect (``effect``: the overlay result, computed from the
    config when not given); ``status`` is the failure kind of a run that did not finish.
    """
    pair, gran, aq, data = c["quant_pair"], c["quant_granularity"], c["autoquant"], c["dataset"]
    params: dict[str, Any] = {
        "model": c["model"]["name"],
        "model_kind": c["model"]["kind"],
        "model_dtype": c["model"]["dtype"],
        "model_cost_excluded_modules": ", ".join(c["model"].get("cost_excluded_modules") or []) or "none",
        "dataset": data["name"],
        "dataset_size": data["size"],
        "seq_len": data["seq_len"],
        "quant_pair": pair["name"],
        "weight": pair["weight"],
        "activation": pair["activation"],
        "base_format": pair["format_name"],
        "quant_granularity": gran["name"],
        "autoquant_method": aq["method"],
        "batch_size": aq["batch_size"],
        "num_calib_samples": aq["num_calib_samples"],
        "num_score_samples": aq["num_score_samples"],
        "effective_bits_budget": float(aq["effective_bits"]),
        "objective": aq["objective"],
        "seed": aq["seed"],
    }
    if batch_plan is not None:
        params["batch_size"] = batch_plan.batch_size
        params["num_calib_steps"] = batch_plan.num_calib_steps
        params["num_score_steps"] = batch_plan.num_score_steps
    overrides = _normalised_overrides(gran)
    if effect is None and status is None and overrides:
        effect = overlay_effect(c)
    params.update(effective_override_params(overrides, effect, status))
    return {k: _literal(v)[:6000] for k, v in params.items()}


def creation_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` plus what MLflow's fluent ``mlflow.start_run`` records about where a run comes from and
    ``MlflowClient.create_run`` does not: ``mlflow.user``, ``mlflow.source.name`` / ``.type`` and, from
    a git checkout, ``mlflow.source.git.commit`` / ``.branch`` (``tags`` win on a clash).

    MLflow's run-context registry (``mlflow.tracking.context.registry.resolve_tags``, MLflow 3.17; its
    test: test_tracking_unit.py::test_creation_tags_carry_the_git_commit_of_the_checkout_that_runs).
    """
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags(dict(tags))


def base_tags(c: Mapping[str, Any], versions: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags every run gets: package versions, pair / granularity / size for filtering (the git commit is
    MLflow's ``mlflow.source.git.commit``, set at creation: :func:`creation_tags`)."""
    if versions is None:
        from autoquant_sweep.fingerprints import package_versions

        versions = package_versions()
    tags = {tag: versions.get(pkg, "not installed") for pkg, tag in VERSION_TAGS.items()}
    tags.update(
        {
            "quant_pair": c["quant_pair"]["name"],
            "quant_granularity": c["quant_granularity"]["name"],
            "dataset_size": c["dataset"]["size"],
            "model": c["model"]["name"],
        }
    )
    return tags


def run_name(c: Mapping[str, Any], status: str | None = None) -> str:
    """``<pair> <granularity, short>[ <size>][ [status]]``, e.g. ``wint4_aint8 w-g64 [cache hit]``.

    Short and distinct from the left, so a name cut off in the UI still says which run it is; the size
    is named only when it is not ``small`` (the default).
    """
    size = c["dataset"]["size"]
    name = f"{c['quant_pair']['name']} {short_granularity(c['quant_granularity']['name'])}"
    name += f" {size}" if size != "small" else ""
    return f"{name} [{status}]" if status else name


def _hydra_job_num() -> str | None:
    """The number Hydra launched this job as in a multirun (``hydra.job.num``), None outside one."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    num = OmegaConf.select(HydraConfig.get(), "job.num", default=None, throw_on_missing=False)
    return None if num is None else str(num)


def start_run(client: Any, experiment_id: str, c: Mapping[str, Any], parent_run_id: str | None,
              start_time: int | None = None, owner: str | None = None) -> Any:
    """Create the MLflow run of one job (a child of ``parent_run_id`` when in a sweep).

    ``start_time`` (epoch ms): when the job started, if that was before the run is created (the pipeline
    creates it after the plan and the lookup); None: now. ``owner`` (``host:pid``): tag ``aqs.owner`` in
    the same write that creates the run, so no RUNNING run ever exists without its owner.
    """
    from autoquant_sweep.faults import OWNER_TAG

    tags = {RUN_NAME_TAG: run_name(c)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
        job_num = _hydra_job_num()
        if job_num is not None:
            tags[JOB_NUM_TAG] = job_num
    if owner:
        tags[OWNER_TAG] = owner
    return client.create_run(experiment_id, start_time=start_time, tags=creation_tags(tags),
                             run_name=run_name(c))


def realized_params(manifest: Mapping[str, Any]) -> dict[str, str]:
    """``realized.weight`` / ``realized.input``: the granularity ModelOpt instantiated (checked against the
    name's promise before the run could finish; ``disabled`` where the format quantizes no such tensor).

    Example:
        >>> realized_params({"realized": {"weight": "per_out_channel", "input": "per_token_dynamic"}})
        {'realized.weight': 'per_out_channel', 'realized.input': 'per_token_dynamic'}
    """
    realized = manifest.get("realized") or {}
    return {f"realized.{role}": str(realized[role]) for role in ("weight", "input") if role in realized}


def manifest_metrics(manifest: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step) of every metric a run logs, derived from its manifest only."""
    metrics: list[tuple[str, float, int]] = [
        (k, float(v), 0) for k, v in sorted(manifest["objectives"].items())
    ]
    metrics.append(("format_bits", float(manifest["format_bits"]), 0))
    metrics.append(("peak_memory_mb", float(manifest["peak_memory_mb"] or 0.0), 0))
    for key in SECONDS_KEYS:
        seconds = (manifest.get("seconds") or {}).get(key)
        if seconds is not None:  # None: a phase this method does not report apart (not a 0 s phase)
            metrics.append((f"seconds_{key}", float(seconds), 0))
    constrained = manifest.get("constrained_result") or {}
    if "is_satisfied" in constrained:
        metrics.append(("constraint_satisfied", 1.0 if constrained["is_satisfied"] else 0.0, 0))
    for index, layer in enumerate(manifest["per_layer"]):
        metrics.append((LAYER_SCORE_METRIC, float(layer["score"]), index))
    metrics += recipe_metrics(manifest, skip={k for k, _, _ in metrics})
    return [(k, v, s) for k, v, s in metrics if math.isfinite(v)]


def recipe_metrics(manifest: Mapping[str, Any], skip: set[str] = frozenset()) -> list[tuple[str, float, int]]:
    """Recipe, budget curve and evaluation metrics (docs/recommendation.md): ``recipe_effective_bits``,
    ``recipe_satisfied``, ``recipe_predicted_score``, ``curve_predicted_score`` / ``curve_effective_bits``
    (step = round(budget * 10)), ``eval_loss``, ``eval_loss_unquantized``, ``eval_loss_delta``,
    ``ppl_increase_pct``."""
    from autoquant_sweep.recipe import budget_step

    out: list[tuple[str, float, int]] = []
    recipe = manifest.get("recipe")
    if recipe:
        out.append(("recipe_effective_bits", float(recipe["achieved_effective_bits"]), 0))
        out.append(("recipe_satisfied", 1.0 if recipe["satisfied"] else 0.0, 0))
        out.append(("recipe_predicted_score", float(recipe["predicted_score"]), 0))
        out.append(("recipe_kept_16bit_groups", float(len(recipe["kept_16bit_groups"])), 0))
    for point in manifest.get("budget_curve") or []:
        step = budget_step(point["budget"])
        out.append(("curve_predicted_score", float(point["predicted_score"]), step))
        out.append(("curve_effective_bits", float(point["achieved_effective_bits"]), step))
    evaluation = manifest.get("evaluation")
    if evaluation:
        for key in ("eval_loss", "eval_loss_unquantized", "eval_loss_delta", "ppl_increase_pct"):
            out.append((key, float(evaluation[key]), 0))
    return [m for m in out if m[0] not in skip]


def readable_metrics(metrics: list[tuple[str, float, int]]) -> list[tuple[str, float, int]]:
    """``log10_<name>`` of each positive metric in :data:`LOG10_METRICS` (same step), to 3 decimals so
    that a table cell shows it whole.

    Example:
        >>> readable_metrics([("total_sensitivity", 2.473e-7, 0), ("effective_bits", 10.0, 0)])
        [('log10_total_sensitivity', -6.607, 0)]
    """
    return [(f"log10_{k}", round(math.log10(v), 3), s) for k, v, s in metrics
            if k in LOG10_METRICS and math.isfinite(v) and v > 0]


def _fmt_metric(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.3e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5) else f"{v:.4g}"


def child_description(c: Mapping[str, Any], manifest: Mapping[str, Any], *, cache_hit: bool,
                      tags: Mapping[str, str], experiment_id: str | None = None) -> str:
    """The run's description (Markdown): what ran, its numbers, and how they came about.

    Names and overlay status come from the run's own config and ``tags`` (a cache hit's manifest is its
    source run's, which may be another granularity with the same effective config).
    """
    q = {**manifest["quantization"], "pair": c["quant_pair"]["name"],
         "granularity": c["quant_granularity"]["name"],
         "status": tags.get("overlay_status", manifest["quantization"].get("status"))}
    obj = manifest.get("objectives", {})
    objective = str(c.get("autoquant", {}).get("objective", ""))
    numbers = []
    for key in sorted(("total_sensitivity", "constrained_score"), key=lambda k: k != objective):
        if key in obj and finite(obj[key]):
            log10 = f" (log10 {math.log10(obj[key]):.2f})" if obj[key] > 0 else ""
            numbers.append(f"{key} {_fmt_metric(obj[key])}{log10}")
    if "effective_bits" in obj:
        numbers.append(f"{_fmt_metric(obj['effective_bits'])} effective bits "
                       f"(budget {float(c['autoquant']['effective_bits']):g})")
    how = [w for w, on in (("no-op", q.get("status") == "noop"), ("cache hit", cache_hit)) if on]
    # first line plain text, status and numbers first: the runs table's Description column shows its start
    lines = [f"{', '.join(how) or 'computed'} · " + " · ".join(numbers)
             + f" · {q['pair']} / {q['granularity']} on {c['dataset']['name']}/{c['dataset']['size']}",
             "", f"- effective config: `{q.get('summary', '?')}`"]
    realized = manifest.get("realized")
    if realized:
        lines.append(f"- realized by ModelOpt (checked): weights `{realized['weight']}`, inputs "
                     f"`{realized['input']}` ({realized['quantizers_checked']} quantizers)")
    if q.get("status") == "noop":
        canonical = tags.get("canonical_granularity")
        same = f"`quant_granularity={canonical}`" if canonical and canonical != q["granularity"] else \
            "the pair's own format"
        lines.append(f"- **no-op**: this granularity changes nothing on `{q['pair']}`; the effective config "
                     f"equals {same} (config fingerprint `{q.get('fingerprint', '')[:12]}`)")
    elif tags.get("canonical_granularity") and tags["canonical_granularity"] != q["granularity"]:
        lines.append(f"- same effective config as `quant_granularity={tags['canonical_granularity']}`")
    source = tags.get("cache_source_run_id")
    if cache_hit:
        where = f"[{source}](#/experiments/{experiment_id}/runs/{source})" if source and experiment_id \
            else f"`{source}`"
        lines.append(f"- **cache hit**: same computation (run fingerprint) as run {where}; its numbers and "
                     "report were reused, no model was loaded")
    return "\n".join(lines) + "\n"


def _log_batch(
    client: Any, run_id: str, params: Mapping[str, str], metrics: list, tags: Mapping[str, str]
) -> None:
    """One ``MlflowClient.log_batch`` call for a run's values; the client splits it into MLflow's
    per-request limits (1000 values, 100 params, 100 tags) itself (MLflow 3.17; its test:
    test_tracking_unit.py::test_one_log_batch_call_logs_more_than_one_request_holds)."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v, step in metrics],
                     params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag(k, str(v)) for k, v in tags.items()])


def per_layer_table(manifest: Mapping[str, Any]) -> dict[str, list]:
    """Columns of the per-layer table in model order (``mlflow.log_table`` input)."""
    layers = manifest["per_layer"]
    return {
        "index": list(range(len(layers))),
        "group": [layer["group"] for layer in layers],
        "modules": [" ".join(layer["modules"]) for layer in layers],
        "score": [float(layer["score"]) for layer in layers],
        "cost": [float(layer["cost"]) for layer in layers],
        "bits": [float(layer["bits"]) for layer in layers],
        "chosen_in_budget": [bool(layer["chosen_in_budget"]) for layer in layers],
    }


def config_artifacts(manifest: Mapping[str, Any], base_format: Any, hydra_yaml: str | None) -> dict[str, str]:
    """``{file name: text}`` of the ``config/`` artifacts: effective / base quant config JSON, overrides
    JSON and the resolved Hydra config.

    The JSON is the project's canonical form (:func:`~autoquant_sweep.report.dump_json`: sorted keys,
    trailing newline), the bytes ``autoquant-sweep lookup --uniform`` hands out.
    """
    from autoquant_sweep.fingerprints import canonical_json

    q = manifest["quantization"]
    texts = {EFFECTIVE_CFG_FILE: dump_json(q["effective_quant_cfg"])}
    if base_format is not None:
        texts[BASE_CFG_FILE] = dump_json(json.loads(canonical_json(base_format)))
    texts[OVERRIDES_FILE] = dump_json(q["overrides"])
    if hydra_yaml is not None:
        texts[HYDRA_CFG_FILE] = hydra_yaml
    return texts


def _canonical(plan: Any) -> str:
    from autoquant_sweep.manifest import canonical_granularity

    try:
        return canonical_granularity(plan)
    except Exception:  # a manifest from before canonical names: the requested name
        return str(plan.cfg["quant_granularity"]["name"])


def log_outcome(
    client: Any,
    run_id: str,
    c: Mapping[str, Any],
    plan: Any,
    manifest: Mapping[str, Any],
    report_dir: Path,
    *,
    hydra_yaml: str | None,
    cache_hit: bool,
    extra_tags: Mapping[str, str] | None = None,
) -> None:
    """Log params, metrics, tags and artifacts of a finished run, then mark it FINISHED."""
    q = manifest["quantization"]
    tags = base_tags(c, manifest.get("versions"))
    tags.update(
        {
            "config_fingerprint": q["fingerprint"],
            "base_config_fingerprint": q["base_fingerprint"],
            "run_fingerprint": plan.fingerprint,
            "scoring_fingerprint": getattr(plan, "scoring_fingerprint", ""),  # the mix key
            "device": manifest["device"]["type"],
            "device_name": manifest["device"]["name"],
            "cache_hit": "true" if cache_hit else "false",
            "overlay_status": getattr(plan, "overlay_status", q["status"]),  # own, not a cache source's
            "canonical_granularity": str(manifest.get("canonical_granularity") or _canonical(plan)),
        }
    )
    tags.update(extra_tags or {})
    noop = tags["overlay_status"] == "noop"
    labels = [label for label, on in (("no-op", noop), ("cache hit", cache_hit)) if on]
    status = ", ".join(labels) or None
    tags["effective_config_summary"] = str(q.get("summary", ""))[:4900]
    experiment_id = None
    if cache_hit:  # only a cache hit's description links to another run (of the same experiment)
        try:
            experiment_id = client.get_run(run_id).info.experiment_id
        except Exception:  # the description only loses a link
            pass
    tags[NOTE_TAG] = child_description(c, manifest, cache_hit=cache_hit, tags=tags,
                                       experiment_id=experiment_id)
    metrics = manifest_metrics(manifest)
    metrics += readable_metrics(metrics)
    params = run_params(c, plan.batch_plan, effect=overlay_effect(c, plan.base_format))
    params.update(realized_params(manifest))
    tags[RUN_NAME_TAG] = run_name(c, status)  # the tag renames the run: no separate update_run request
    _log_batch(client, run_id, params, metrics, tags)
    files = [report_dir / name for name in REPORT_FILES if (report_dir / name).is_file()]
    for path in files:
        client.log_artifact(run_id, str(path), REPORT_ARTIFACT_DIR)
    if (report_dir / RECIPE_DIR).is_dir():  # recipe/quant_cfg.json, budget_curve.json / .png
        client.log_artifacts(run_id, str(report_dir / RECIPE_DIR), RECIPE_DIR)
    for name, text in config_artifacts(manifest, plan.base_format, hydra_yaml).items():
        client.log_text(run_id, text, f"{CONFIG_ARTIFACT_DIR}/{name}")
    client.log_table(run_id, data=per_layer_table(manifest), artifact_file=TABLE_FILE)
    client.set_terminated(run_id, "FINISHED")


FAILURE_TITLES = {"refused": "refused before any model was loaded", "input_error": "stopped: bad input",
                  "error": "failed"}


def failure_plan(c: Mapping[str, Any] | None, reason: str, kind: str) -> dict[str, Any]:
    """What a failed or refused run asked for and why it did not run (``failure/plan.json``)."""
    plan: dict[str, Any] = {"failure_kind": kind, "reason": reason}
    if c is not None:
        for key in ("quant_pair", "quant_granularity", "autoquant"):
            if key in c:
                plan[key] = c[key]
        if "model" in c:
            plan["model"] = {k: c["model"].get(k) for k in ("name", "kind", "dtype", "path", "embedded")}
        if "dataset" in c:
            plan["dataset"] = {k: c["dataset"].get(k) for k in ("name", "size", "seq_len")}
    if kind == "refused":
        plan["hint"] = "autoquant-sweep validate lists the quant_pair x quant_granularity that run here"
    return plan


def failure_description(c: Mapping[str, Any] | None, reason: str, kind: str) -> str:
    """The description of a failed or refused run: the whole reason, readable."""
    what = ""
    if c is not None:
        try:
            what = f": {c['quant_pair']['name']} / {c['quant_granularity']['name']}"
        except (KeyError, TypeError):
            pass
    parts = [p.strip() for p in (reason or kind).replace("\n", "; ").split("; ") if p.strip()]
    lines = [f"{FAILURE_TITLES.get(kind, kind).upper()}{what}", ""]
    lines += [f"- {p}" for p in parts]
    lines += ["", f"The plan that did not run: Artifacts > `{FAILURE_ARTIFACT_DIR}/plan.json`."]
    if kind == "refused":
        lines.append("`autoquant-sweep validate` lists which pair x granularity combinations run here.")
    return "\n".join(lines) + "\n"


def log_failure(client: Any, run_id: str, c: Mapping[str, Any] | None, reason: str, kind: str) -> None:
    """Mark a run FAILED (``kind``: refused / input_error / error): a one-line ``failure_reason`` tag, the
    whole reason as the run's description and ``failure/plan.json`` + ``failure/reason.txt``.
    """
    tags = {"failure_reason": reason.splitlines()[0][:4900] if reason else kind, "failure_kind": kind,
            NOTE_TAG: failure_description(c, reason, kind)[:60000]}
    params: dict[str, str] = {}
    if c is not None:
        try:
            tags.update(base_tags(c))
            params = run_params(c, status=kind)
            tags[RUN_NAME_TAG] = run_name(c, {"input_error": "bad input"}.get(kind, kind))
        except (KeyError, TypeError):
            pass
    tags["cache_hit"] = "false"
    try:
        _log_batch(client, run_id, params, [], tags)
        try:
            plan = dump_json(failure_plan(c, reason, kind))
            client.log_text(run_id, plan, f"{FAILURE_ARTIFACT_DIR}/plan.json")
            client.log_text(run_id, (reason or kind) + "\n", f"{FAILURE_ARTIFACT_DIR}/reason.txt")
        except Exception as exc:  # the FAILED status and reason tag matter more than the extras
            log.warning("could not log the failure details of run %s: %s", run_id, exc)
    finally:
        client.set_terminated(run_id, "FAILED")
