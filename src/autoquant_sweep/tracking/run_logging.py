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
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoquant_sweep.report import REPORT_FILES, dump_json

log = logging.getLogger(__name__)

REPORT_ARTIFACT_DIR = "report"
CONFIG_ARTIFACT_DIR = "config"
EFFECTIVE_CFG_FILE = "effective_quant_cfg.json"
BASE_CFG_FILE = "base_quant_cfg.json"
OVERRIDES_FILE = "overrides.json"
HYDRA_CFG_FILE = "config.yaml"
TABLE_FILE = "per_layer_table.json"
LAYER_SCORE_METRIC = "layer_score"
SECONDS_KEYS = ("calibration", "scoring", "autoquant", "load_and_tokenize")
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
_GIT_COMMIT: str | None = None


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


def run_params(c: Mapping[str, Any], batch_plan: Any | None = None) -> dict[str, str]:
    """Params of a run from its resolved config (``batch_plan``: the planned steps, when known)."""
    pair, gran, aq, data = c["quant_pair"], c["quant_granularity"], c["autoquant"], c["dataset"]
    params: dict[str, Any] = {
        "model": c["model"]["name"],
        "model_kind": c["model"]["kind"],
        "model_dtype": c["model"]["dtype"],
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
    params.update(flatten_overrides(_normalised_overrides(gran)))
    return {k: _literal(v)[:6000] for k, v in params.items()}


def git_commit() -> str:
    """``git rev-parse HEAD`` of the project root, ``unknown`` outside a repository."""
    global _GIT_COMMIT
    if _GIT_COMMIT is None:
        from autoquant_sweep.tracking.store import store_root

        try:
            result = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=store_root(), capture_output=True, text=True, timeout=5
            )
            commit = result.stdout.strip() if result.returncode == 0 else ""
            _GIT_COMMIT = commit or "unknown"
        except (OSError, subprocess.SubprocessError):
            _GIT_COMMIT = "unknown"
    return _GIT_COMMIT


def base_tags(c: Mapping[str, Any], versions: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags every run gets: git commit, package versions, pair / granularity / size for filtering."""
    if versions is None:
        from autoquant_sweep.runner import package_versions

        versions = package_versions()
    tags = {"git_commit": git_commit()}
    tags.update({tag: versions.get(pkg, "not installed") for pkg, tag in VERSION_TAGS.items()})
    tags.update(
        {
            "quant_pair": c["quant_pair"]["name"],
            "quant_granularity": c["quant_granularity"]["name"],
            "dataset_size": c["dataset"]["size"],
            "model": c["model"]["name"],
        }
    )
    return tags


def run_name(c: Mapping[str, Any]) -> str:
    """``<pair>-<granularity>-<size>``."""
    return f"{c['quant_pair']['name']}-{c['quant_granularity']['name']}-{c['dataset']['size']}"


def start_run(client: Any, experiment_id: str, c: Mapping[str, Any], parent_run_id: str | None) -> Any:
    """Create the MLflow run of one job (a child of ``parent_run_id`` when in a sweep)."""
    tags = {"mlflow.runName": run_name(c)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return client.create_run(experiment_id, tags=tags, run_name=run_name(c))


def manifest_metrics(manifest: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step) of every metric a run logs, derived from its manifest only."""
    metrics: list[tuple[str, float, int]] = [
        (k, float(v), 0) for k, v in sorted(manifest["objectives"].items())
    ]
    metrics.append(("format_bits", float(manifest["format_bits"]), 0))
    metrics.append(("peak_memory_mb", float(manifest["peak_memory_mb"] or 0.0), 0))
    for key in SECONDS_KEYS:
        if key in manifest.get("seconds", {}):
            metrics.append((f"seconds_{key}", float(manifest["seconds"][key]), 0))
    constrained = manifest.get("constrained_result") or {}
    if "is_satisfied" in constrained:
        metrics.append(("constraint_satisfied", 1.0 if constrained["is_satisfied"] else 0.0, 0))
    for index, layer in enumerate(manifest["per_layer"]):
        metrics.append((LAYER_SCORE_METRIC, float(layer["score"]), index))
    return [(k, v, s) for k, v, s in metrics if math.isfinite(v)]


def _log_batch(
    client: Any, run_id: str, params: Mapping[str, str], metrics: list, tags: Mapping[str, str]
) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    m = [Metric(k, v, now, s) for k, v, s in metrics]
    p = [Param(k, v) for k, v in params.items()]
    t = [RunTag(k, str(v)) for k, v in tags.items()]
    for i in range(0, max(len(m), len(p), len(t)), 100):  # MLflow caps a batch at 1000 metrics / 100 params
        client.log_batch(run_id, metrics=m[i : i + 100], params=p[i : i + 100], tags=t[i : i + 100])


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


def write_config_artifacts(
    folder: Path, manifest: Mapping[str, Any], base_format: Any, hydra_yaml: str | None
) -> None:
    """effective / base quant config JSON, overrides JSON and the resolved Hydra config into ``folder``."""
    from autoquant_sweep.quant.overlay import canonical_json

    q = manifest["quantization"]
    (folder / EFFECTIVE_CFG_FILE).write_text(dump_json(q["effective_quant_cfg"]))
    if base_format is not None:
        (folder / BASE_CFG_FILE).write_text(dump_json(json.loads(canonical_json(base_format))))
    (folder / OVERRIDES_FILE).write_text(dump_json(q["overrides"]))
    if hydra_yaml is not None:
        (folder / HYDRA_CFG_FILE).write_text(hydra_yaml)


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
    import mlflow

    q = manifest["quantization"]
    tags = base_tags(c, manifest.get("versions"))
    tags.update(
        {
            "config_fingerprint": q["fingerprint"],
            "base_config_fingerprint": q["base_fingerprint"],
            "run_fingerprint": plan.fingerprint,
            "device": manifest["device"]["type"],
            "device_name": manifest["device"]["name"],
            "cache_hit": "true" if cache_hit else "false",
            "overlay_status": q["status"],
        }
    )
    tags.update(extra_tags or {})
    _log_batch(client, run_id, run_params(c, plan.batch_plan), manifest_metrics(manifest), tags)
    files = [report_dir / name for name in REPORT_FILES if (report_dir / name).is_file()]
    for path in files:
        client.log_artifact(run_id, str(path), REPORT_ARTIFACT_DIR)
    with tempfile.TemporaryDirectory(prefix="aqs-cfg-") as tmp:
        write_config_artifacts(Path(tmp), manifest, plan.base_format, hydra_yaml)
        client.log_artifacts(run_id, tmp, CONFIG_ARTIFACT_DIR)
    mlflow.log_table(data=per_layer_table(manifest), artifact_file=TABLE_FILE, run_id=run_id)
    client.set_terminated(run_id, "FINISHED")


def log_failure(client: Any, run_id: str, c: Mapping[str, Any] | None, reason: str, kind: str) -> None:
    """Mark a run FAILED with a one-line ``failure_reason`` tag (``kind``: refused / input_error / error)."""
    tags = {"failure_reason": reason.splitlines()[0][:4900] if reason else kind, "failure_kind": kind}
    params: dict[str, str] = {}
    if c is not None:
        try:
            tags.update(base_tags(c))
            params = run_params(c)
        except (KeyError, TypeError):
            pass
    tags["cache_hit"] = "false"
    try:
        _log_batch(client, run_id, params, [], tags)
    finally:
        client.set_terminated(run_id, "FAILED")
