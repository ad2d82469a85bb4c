"""One study per meaning of the objective, each combination at most once, and a sweep without a result.

Issue 17: a rerun at another budget landed in the same Optuna study (its best was a trial that cannot fit
the new budget), a rerun of a used-up grid recomputed every combination and registered new versions, and
a sweep whose every trial failed exited 0 when the study held results of an earlier sweep. One store,
shared by the tests in order: a 10-bit sweep, its rerun, an 8-bit rerun, a 9-bit sweep and a rerun of it
whose every trial fails.
"""

from __future__ import annotations

import optuna
import pytest
import yaml

from tests.conftest import run_in_process, study_name

pytestmark = pytest.mark.integration

NAME = "autoquant-qwen3_tiny-constrained_score"
SPACE = ["quant_pair=choice(wint8_aint8,wint4_aint8)", "quant_granularity=choice(default)"]


def _args(root, *extra: str) -> list[str]:
    return ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=5", "autoquant.evaluate=false",
            f"hydra.sweeper.storage=sqlite:///{root}/optuna.db", f"tracking.tracking_uri=sqlite:///{root}/mlflow.db",
            f"tracking.artifact_location={root}/mlruns", *extra]


def _client(root):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _state(root) -> dict:
    client = _client(root)
    experiment = client.get_experiment_by_name("sensitivity")
    return {
        "runs": sorted(r.info.run_id for r in client.search_runs([experiment.experiment_id])),
        "versions": sorted(v.version for v in client.search_model_versions(f"name='{NAME}'")),
        "trials": {name: len(optuna.load_study(study_name=name, storage=f"sqlite:///{root}/optuna.db").trials)
                   for name in optuna.get_all_study_names(f"sqlite:///{root}/optuna.db")},
        "sweeps": sorted(p.name for p in (root / "multirun" / "sensitivity").iterdir()),
    }


def _project_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("autoquant-sweep")]


@pytest.fixture(scope="module")
def root(tmp_path_factory, embedded, new_mlflow_store):
    folder = tmp_path_factory.mktemp("study-identity")
    new_mlflow_store(folder / "mlflow.db")  # migrated: the sweeps skip MLflow's schema creation
    result = run_in_process(_args(folder, *SPACE), cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name=study_name(space=SPACE), storage=f"sqlite:///{folder}/optuna.db")
    assert sorted(t.params["quant_pair"] for t in study.trials) == ["wint4_aint8", "wint8_aint8"]
    return folder


def test_a_rerun_of_a_used_up_grid_runs_nothing_says_so_and_registers_nothing(root) -> None:
    before = _state(root)
    result = run_in_process(_args(root, *SPACE), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = _project_lines(result)
    assert line.startswith(f"autoquant-sweep: study '{study_name(space=SPACE)}' has run every combination of "
                           "its search space (2 of 2: 2 complete, 0 failed, refused or running); nothing new")
    assert _state(root) == before  # no trial, no MLflow run (no parent either), no version, no sweep folder


def test_a_rerun_at_another_budget_is_its_own_study(root) -> None:
    ten, eight = study_name(space=SPACE), study_name(["autoquant.effective_bits=8"], SPACE)
    assert ten != eight
    result = run_in_process(_args(root, *SPACE, "autoquant.effective_bits=8"), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    storage = f"sqlite:///{root}/optuna.db"
    assert sorted(optuna.get_all_study_names(storage)) == sorted([ten, eight])
    assert len(optuna.load_study(study_name=ten, storage=storage).trials) == 2  # untouched
    study = optuna.load_study(study_name=eight, storage=storage)
    states = {t.params["quant_pair"]: t.state for t in study.trials}
    # INT8 cannot reach 8 bits on the tiny model (minimum 8.8): refused; INT4 fits
    state = optuna.trial.TrialState
    assert states == {"wint8_aint8": state.FAIL, "wint4_aint8": state.COMPLETE}
    newest = max((root / "multirun" / "sensitivity").iterdir(), key=lambda p: p.stat().st_mtime)
    best = yaml.safe_load((newest / "optimization_results.yaml").read_text())
    assert best["best_params"]["quant_pair"] == "wint4_aint8"
    assert best["best_value"] == pytest.approx(study.best_value)


def test_a_sweep_without_a_result_exits_2_with_one_line_in_a_study_with_results(root) -> None:
    nine = study_name(["autoquant.effective_bits=9"], SPACE)
    first = run_in_process(_args(root, *SPACE, "autoquant.effective_bits=9", "hydra.sweeper.n_trials=1"),
                           cwd=root)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _state(root)
    assert before["trials"][nine] == 1
    # the other combination, with a report folder that cannot be written: its trial fails after AutoQuant
    a_file = root / "a-file"
    a_file.write_text("not a folder")
    result = run_in_process(_args(root, *SPACE, "autoquant.effective_bits=9", "output_layout=publish",
                           f"output_layout.publish_root={a_file}/results"), cwd=root)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = _project_lines(result)
    assert line == (f"autoquant-sweep: error: hydra.sweeper: no trial of study '{nine}' completed (1 failed "
                    "or refused in this sweep); the search space holds only combinations that cannot run "
                    "here (see `autoquant-sweep validate`) or every job failed (see the job lines above); "
                    "nothing registered")
    after = _state(root)
    assert after["versions"] == before["versions"]
    assert after["trials"][nine] == 2  # n_trials=5 was capped at the one combination left
    (sweep,) = set(after["sweeps"]) - set(before["sweeps"])
    assert not (root / "multirun" / "sensitivity" / sweep / "optimization_results.yaml").exists()
    client = _client(root)
    experiment = client.get_experiment_by_name("sensitivity")
    (parent,) = client.search_runs([experiment.experiment_id], f"tags.sweep_dir LIKE '%{sweep}'")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failure_reason"].startswith("sweep stopped on an error: hydra.sweeper: no trial")
