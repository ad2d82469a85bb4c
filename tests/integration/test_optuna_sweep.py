"""Optuna studies through hydra-optuna-sweeper on the tiny model: records, seeds, resume, refusals.

The studies are the session's reference studies (conftest ``reference_study``: computed once, shared by
every worker); the test that resumes one works on its own copy.
"""

from __future__ import annotations

import json

import optuna
import pytest

from autoquant_sweep.compute import MODEL_CACHE
from autoquant_sweep.pipeline import run

from ..conftest import (
    REFERENCE_SPACE,
    copy_study,
    run_app,
    run_in_process,
    study_name,
    study_stores,
    sweep_output,
)

pytestmark = pytest.mark.integration

STUDY = study_name()  # the default study (`-m hydra/sweeper=optuna`)


def store_client(folder):
    """A client of the study's MLflow store, its registry included (never the process-wide registry URI
    that an earlier in-process run of this worker may have set)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{folder}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _params(study: optuna.Study) -> list[tuple[str, str]]:
    return [(t.params["quant_pair"], t.params["quant_granularity"]) for t in study.trials]


def _parent_and_children(client, study: str) -> tuple[object, list]:
    """The parent run of the sweep of Optuna study ``study`` (one sweep each) and its child runs."""
    experiment = client.get_experiment_by_name("sensitivity").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags
                 and r.data.tags.get("optuna_study") == study]
    return parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


@pytest.fixture(scope="module")
def default_study(reference_study):
    """`-m hydra/sweeper=optuna` with only the stores moved to a temp dir and 5 trials (then its Pareto
    variant in the same stores: a second parent run and a second study)."""
    return reference_study["default"], sweep_output(reference_study["default"])


def test_default_study_records_trials_in_optuna_and_mlflow(default_study):

    tmp_path, result = default_study
    assert "best config: quant_pair=" in result.stdout
    assert "registered: autoquant-qwen3_tiny-constrained_score version 1" in result.stdout
    assert "best per budget" in result.stdout and "proxy fidelity: Spearman" in result.stdout
    assert "autoquant-sweep ui" in result.stdout
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 5
    cpu_pairs = {
        "wint8_aint8",
        "wint8_afp16",
        "wint4_afp16",
        "wint4_aint8",
        "wint4_afp8",
        "wfp8_afp8",
        "wfp8_afp16",
    }
    assert {pair for pair, _ in _params(study)} <= cpu_pairs
    assert all("grid_id" in t.system_attrs for t in study.trials)  # sampled by the GridSampler
    assert "Sampler: GridSampler" in result.stderr + result.stdout
    assert len(set(_params(study))) == 5  # every combination at most once
    client = store_client(tmp_path)
    parent, children = _parent_and_children(client, STUDY)
    parents = [parent]
    assert len(children) == 5
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    by_params = {(r.data.params["quant_pair"], r.data.params["quant_granularity"]): r for r in children}
    for trial in completed:
        child = by_params[(trial.params["quant_pair"], trial.params["quant_granularity"])]
        assert child.data.metrics["constrained_score"] == pytest.approx(trial.value, rel=1e-12)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "optuna")}
    expected = {"optuna/optimization_history.png", "optuna/param_importances.png", "optuna/trials.csv"}
    assert expected <= artifacts
    import pandas as pd

    csv = client.download_artifacts(parents[0].info.run_id, "optuna/trials.csv", str(tmp_path))
    trials = pd.read_csv(csv)
    by_id = {r.info.run_id: r for r in children}
    assert sorted(trials["run_id"]) == sorted(by_id)  # every trial linked to its own run
    for row in trials.itertuples():
        params = by_id[row.run_id].data.params
        assert (params["quant_pair"], params["quant_granularity"]) == (row.params_quant_pair,
                                                                      row.params_quant_granularity)
        assert by_id[row.run_id].data.tags["hydra_job_num"] == str(row.number)  # a new study: trial k, job k
    assert parents[0].data.tags["optuna_study"] == STUDY
    sweep_folder = parents[0].info.run_name.removeprefix("sweep-")
    results = list(tmp_path.glob(f"multirun/sensitivity/{sweep_folder}/optimization_results.yaml"))
    assert len(results) == 1 and "best_params" in results[0].read_text()


def test_default_study_answer_is_the_lowest_recorded_recipe_never_a_noop(default_study):
    """The printed / registered best is the satisfied recipe with the lowest recorded constrained_score,
    named by its canonical granularity, and points at the run that computed it; proxy fidelity is
    scipy's Spearman on the recorded numbers."""
    import re

    from scipy.stats import spearmanr

    from autoquant_sweep.canonical import canonical_name
    from autoquant_sweep.config.groups import load_group
    from autoquant_sweep.quant.formats import resolve_format
    from autoquant_sweep.quant.overlay import apply_overlay, validate_overrides

    tmp_path, result = default_study
    client = store_client(tmp_path)
    parent, children = _parent_and_children(client, STUDY)
    finished = [r for r in children if r.info.status == "FINISHED"]
    satisfied = [r for r in finished if r.data.metrics.get("recipe_satisfied") == 1.0]
    lowest = min(r.data.metrics["constrained_score"] for r in satisfied)
    printed = re.search(r"best config: quant_pair=(\S+) quant_granularity=(\S+) constrained_score=(\S+) "
                        r"\(run (\w+)\)", result.stdout)
    assert printed, result.stdout[-3000:]
    pair, gran, value, run_id = printed.groups()
    assert float(value) == pytest.approx(lowest, rel=1e-6)
    best = client.get_run(run_id)
    assert best.data.tags["cache_hit"] == "false"  # the run that computed it
    assert best.data.metrics["constrained_score"] == lowest and best.data.metrics["recipe_satisfied"] == 1.0
    assert best.data.metrics["recipe_effective_bits"] <= 10.0
    # the printed granularity is canonical: no other name gives this effective config with less
    pair_cfg = next(p for p in load_group("quant_pair") if p["name"] == pair)
    gran_cfg = next(g for g in load_group("quant_granularity") if g["name"] == gran)
    effective = apply_overlay(resolve_format(pair_cfg["format_name"]),
                              validate_overrides(gran_cfg.get("quant_cfg_overrides") or {})).format
    assert canonical_name(pair_cfg, gran, effective) == gran == best.data.tags["canonical_granularity"]
    mv = client.get_model_version_by_alias("autoquant-qwen3_tiny-constrained_score", "best")
    assert mv.run_id == run_id and mv.tags["granularity"] == gran
    assert "measured held-out loss" in result.stdout and "achieves" in result.stdout
    computed = [r for r in finished if r.data.tags["cache_hit"] == "false"
                and "eval_loss_delta" in r.data.metrics]
    metrics = client.get_run(parent.info.run_id).data.metrics
    if len(computed) >= 3:
        rho = spearmanr([r.data.metrics["constrained_score"] for r in computed],
                        [r.data.metrics["eval_loss_delta"] for r in computed]).statistic
        assert metrics["proxy_fidelity_spearman"] == pytest.approx(rho, abs=1e-12)
    assert metrics["proxy_fidelity_n"] == len(computed)


def test_same_seed_same_sequence_and_resume_grows_the_study(default_study, embedded, tmp_path):
    tmp_path = copy_study(default_study[0], tmp_path / "study")  # this test writes to the study
    storage = f"sqlite:///{tmp_path}/optuna.db"
    first = _params(optuna.load_study(study_name=STUDY, storage=storage))
    # a second study with the same seed, sharing the MLflow store: same proposals, all cache hits
    other = tmp_path / "other"
    other.mkdir()
    result = run_in_process(
        [
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=5",
            f"hydra.sweeper.storage=sqlite:///{other}/o.db",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"tracking.artifact_location={tmp_path}/mlruns",
            "autoquant.mix=false",  # as the reference study (not in the cache key or the study name)
        ],
        cwd=other,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _params(optuna.load_study(study_name=STUDY, storage=f"sqlite:///{other}/o.db")) == first
    completed = [t for t in optuna.load_study(study_name=STUDY, storage=storage).trials
                 if t.state == optuna.trial.TrialState.COMPLETE]
    # every trial that computed in the first study is a cache hit here (refused ones fail before the cache)
    assert (result.stderr + result.stdout).count("cache hit:") == len(completed) > 0
    assert "running AutoQuant" not in result.stderr + result.stdout  # (ModelOpt's bars are quiet anyway)
    # resume: the same command again adds trials to the same study
    again = run_in_process(
        ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", *study_stores(tmp_path)], cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = optuna.load_study(study_name=STUDY, storage=storage)
    assert len(resumed.trials) == 7
    assert _params(resumed)[:5] == first


def test_refused_combination_is_a_failed_trial_and_the_sweep_completes(reference_study):
    """The reference grid's refused pair: three FAILED trials and runs saying why; the sweep completed."""
    folder = reference_study["space"]
    study = optuna.load_study(study_name=study_name(space=REFERENCE_SPACE), storage=f"sqlite:///{folder}/optuna.db")
    states = {(t.params["quant_pair"], t.params["quant_granularity"]): t.state for t in study.trials}
    granularities = ("a_per_token_dynamic", "default", "a_per_tensor_static")
    assert states == {
        **{("wint8_afp16", g): optuna.trial.TrialState.COMPLETE for g in granularities},
        **{("wfp4_afp16", g): optuna.trial.TrialState.FAIL for g in granularities},
    }
    assert study.best_trial.params["quant_pair"] == "wint8_afp16"

    client = store_client(folder)
    runs = client.search_runs([client.get_experiment_by_name("sensitivity").experiment_id])
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 3 and all("CUDA" in r.data.tags["failure_reason"] for r in failed)


def test_pareto_preset_returns_a_pareto_set(reference_study):
    folder = reference_study["default"]
    study = optuna.load_study(study_name=study_name(["search=pareto"]), storage=f"sqlite:///{folder}/optuna.db")
    assert len(study.directions) == 2 and len(study.trials) == 4

    client = store_client(folder)
    parent, _ = _parent_and_children(client, study.study_name)
    assert "optuna/pareto_front.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    front = study.best_trials
    assert front and all(len(t.values) == 2 for t in front)
    values = [t.values for t in study.trials if t.values]
    for t in front:  # nothing in the study dominates a Pareto trial
        assert not any(v[0] <= t.values[0] and v[1] <= t.values[1] and v != t.values for v in values)


def test_trial_scores_equal_a_fresh_process_after_other_formats(compose_cfg, tmp_path, embedded):
    """Each trial starts from pristine weights: no state leaks from earlier formats in the process."""
    # the per-layer scores are computed before the held-out evaluation: the target skips it (the other
    # formats keep it, so a leak through evaluating the pristine model is still covered)
    target = ["quant_pair=wint4_aint8", "quant_granularity=w_group64", "autoquant.cache=false",
              "autoquant.evaluate=false"]
    for other in (
        ["quant_pair=wfp8_afp8"],
        ["quant_pair=wint8_aint8", "quant_granularity=a_per_token_dynamic"],
    ):
        run(compose_cfg([*other, "autoquant.cache=false"]), run_dir=tmp_path / "x")
    assert MODEL_CACHE._models, "the process should reuse one pristine model"
    in_process = run(compose_cfg(target), run_dir=tmp_path / "in-process")
    fresh = run_app(
        [*target, "tracking=off", "output_layout=publish", f"output_layout.publish_root={tmp_path}/pub"],
        cwd=tmp_path,
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    (manifest_path,) = (tmp_path / "pub").rglob("manifest.json")
    fresh_layers = json.loads(manifest_path.read_text())["per_layer"]
    assert [(x["group"], x["score"]) for x in in_process.manifest["per_layer"]] == [
        (x["group"], x["score"]) for x in fresh_layers
    ]


def test_no_op_granularities_cost_a_cache_hit_and_the_space_is_covered_once(reference_study):
    """Activation overlays on a weight-only pair are the pair's own config: one computed trial, two cache
    hits, every combination once (n_trials > combinations), and the answer is named `default`."""
    folder = reference_study["space"]
    result = sweep_output(folder)
    study = optuna.load_study(study_name=study_name(space=REFERENCE_SPACE), storage=f"sqlite:///{folder}/optuna.db")
    granularities = ("a_per_tensor_static", "a_per_token_dynamic", "default")
    grid = [(pair, g) for pair in ("wint8_afp16", "wfp4_afp16") for g in granularities]
    assert sorted(_params(study)) == sorted(grid)
    client = store_client(folder)
    runs = client.search_runs([client.get_experiment_by_name("sensitivity").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") and r.info.status == "FINISHED"]
    assert {r.data.params["quant_pair"] for r in children} == {"wint8_afp16"}
    assert sorted(r.data.tags["cache_hit"] for r in children) == ["false", "true", "true"]
    assert {r.data.tags["canonical_granularity"] for r in children} == {"default"}
    (computed,) = [r for r in children if r.data.tags["cache_hit"] == "false"]
    assert "best config: quant_pair=wint8_afp16 quant_granularity=default " in result.stdout
    assert f"(run {computed.info.run_id})" in result.stdout
    mv = client.get_model_version_by_alias("autoquant-qwen3_tiny-constrained_score", "best")
    assert mv.run_id == computed.info.run_id and mv.tags["granularity"] == "default"
