"""The mix end to end: two sweeps of one Optuna study in a real SQLite MLflow store (tiny Qwen3, CPU).

The second sweep mixes its own trials at its end; ``autoquant-sweep mix --study`` then mixes the trials
of both sweeps in a fresh process (one that did not run them), registers the mix, and ``apply`` of that
version reproduces the held-out loss the mix run logged. The sweeps, ``lookup`` and ``apply`` run in the
test's interpreter (``run_in_process`` / ``cli_in_process``); the mix stays a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from tests import warm
from tests.conftest import cli_in_process, run_in_process, study_name

pytestmark = pytest.mark.integration

NAME = "autoquant-qwen3_tiny-constrained_score"
SPACE = ["quant_pair=choice(wint4_afp16,wint8_afp16)", "quant_granularity=choice(default,w_group64)"]
STUDY = study_name([], SPACE)  # both sweeps of the module's study


def _client(folder):
    from mlflow import MlflowClient

    uri = f"sqlite:///{folder}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def study(tmp_path_factory, embedded, new_mlflow_store):
    tmp = tmp_path_factory.mktemp("mix-study")
    new_mlflow_store(tmp / "mlflow.db")
    stores = [f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db",
              f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db", f"tracking.artifact_location={tmp}/mlruns"]
    sweep = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", *SPACE, *stores]
    first = run_in_process([*sweep, "autoquant.mix=false"], cwd=tmp)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_in_process(sweep, cwd=tmp)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"tmp": tmp, "first": first, "second": second}


def _experiment(client):
    return client.get_experiment_by_name("sensitivity").experiment_id


def _mix_runs(client):
    return client.search_runs([_experiment(client)], "tags.aqs_kind = 'mix'",
                              order_by=["attributes.start_time ASC"])


def test_a_sweep_mixes_its_formats_at_its_end_and_prints_the_mix_first(study):
    client = _client(study["tmp"])
    parents = client.search_runs([_experiment(client)], "tags.sweep = 'true'",
                                 order_by=["attributes.start_time ASC"])
    assert len(parents) == 2
    mixes = _mix_runs(client)
    assert len(mixes) == 1  # the first sweep had autoquant.mix=false
    mix = mixes[0]
    assert mix.data.tags["mlflow.parentRunId"] == parents[1].info.run_id
    assert mix.info.run_name == "mix qwen3_tiny 2 formats @10"
    assert mix.data.params["mix_budget"] == "10.0"
    trial_ids = set(mix.data.params["mix_trial_runs"].split(","))
    under = client.search_runs([_experiment(client)], f"tags.mlflow.parentRunId = '{parents[1].info.run_id}'")
    children = {r.info.run_id for r in under if r.info.run_id != mix.info.run_id}
    assert trial_ids == children
    out = study["second"].stdout
    assert out.index("mix of 2 formats") < out.index("best config:")
    assert re.search(r"best single format at 10 bits: .*the mix is (\d+\.\d+x lower|no ratio)", out)
    assert "groups" in mix.data.tags["mlflow.note.content"]


def test_mix_over_two_sweeps_of_one_study_in_a_fresh_process_registers_and_applies(study, tmp_path):
    from autoquant_sweep.recipe import quantize_config_from_json

    tmp = study["tmp"]
    uri = f"sqlite:///{tmp}/mlflow.db"
    result = warm.run([sys.executable, "-m", "autoquant_sweep.cli", "mix", "--study", STUDY,
                       "--tracking-uri", uri, "--budgets", "6,8,10"], cwd=tmp, capture_output=True,
                      text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^mix of 4 formats \(run \w+\) at 10 effective bits: ", result.stdout, re.M)
    client = _client(tmp)
    mix = _mix_runs(client)[-1]
    labels = mix.data.params["mix_trials"].split(",")
    assert sorted(labels) == sorted(f"{p}+{g}" for p in ("wint4_afp16", "wint8_afp16")
                                    for g in ("default", "w_group64"))
    parents = {client.get_run(r).data.tags["mlflow.parentRunId"]
               for r in mix.data.params["mix_trial_runs"].split(",")}
    assert len(parents) == 2  # trials of both sweeps
    local = client.download_artifacts(mix.info.run_id, "mix", str(tmp_path))
    curve = json.loads(open(f"{local}/budget_curve.json").read())
    assert [p["budget"] for p in curve["curve"]] == [6.0, 8.0, 10.0]
    assert all(r["ratio"] is None or r["ratio"] >= 1 - 1e-9 for r in curve["gain_table"])
    cfg = quantize_config_from_json(open(f"{local}/quant_cfg.json").read())
    assert cfg["quant_cfg"] and cfg["algorithm"] == curve["calibration"]["algorithm"]
    assert {"curves.png", "layer_format_map.png", "gain_table.md"} <= set(os.listdir(local))
    # the registry: the mix is its own version; best moved to it only if it is strictly better
    versions = client.search_model_versions(f"name = '{NAME}'")
    mine = next(v for v in versions if v.run_id == mix.info.run_id)
    assert mine.tags["quant_pair"] == "mix" and mine.tags["artifact"] == "mix/quant_cfg.json"
    earlier = [float(v.tags["objective_value"]) for v in versions if int(v.version) < int(mine.version)]
    best = client.get_model_version_by_alias(NAME, "best")
    assert (best.version == mine.version) == (float(mine.tags["objective_value"]) < min(earlier))
    # lookup says what the registered mix quantizes and writes its recipe
    looked = cli_in_process(["lookup", NAME, "--version", str(mine.version), "--tracking-uri", uri, "--out",
                             str(tmp_path / "mix.json")], cwd=tmp)
    assert looked.returncode == 0, looked.stderr[-3000:]
    point = next(p for p in curve["curve"] if p["budget"] == 10.0)
    kept = sum(1 for f in point["choice"].values() if f == "16-bit")
    assert f"recipe at 10 bits: {len(point['choice']) - kept}/{len(point['choice'])} layer groups quantized" \
        in looked.stdout
    logged = json.loads(open(f"{local}/quant_cfg.json").read())
    assert json.loads((tmp_path / "mix.json").read_text()) == logged
    # apply of the registered mix reproduces the held-out loss the mix run logged
    applied = cli_in_process(["apply", NAME, "--version", str(mine.version), "--tracking-uri", uri, "--out",
                              str(tmp_path / "q")], cwd=tmp)
    assert applied.returncode == 0, applied.stderr[-3000:]
    loss = float(re.search(r"held-out loss of the quantized model: ([0-9.]+)", applied.stdout).group(1))
    assert loss == pytest.approx(mix.data.metrics["mix_eval_loss"], abs=1e-5)
