"""The recipe at a budget, the budget curve and the held-out evaluation, on the tiny model (no mocks).

One AutoQuant call (module scope) serves the recipe checks; one ``execute_run`` serves the report checks.
"""

from __future__ import annotations

import copy
import json
import math

import pytest

pytestmark = pytest.mark.integration

PAIR = "wint4_aint8"
BUDGET = 8.0


@pytest.fixture(scope="module")
def scored(embedded):
    """``run_autoquant`` at BUDGET: the result, its search state and the model it returned."""
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.config import register_configs
    from autoquant_sweep.plan import plan_run
    from autoquant_sweep.sensitivity import run_autoquant
    from tests.conftest import CONF

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("sensitivity", overrides=["tracking=off", f"quant_pair={PAIR}",
                                                f"autoquant.effective_bits={BUDGET}"])
    plan = plan_run(cfg)
    loaded, model = MODEL_CACHE.model(plan)
    batches = MODEL_CACHE.batches(plan, loaded)
    result = run_autoquant(model, batches, copy.deepcopy(plan.effective_format), format_label=PAIR,
                           effective_bits=BUDGET, num_calib_steps=plan.batch_plan.num_calib_steps,
                           num_score_steps=plan.batch_plan.num_score_steps)
    return {"plan": plan, "loaded": loaded, "batches": batches, "result": result}


def _quantizer_view(model) -> dict[str, tuple]:
    """Every enabled weight / input quantizer: (num_bits, block_sizes, axis)."""
    out = {}
    for name, module in model.named_modules():
        for attr in ("weight_quantizer", "input_quantizer"):
            q = getattr(module, attr, None)
            if q is not None and q.is_enabled:
                out[f"{name}.{attr}"] = (q.num_bits, repr(q.block_sizes), repr(q.axis))
    return out


def test_exported_recipe_reloads_into_mtq_quantize_with_the_same_quantized_modules(scored, tmp_path):
    import modelopt.torch.quantization as mtq
    import torch

    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.evaluation import eval_loss
    from autoquant_sweep.recipe import quantize_config_from_json, recipe_json, solve_recipe

    result = scored["result"]
    recipe = solve_recipe(result.search_state, BUDGET)
    assert recipe.satisfied and recipe.achieved_effective_bits <= BUDGET
    # our measure of the recipe agrees with ModelOpt's own search at the same budget
    assert recipe.achieved_effective_bits == pytest.approx(result.constrained_effective_bits, abs=1e-9)
    assert recipe.predicted_score == pytest.approx(result.constrained_score, rel=1e-9)
    assert recipe.kept_16bit_groups and recipe.quantized_groups  # a real per-layer mix at 8 bits
    path = tmp_path / "quant_cfg.json"
    path.write_text(json.dumps(recipe_json(recipe.quant_cfg)))  # JSON-safe
    cfg = quantize_config_from_json(path.read_text())
    returned = _quantizer_view(result.model)
    fresh = copy.deepcopy(scored["loaded"].model)
    calib = scored["batches"][: scored["plan"].batch_plan.num_calib_steps]

    def forward_loop(model):
        with torch.no_grad():
            for batch in calib:
                model(**batch)

    reloaded = mtq.quantize(fresh, cfg, forward_loop)
    assert _quantizer_view(reloaded) == returned
    kept = {g for g in recipe.kept_16bit_groups}
    assert not any(name.rsplit(".", 1)[0] in kept for name in returned)  # kept groups are unquantized
    # same recipe, same calibration batches: the same held-out loss (facts 21)
    from autoquant_sweep.embedded.captions import generate_heldout_captions

    captions = generate_heldout_captions(0)
    eval_batches = MODEL_CACHE.eval_batches(scored["plan"], scored["loaded"], captions)
    assert eval_loss(reloaded, eval_batches) == pytest.approx(eval_loss(result.model, eval_batches), abs=1e-6)


def test_curve_points_fit_their_budgets_and_infeasible_budgets_are_labelled(scored):
    from autoquant_sweep.recipe import budget_curve, default_budget_grid, minimum_effective_bits, solve_recipe

    state = scored["result"].search_state
    grid = default_budget_grid(scored["result"].format_bits, BUDGET)
    curve = budget_curve(state, grid, run_budget=BUDGET)
    # the grid starts at the format's own bits: INT4 block-128 with its 16-bit scales (storage cost)
    assert [p.budget for p in curve] == grid and grid[0] == scored["result"].format_bits and grid[-1] == 16.0
    low = minimum_effective_bits(state)
    for point in curve:
        # the fast path (solver only, infeasible answered directly) = ModelOpt's public config path
        full = solve_recipe(state, point.budget, with_config=True)
        assert (point.quantized_groups, point.satisfied) == (full.quantized_groups, full.satisfied)
        assert point.achieved_effective_bits == pytest.approx(full.achieved_effective_bits, abs=1e-12)
        if point.satisfied:
            assert point.achieved_effective_bits <= point.budget + 1e-9
        else:  # below the lowest reachable bits: ModelOpt silently returns the all-quantized recipe
            assert point.budget < low and not point.kept_16bit_groups
            assert point.achieved_effective_bits == pytest.approx(low)
    assert not curve[0].satisfied  # 4 bits: the disabled lm_head alone keeps the model above it
    assert curve[-1].satisfied
    scores = [p.predicted_score for p in curve if p.satisfied]
    assert scores == sorted(scores, reverse=True)  # more bits, never more predicted damage


@pytest.fixture(scope="module")
def outcome(embedded, tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.config import register_configs
    from autoquant_sweep.pipeline import run
    from tests.conftest import CONF

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("sensitivity", overrides=["tracking=off", f"quant_pair={PAIR}",
                                                "quant_granularity=a_per_tensor_static",
                                                f"autoquant.effective_bits={BUDGET}"])
    return run(cfg, run_dir=tmp_path_factory.mktemp("run"))


def test_run_manifest_has_recipe_curve_and_evaluation(outcome):
    from autoquant_sweep.recipe import default_budget_grid

    m = outcome.manifest
    recipe = m["recipe"]
    assert set(recipe) >= {"budget", "achieved_effective_bits", "satisfied", "predicted_score",
                           "quantized_groups", "kept_16bit_groups"}
    assert recipe["budget"] == BUDGET and recipe["satisfied"]
    assert m["objectives"]["constrained_score"] == pytest.approx(recipe["predicted_score"], rel=1e-9)
    curve = m["budget_curve"]
    assert [p["budget"] for p in curve] == default_budget_grid(m["format_bits"], BUDGET)
    for p in curve:
        assert set(p) == {"budget", "predicted_score", "achieved_effective_bits", "satisfied",
                          "num_quantized_groups"}
    ev = m["evaluation"]
    assert set(ev) >= {"eval_loss", "eval_loss_unquantized", "eval_loss_delta", "ppl_increase_pct",
                       "num_samples", "seconds"}
    assert ev["num_samples"] == 64
    assert ev["eval_loss_delta"] == pytest.approx(ev["eval_loss"] - ev["eval_loss_unquantized"])
    assert ev["ppl_increase_pct"] == pytest.approx((math.exp(ev["eval_loss_delta"]) - 1) * 100)
    assert m["objectives"]["eval_loss_delta"] == ev["eval_loss_delta"]
    # static per-tensor INT8 inputs are what the pair already has: recorded as `default`, never the no-op
    q = m["quantization"]
    assert q["fingerprint"] == q["base_fingerprint"] and m["canonical_granularity"] == "default"
    folder = outcome.report_dir / "recipe"
    assert {p.name for p in folder.iterdir()} == {"quant_cfg.json", "budget_curve.json", "budget_curve.png",
                                                  "scoring.json"}
    rules = json.loads((folder / "quant_cfg.json").read_text())["quant_cfg"]
    enabled = {r["quantizer_name"].rsplit(".", 1)[0] for r in rules if r.get("enable") and "*" not in
               r["quantizer_name"]}
    kept = set(recipe["kept_16bit_groups"])
    assert enabled and not enabled & kept
    assert "kept at 16 bits" in (outcome.report_dir / "per_layer.md").read_text()


def test_unquantized_loss_is_computed_once_per_process(outcome, scored):
    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.embedded.captions import generate_heldout_captions

    ev = outcome.manifest["evaluation"]
    plan, loaded = outcome.plan, MODEL_CACHE.loaded(outcome.plan)
    cached = dict(MODEL_CACHE._unquantized_loss)
    assert ev["eval_loss_unquantized"] in cached.values()
    again = MODEL_CACHE.unquantized_loss(plan, loaded, generate_heldout_captions(0), ev["batch_size"])
    assert again == ev["eval_loss_unquantized"] and MODEL_CACHE._unquantized_loss == cached  # no recompute


def test_evaluate_false_switches_evaluation_off_and_held_out_split_is_unseen(compose_cfg, tmp_path):
    from autoquant_sweep.data import resolve_eval_captions
    from autoquant_sweep.embedded.captions import CAPTION_SUBSET_SIZES, generate_captions
    from autoquant_sweep.plan import eval_split, plan_run

    c = {"autoquant": {"evaluate": False}, "dataset": {}}
    assert eval_split(c) is None
    _, held_out = resolve_eval_captions(None, None, None, None)
    assert not set(held_out) & set(generate_captions(max(CAPTION_SUBSET_SIZES.values()), 0))
    on = plan_run(compose_cfg([f"quant_pair={PAIR}"]))
    off = plan_run(compose_cfg([f"quant_pair={PAIR}", "autoquant.evaluate=false"]))
    assert on.fingerprint != off.fingerprint  # a cached run always carries the same sections
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("a dog on a beach .\na cat on a mat .\n")
    source, lines = resolve_eval_captions(None, None, str(eval_file), None)
    assert source == str(eval_file) and lines == ["a dog on a beach .", "a cat on a mat ."]
