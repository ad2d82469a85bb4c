"""MLflow tracking end to end on the tiny model, against a real SQLite store in a temp dir (no mocks).

One module-scoped store is shared by the tests, in order: single run, refused run, 2x2 sweep, repeated
sweep (cache), worse sweep (registry alias kept), lookup in a fresh process, apply, UI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import warm
from tests.conftest import CONF, cli_in_process, run_in_process

pytestmark = pytest.mark.integration

GRID = ["quant_pair=wint8_aint8,wint4_aint8", "quant_granularity=default,w_group64", "dataset.size=small",
        "autoquant.mix=false"]  # the sweep-end mix has its own test (test_mix_tracking)
NAME = "autoquant-qwen3_tiny-constrained_score"
EXPERIMENT = "tracking_test"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, new_mlflow_store) -> dict:
    root = tmp_path_factory.mktemp("mlflow-store")
    uri = new_mlflow_store(root / "mlflow.db")
    return {
        "root": root,
        "uri": uri,
        "overrides": [f"tracking.tracking_uri={uri}", f"tracking.artifact_location={root / 'mlruns'}",
                      f"experiment={EXPERIMENT}"],
        "state": {},
    }


@pytest.fixture(scope="module")
def client(store: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("sensitivity", overrides=overrides)


def _experiment_id(client) -> str:
    return client.get_experiment_by_name(EXPERIMENT).experiment_id


def _children(client, parent_id: str) -> list:
    return client.search_runs([_experiment_id(client)], f"tags.mlflow.parentRunId = '{parent_id}'")


def _parents(client) -> list:
    return client.search_runs([_experiment_id(client)], "tags.sweep = 'true'",
                              order_by=["attributes.start_time ASC"])


def _sweep(store: dict, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = run_in_process(["-m", *args, *store["overrides"]], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _job_logs(cwd: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(cwd.glob("multirun/**/*.log")))


def test_single_run_logs_params_metrics_artifacts_tags(store: dict, client, tmp_path: Path) -> None:
    from autoquant_sweep.app import tracked_run

    pair_gran = ["quant_pair=wint4_aint8", "quant_granularity=recipe_match_channel_token"]
    cfg = _compose([*pair_gran, *store["overrides"]])
    outcome = tracked_run(cfg, tmp_path)
    run = client.search_runs([_experiment_id(client)])[0]
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in t  # single runs have no parent
    assert p["model"] == "qwen3_tiny" and p["dataset"] == "captions" and p["dataset_size"] == "small"
    assert (p["quant_pair"], p["weight"], p["activation"]) == ("wint4_aint8", "int4", "int8")
    assert p["base_format"] == "AQS_W4A8_INT4_BLOCK_INT8_CFG"
    assert p["quant_granularity"] == "recipe_match_channel_token"
    assert p["override.weight.axis"] == "0"
    assert p["override.input.type"] == "dynamic" and p["override.input.block_sizes.-1"] == "None"
    assert p["autoquant_method"] == "gradient" and p["num_calib_steps"] == "4" and p["num_score_steps"] == "4"
    assert p["batch_size"] == "4" and p["effective_bits_budget"] == "10.0"
    assert p["objective"] == "constrained_score"
    for key, value in outcome.objectives.items():
        assert m[key] == pytest.approx(value, rel=1e-12)
    for key in ("format_bits", "peak_memory_mb", "seconds_calibration", "seconds_scoring",
                "seconds_autoquant", "seconds_load_and_tokenize", "seconds_budget_curve",
                "seconds_evaluation"):
        assert key in m
    recipe, ev = outcome.manifest["recipe"], outcome.manifest["evaluation"]
    assert m["recipe_effective_bits"] == pytest.approx(recipe["achieved_effective_bits"])
    assert m["recipe_satisfied"] == 1.0 and recipe["satisfied"]
    for key in ("eval_loss", "eval_loss_unquantized", "eval_loss_delta", "ppl_increase_pct"):
        assert m[key] == pytest.approx(ev[key], rel=1e-12)
    curve = outcome.manifest["budget_curve"]
    for metric, field in (("curve_predicted_score", "predicted_score"),
                          ("curve_effective_bits", "achieved_effective_bits")):
        logged = {h.step: h.value for h in client.get_metric_history(run.info.run_id, metric)}
        assert logged == {round(p["budget"] * 10): pytest.approx(p[field]) for p in curve}
    assert t["canonical_granularity"] == "recipe_match_channel_token"
    history = client.get_metric_history(run.info.run_id, "layer_score")
    layers = outcome.manifest["per_layer"]
    assert sorted(h.step for h in history) == list(range(len(layers)))
    expected = {i: pytest.approx(layer["score"]) for i, layer in enumerate(layers)}
    assert {h.step: h.value for h in history} == expected
    q = outcome.manifest["quantization"]
    assert t["config_fingerprint"] == q["fingerprint"] and t["run_fingerprint"] == outcome.plan.fingerprint
    assert t["cache_hit"] == "false" and t["device"] == "cpu"
    for tag in ("version.torch", "version.modelopt", "version.transformers", "version.hydra",
                "version.optuna"):
        assert t[tag] and t[tag] != "not installed"
    assert t["mlflow.source.type"] == "LOCAL" and t["mlflow.user"]  # MLflow's run context, at creation
    files = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    files |= {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    files |= {a.path for a in client.list_artifacts(run.info.run_id)}
    files |= {a.path for a in client.list_artifacts(run.info.run_id, "recipe")}
    for name in ("report/manifest.json", "report/per_layer.json", "report/per_layer.md",
                 "report/per_layer.csv", "report/per_layer.png", "config/effective_quant_cfg.json",
                 "config/base_quant_cfg.json",
                 "config/overrides.json", "config/config.yaml", "per_layer_table.json",
                 "recipe/quant_cfg.json", "recipe/budget_curve.json", "recipe/budget_curve.png"):
        assert name in files, name
    local = Path(client.download_artifacts(run.info.run_id, "config/effective_quant_cfg.json", str(tmp_path)))
    assert json.loads(local.read_text()) == q["effective_quant_cfg"]
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "per_layer_table.json",
                                                      str(tmp_path))).read_text())
    assert len(table["data"]) == len(layers)


def test_refused_combination_is_a_failed_run_without_model_load(store: dict, client, tmp_path: Path) -> None:
    from autoquant_sweep.app import tracked_run
    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.errors import CapabilityRefusedError

    MODEL_CACHE.clear()
    cfg = _compose(["quant_pair=wfp4_afp8", "quant_granularity=w_per_out_channel", *store["overrides"]])
    with pytest.raises(CapabilityRefusedError):
        tracked_run(cfg, tmp_path)
    assert not MODEL_CACHE._models  # refused before any model was loaded
    run = client.search_runs([_experiment_id(client)], "params.quant_pair = 'wfp4_afp8'")[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_kind"] == "refused" and run.data.tags["failure_reason"]
    assert not list(tmp_path.iterdir())


def test_grid_makes_parent_children_summary_and_registers_best(store: dict, client, tmp_path: Path) -> None:
    result = _sweep(store, GRID, tmp_path)
    parents = _parents(client)
    assert len(parents) == 1
    parent = parents[0]
    children = _children(client, parent.info.run_id)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    # the trials' PNGs are drawn after the last trial (off each trial's critical path), into every job's
    # report folder and every child run, each whole
    for child in children:
        logged = {a.path for a in client.list_artifacts(child.info.run_id, "report")}
        logged |= {a.path for a in client.list_artifacts(child.info.run_id, "recipe")}
        assert {"report/per_layer.png", "recipe/budget_curve.png"} <= logged
    manifests = sorted(tmp_path.glob("multirun/**/report/manifest.json"))
    pngs = [m.parent / "per_layer.png" for m in manifests] + [m.parent / "recipe/budget_curve.png"
                                                              for m in manifests]
    assert len(manifests) == 4 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert min(p.stat().st_mtime for p in pngs) >= max(m.stat().st_mtime for m in manifests)
    assert not list(tmp_path.glob("multirun/**/.*.tmp-*"))
    assert "drew the plots of 4 trial reports after the last trial" in result.stdout + result.stderr
    assert {(c.data.params["quant_pair"], c.data.params["quant_granularity"]) for c in children} == {
        (p, g) for p in ("wint8_aint8", "wint4_aint8") for g in ("default", "w_group64")}
    summary = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/sweep_summary.csv", "summary/sweep_summary.md",
            "summary/heatmap_constrained_score.png"} <= summary
    recommendation = {a.path for a in client.list_artifacts(parent.info.run_id, "recommendation")}
    assert {"recommendation/best_per_budget.md", "recommendation/proxy_fidelity.png",
            "recommendation/pareto_curves.png", "recommendation/curve_points.csv"} <= recommendation
    # proxy fidelity = scipy's Spearman on the numbers the children recorded
    from scipy.stats import spearmanr

    x = [c.data.metrics["constrained_score"] for c in children]
    y = [c.data.metrics["eval_loss_delta"] for c in children]
    parent_metrics = client.get_run(parent.info.run_id).data.metrics
    assert parent_metrics["proxy_fidelity_spearman"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    csv_text = Path(client.download_artifacts(parent.info.run_id, "summary/sweep_summary.csv",
                                              str(tmp_path))).read_text()
    assert len(csv_text.strip().splitlines()) == 5 and "w_group64" in csv_text
    best = min(children, key=lambda c: c.data.metrics["constrained_score"])
    mv = client.get_model_version_by_alias(NAME, "best")
    assert mv.run_id == best.info.run_id and mv.tags["source_run_id"] == best.info.run_id
    assert client.get_model_version_by_alias(NAME, "best-b10").version == mv.version  # the budget band
    assert mv.source.endswith("/recipe") and mv.tags["artifact"] == "recipe/quant_cfg.json"
    assert mv.tags["quant_pair"] == best.data.params["quant_pair"]
    assert mv.tags["granularity"] == best.data.tags["canonical_granularity"]
    assert float(mv.tags["objective_value"]) == best.data.metrics["constrained_score"]
    assert mv.tags["budget"] == "10.0" and mv.tags["recipe_satisfied"] == "true"
    assert float(mv.tags["eval_loss"]) == best.data.metrics["eval_loss"]
    assert "effective bits" in mv.description and "perplexity" in mv.description
    assert mv.tags["dataset"] == "captions" and mv.tags["dataset_size"] == "small"
    store["state"].update(first_children=children, best_run=best, best_version=mv.version)


def test_repeated_grid_is_served_from_cache(store: dict, client, tmp_path: Path) -> None:
    from autoquant_sweep import faults

    first = {(c.data.params["quant_pair"], c.data.params["quant_granularity"]): c
             for c in store["state"]["first_children"]}
    t0 = time.perf_counter()
    result = _sweep(store, GRID, tmp_path)
    elapsed = time.perf_counter() - t0
    parent = _parents(client)[-1]
    children = _children(client, parent.info.run_id)
    assert len(children) == 4
    logs = _job_logs(tmp_path)
    assert logs.count("cache hit:") == 4
    assert "running AutoQuant" not in logs and "Estimating auto_quantize scores" not in result.stderr
    for child in children:
        assert child.data.tags["cache_hit"] == "true"
        assert child.data.tags[faults.OWNER_TAG] == faults.owner()  # a cache hit's run says who made it
        source = first[(child.data.params["quant_pair"], child.data.params["quant_granularity"])]
        assert child.data.tags["cache_source_run_id"] == source.info.run_id
        assert child.data.metrics == source.data.metrics
        assert child.data.params == source.data.params
    reports = sorted(tmp_path.glob("multirun/**/report/manifest.json"))
    assert len(reports) == 4
    assert len(sorted(tmp_path.glob("multirun/**/report/recipe/quant_cfg.json"))) == 4
    # alias best stays on the first sweep's version: equal values never move it
    assert client.get_model_version_by_alias(NAME, "best").version == store["state"]["best_version"]
    # the new version (a cache hit won) points at the run that computed the result, not the cache hit
    newest = max(client.search_model_versions(f"name = '{NAME}'"), key=lambda v: int(v.version))
    assert newest.run_id == store["state"]["best_run"].info.run_id
    assert newest.tags["selected_run_id"] in {c.info.run_id for c in children}
    print(f"cached 2x2 sweep: {elapsed:.1f} s wall (incl. interpreter + imports)")


def test_worse_sweep_does_not_move_best(store: dict, client, tmp_path: Path) -> None:
    _sweep(store, ["quant_pair=wint4_aint8", "quant_granularity=default"], tmp_path)
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert len(versions) == 3
    newest = max(versions, key=lambda v: int(v.version))
    assert newest.tags["quant_pair"] == "wint4_aint8"
    assert float(newest.tags["objective_value"]) > float(
        client.get_model_version_by_alias(NAME, "best").tags["objective_value"])
    assert client.get_model_version_by_alias(NAME, "best").version == store["state"]["best_version"]


def test_lookup_in_fresh_process_returns_same_bytes(store: dict, client, tmp_path: Path) -> None:
    from autoquant_sweep.tracking.registry import lookup_best_config

    out = tmp_path / "best.json"
    result = warm.run(
        [sys.executable, "-m", "autoquant_sweep.cli", "lookup", NAME, "--tracking-uri", store["uri"],
         "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "aliases: best" in result.stdout and "kept at 16 bits:" in result.stdout
    best = store["state"]["best_run"]
    artifact = Path(client.download_artifacts(best.info.run_id, "recipe/quant_cfg.json",
                                              str(tmp_path / "dl")))
    assert out.read_bytes() == artifact.read_bytes()  # the per-layer recipe
    cfg = lookup_best_config(NAME, tracking_uri=store["uri"])
    for rule in cfg["quant_cfg"]:
        block = (rule.get("cfg") or {}).get("block_sizes") or {}
        assert all(isinstance(k, int) for k in block if k not in ("type", "scale_bits", "scale_block_sizes"))
    uniform = lookup_best_config(NAME, tracking_uri=store["uri"], uniform=True)
    assert any(r["quantizer_name"] == "*weight_quantizer" for r in uniform["quant_cfg"])


def test_apply_quantizes_with_the_registered_recipe(store: dict, client, tmp_path: Path) -> None:
    import modelopt.torch.opt as mto
    from transformers import AutoModelForCausalLM

    from autoquant_sweep.tracking.cli import version_recipe
    from autoquant_sweep.tracking.registry import lookup_best_config

    out = tmp_path / "quantized"
    result = cli_in_process(["apply", NAME, "--tracking-uri", store["uri"], "--out", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "modelopt_state.pth").is_file() and (out / "applied_quant_cfg.json").is_file()
    mv = client.get_model_version_by_alias(NAME, "best")
    # same recipe, same calibration captions, same held-out batches: the run's logged eval_loss
    info = json.loads((out / "autoquant_apply.json").read_text())
    assert info["config"] == "recipe"
    logged = client.get_run(mv.run_id).data.metrics["eval_loss"]
    assert info["evaluation"]["eval_loss"] == pytest.approx(logged, abs=1e-6)
    cfg = lookup_best_config(NAME, tracking_uri=store["uri"])
    recipe = version_recipe(mv, store["uri"])
    mto.enable_huggingface_checkpointing()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not model.lm_head.weight_quantizer.is_enabled
    rules = {r["quantizer_name"]: r for r in cfg["quant_cfg"]}
    for group in recipe["quantized_groups"]:
        wq = model.get_submodule(group).weight_quantizer
        assert wq.is_enabled and wq.num_bits == rules[f"{group}.weight_quantizer"]["cfg"]["num_bits"]
        assert wq.amax is not None  # calibrated
    for group in recipe["kept_16bit_groups"]:
        assert not model.get_submodule(group).weight_quantizer.is_enabled
