"""Every documented choice of every config group through the full tracked path (tracking=local).

A choice that only ever ran with ``tracking=off`` can break where MLflow is on: ``autoquant.method=kl_div``
crashed in the record stage (``float(None)`` on the calibration / scoring seconds it did not report) in
every tracked run and every sweep trial. Here each choice runs at least once as a single job through plan
-> lookup -> compute -> write -> record against a real SQLite MLflow store, in-process (the model is
loaded once per process). ``test_the_cases_cover_every_documented_choice`` fails when a group gains a
choice that no case runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import CONF

pytestmark = pytest.mark.integration

# One case per granularity; pairs, methods, objectives, layouts, sizes, models and `evaluate` spread over
# them so that every choice of every group runs at least once (kl_div once: ~13 s on CPU, gradient ~2 s).
CASES: list[list[str]] = [
    ["quant_pair=wint8_aint8", "quant_granularity=default"],
    ["quant_pair=wint8_afp16", "quant_granularity=w_per_tensor", "autoquant.method=kl_div",
     "autoquant.objective=eval_loss_delta"],
    ["quant_pair=wint4_afp16", "quant_granularity=w_per_out_channel", "autoquant.objective=total_sensitivity",
     "output_layout=publish", "dataset.size=medium"],
    ["quant_pair=wint4_aint8", "quant_granularity=a_per_token_dynamic", "autoquant.objective=pareto",
     "model=qwen3_vl_tiny"],
    ["quant_pair=wint4_afp8", "quant_granularity=w_group64", "autoquant.evaluate=false",
     "dataset.size=large"],
    ["quant_pair=wfp8_afp8", "quant_granularity=recipe_match_channel_token"],
    ["quant_pair=wfp8_afp16", "quant_granularity=w_per_in_channel"],
    ["quant_pair=wint8_aint8", "quant_granularity=w_group128"],
    ["quant_pair=wfp8_afp8", "quant_granularity=a_per_tensor_static"],
]


def _choices(case: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in case)


def documented_choices() -> dict[str, set[str]]:
    """Every choice the README documents for the groups a single tracked CPU run takes, from the source
    of each domain (conf files, the validation domains), never from a copy of the list."""
    from autoquant_sweep.config.validation import OUTPUT_LAYOUTS
    from autoquant_sweep.embedded.captions import CAPTION_SUBSET_SIZES
    from autoquant_sweep.objectives import OBJECTIVES
    from autoquant_sweep.search.space import granularity_names, searchable_pairs
    from autoquant_sweep.sensitivity import METHODS

    embedded_models = {p.stem for p in (CONF / "model").glob("*.yaml") if "embedded: qwen" in p.read_text()}
    return {
        "quant_pair": set(searchable_pairs("cpu")),  # the others need CUDA (refused on CPU: own tests)
        "quant_granularity": set(granularity_names()),
        "autoquant.method": set(METHODS),
        "autoquant.objective": set(OBJECTIVES),
        "autoquant.evaluate": {"true", "false"},
        "output_layout": set(OUTPUT_LAYOUTS),
        "dataset.size": set(CAPTION_SUBSET_SIZES),
        "model": embedded_models,  # qwen3_4b / qwen3_vl_4b_instruct need a real checkpoint (CUDA)
    }


DEFAULTS = {"autoquant.method": "gradient", "autoquant.objective": "constrained_score",
            "autoquant.evaluate": "true", "output_layout": "tmp", "dataset.size": "small",
            "model": "qwen3_tiny"}


def test_the_cases_cover_every_documented_choice() -> None:
    covered: dict[str, set[str]] = {}
    for case in CASES:
        choices = {**DEFAULTS, **_choices(case)}
        for key, value in choices.items():
            covered.setdefault(key, set()).add(value)
    for group, options in documented_choices().items():
        missing = options - covered.get(group, set())
        assert not missing, f"{group}: no tracked case runs {sorted(missing)}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, new_mlflow_store) -> dict:
    root = tmp_path_factory.mktemp("every-choice")
    return {"root": root, "uri": new_mlflow_store(root / "mlflow.db")}


@pytest.mark.parametrize("case", CASES, ids=[" ".join(c).replace("quant_", "") for c in CASES])
def test_every_choice_runs_through_the_tracked_path(case: list[str], store: dict, tmp_path: Path,
                                                     embedded) -> None:
    from hydra import compose, initialize_config_dir
    from mlflow import MlflowClient

    from autoquant_sweep.config import register_configs
    from autoquant_sweep.objectives import OBJECTIVES, objective_result
    from autoquant_sweep.pipeline import run_job

    register_configs()
    overrides = [*case, f"tracking.tracking_uri={store['uri']}", f"paths.root_dir={tmp_path}",
                 "experiment=every_choice"]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("sensitivity", overrides=overrides)
    outcome = run_job(cfg, tmp_path / "run", record_plan_failures=False)

    choices = {**DEFAULTS, **_choices(case)}
    objective = choices["autoquant.objective"]
    values = objective_result(outcome.objectives, objective)
    values = values if isinstance(values, list) else [values]
    assert len(values) == len(OBJECTIVES[objective]) and all(math.isfinite(v) for v in values), values

    client = MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["autoquant_method"] == choices["autoquant.method"]
    assert run.data.params["quant_pair"] == choices["quant_pair"]
    metrics = run.data.metrics
    for name, value in zip(OBJECTIVES[objective], values, strict=True):
        assert metrics[name] == pytest.approx(value, rel=1e-12)
    # both methods report how the AutoQuant call split into calibration and scoring
    seconds = outcome.manifest["seconds"]
    assert seconds["calibration"] > 0 and seconds["scoring"] > 0
    assert seconds["calibration"] + seconds["scoring"] == pytest.approx(seconds["autoquant"], abs=1e-6)
    assert metrics["seconds_calibration"] == pytest.approx(seconds["calibration"])
    assert metrics["seconds_scoring"] == pytest.approx(seconds["scoring"])
    assert ("eval_loss_delta" in metrics) == (choices["autoquant.evaluate"] == "true")
    assert (outcome.report_dir / "manifest.json").is_file()
    if choices["output_layout"] == "publish":
        assert (tmp_path / "results") in outcome.report_dir.parents
    else:
        assert outcome.report_dir.parent == tmp_path / "run"
