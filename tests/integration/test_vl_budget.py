"""Qwen3-VL budget (issue 19 item 5): the vision tower is out of the effective-bits cost.

``model.cost_excluded_modules`` goes to ``mtq.auto_quantize`` as ModelOpt 0.47's own
``constraints["cost"]["excluded_module_name_patterns"]`` (facts 30), which gives a group whose every
module matches a cost weight of 0: it leaves ModelOpt's cost denominator, and the project's accounting
(recipe / mix: ModelOpt's costs over ModelOpt's denominator) follows. Both embedded models have the same
language model shapes, so the same per-layer recipe must reach the same effective bits on both. Real
``mtq.auto_quantize`` on CPU, tracked into a real SQLite MLflow store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CONF

pytestmark = pytest.mark.integration

VISION_PATTERNS = ["*visual*", "*vision_tower*", "*vision_model*", "*multi_modal_projector*"]


def _run(model: str, root: Path, uri: str):
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.config import register_configs
    from autoquant_sweep.pipeline import run_job

    register_configs()
    overrides = [f"model={model}", "quant_pair=wint8_afp16", "quant_granularity=w_per_in_channel",
                 "autoquant.evaluate=false", f"tracking.tracking_uri={uri}", f"paths.root_dir={root}",
                 "experiment=vl_budget"]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("sensitivity", overrides=overrides)
    return run_job(cfg, root / model, record_plan_failures=False)


def _text_name(group: str) -> str:
    """A VL language-model group under the text model's name (``model.language_model.`` -> ``model.``)."""
    return group.replace("model.language_model.", "model.", 1)


def test_vl_and_text_model_reach_the_same_effective_bits_for_the_same_recipe(tmp_path: Path, embedded):
    from mlflow import MlflowClient

    from autoquant_sweep.recipe import minimum_effective_bits, solve_recipe
    from autoquant_sweep.scoring import search_state

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    text, vl = _run("qwen3_tiny", tmp_path, uri), _run("qwen3_vl_tiny", tmp_path, uri)
    records = {name: json.loads((o.report_dir / "recipe" / "scoring.json").read_text())
               for name, o in (("text", text), ("vl", vl))}

    # ModelOpt was given the patterns and weighed the vision groups 0: they leave the denominator
    assert records["vl"]["cost"] == {"excluded_module_name_patterns": VISION_PATTERNS}
    assert records["text"]["cost"] == {}
    vision = {g: s for g, s in records["vl"]["groups"].items() if ".visual." in g}
    assert vision and all(s["cost_weight"] == 0.0 and s["uncompressed_cost"] == 0.0 for s in vision.values())
    assert records["vl"]["cost_denominator"] == records["text"]["cost_denominator"] == 655360.0
    language = {_text_name(g): s for g, s in records["vl"]["groups"].items() if g not in vision}
    assert language.keys() == records["text"]["groups"].keys()
    for group, stats in records["text"]["groups"].items():
        assert (language[group]["cost"], language[group]["uncompressed_cost"]) == (
            stats["cost"], stats["uncompressed_cost"]), group

    # the same recipe: the VL state with the text model's scores, so ModelOpt's solver picks the same
    # groups; every budget of the curve then reaches the same bits on both (before: 9.967 vs 10.0)
    vl_state, text_state = search_state([records["vl"]]), search_state([records["text"]])
    for group, stats in vl_state["candidate_stats"].items():
        twin = text_state["candidate_stats"].get(_text_name(group))
        if twin is not None:
            stats["scores"] = list(twin["scores"])
    assert minimum_effective_bits(vl_state) == pytest.approx(minimum_effective_bits(text_state), abs=1e-6)
    for budget in (8.8, 9.0, 9.5, 10.0, 12.0):
        on_text = solve_recipe(text_state, budget, with_config=False)
        on_vl = solve_recipe(vl_state, budget, with_config=False)
        assert sorted(_text_name(g) for g in on_vl.quantized_groups) == sorted(on_text.quantized_groups)
        assert on_vl.achieved_effective_bits == pytest.approx(on_text.achieved_effective_bits, abs=1e-6)
    # and the plan's reachable minimum (from config.json alone) is the language model's too
    assert vl.manifest["recipe"]["budget"] == 10.0 and text.manifest["recipe"]["budget"] == 10.0
    assert vl.manifest["budget_curve"][0]["achieved_effective_bits"] == pytest.approx(8.8, abs=1e-6)

    # recorded: the manifest, the MLflow params, the fingerprints (no cached pre-exclusion result reused)
    assert vl.manifest["model"]["cost_excluded_modules"] == VISION_PATTERNS
    assert text.manifest["model"]["cost_excluded_modules"] == []
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(vl.run_id).data.params["model_cost_excluded_modules"] == ", ".join(VISION_PATTERNS)
    assert client.get_run(text.run_id).data.params["model_cost_excluded_modules"] == "none"
    # each trial's peak memory is its own (item 4): on CPU the resident-set growth during the trial
    for outcome in (text, vl):
        assert outcome.manifest["memory_kind"] == "cpu_trial_peak_rss_delta"
        metric = client.get_run(outcome.run_id).data.metrics["peak_memory_mb"]
        assert metric == pytest.approx(outcome.manifest["peak_memory_mb"]) and metric >= 0.0


def test_patterns_that_exclude_every_module_are_refused_in_the_plan(compose_cfg, embedded):
    from autoquant_sweep.errors import UserInputError
    from autoquant_sweep.plan import plan_run

    with pytest.raises(UserInputError) as info:
        plan_run(compose_cfg(["model.cost_excluded_modules=[*]"]))
    message = str(info.value)
    assert "\n" not in message and message.startswith("model.cost_excluded_modules: ['*'] takes every")
