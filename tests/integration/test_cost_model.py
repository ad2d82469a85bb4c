"""The honest memory cost in ModelOpt itself (tiny Qwen3, CPU, real ModelOpt; no mocks).

ModelOpt's schema accepts the per-entry ``effective_bits``; the plan's reachable budget, ModelOpt's
constrained search and the project's achieved bits all count it.
"""

from __future__ import annotations

import copy
import math

import pytest

pytestmark = pytest.mark.integration


def test_modelopts_schema_accepts_every_pairs_storage_cost():
    from autoquant_sweep.config.groups import load_group
    from autoquant_sweep.quant.cost import with_cost_model
    from autoquant_sweep.quant.formats import check_with_modelopt, resolve_format
    from tests.conftest import CONF

    for pair in load_group("quant_pair", CONF):
        fmt = with_cost_model(resolve_format(pair["format_name"]))
        check_with_modelopt(fmt, f"quant_pair={pair['name']}")  # raises on a key ModelOpt lacks


def _score(compose_cfg, embedded, *overrides: str):
    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.plan import plan_run
    from autoquant_sweep.sensitivity import run_autoquant

    plan = plan_run(compose_cfg(["quant_pair=wint4_afp16", "autoquant.num_score_samples=4", *overrides]))
    loaded, model = MODEL_CACHE.model(plan)
    result = run_autoquant(model, MODEL_CACHE.batches(plan, loaded), copy.deepcopy(plan.effective_format),
                           format_label=plan.cfg["quant_granularity"]["name"], effective_bits=8.0,
                           num_calib_steps=1, num_score_steps=1)
    return plan, result


def test_modelopts_constrained_search_charges_group64_more_than_group128(compose_cfg, embedded):
    from autoquant_sweep.quant.overlay import format_bits
    from autoquant_sweep.recipe import solve_recipe

    runs = {g: _score(compose_cfg, embedded, f"quant_granularity={g}") for g in ("w_group64", "w_group128")}
    modelopt = _score(compose_cfg, embedded, "quant_granularity=w_group64", "autoquant.cost_model=modelopt")
    for _, (plan, result) in runs.items():
        # ModelOpt's own cost of each group's candidate is the storage bits of the effective format
        bits = format_bits(plan.effective_format)
        assert result.format_bits == pytest.approx(bits, abs=1e-12)
        for layer in result.layers:
            assert layer.cost == pytest.approx(layer.uncompressed_cost * bits / 16, rel=1e-12)
        # and the recipe the project measures is the one ModelOpt's constrained search chose, at its bits
        recipe = solve_recipe(result.search_state, 8.0, with_config=False)
        assert recipe.achieved_effective_bits == pytest.approx(result.constrained_effective_bits, abs=1e-9)
        assert recipe.predicted_score == pytest.approx(result.constrained_score, rel=1e-9)
    g64, g128 = runs["w_group64"][1], runs["w_group128"][1]
    assert g64.format_bits > g128.format_bits
    assert all(a.cost > b.cost for a, b in zip(g64.layers, g128.layers, strict=True))
    # ModelOpt's own answer at the run's budget: the groups it quantized cost 4.25 bits each
    chosen = [layer for layer in g64.layers if layer.chosen_in_budget]
    assert chosen and all(layer.bits == g64.format_bits == 4.25 for layer in chosen)
    # ModelOpt's num_bits cost: group 64 costs exactly 4 bits, as group 128 would
    assert modelopt[1].format_bits == 4.0
    assert modelopt[0].scoring_fingerprint != runs["w_group64"][0].scoring_fingerprint


def test_the_plans_reachable_budget_counts_the_storage_bits(compose_cfg, embedded):
    from autoquant_sweep.errors import UserInputError
    from autoquant_sweep.model_shapes import min_effective_bits, quantizable_modules
    from autoquant_sweep.modeling import read_checkpoint_config
    from autoquant_sweep.plan import plan_run

    plan = plan_run(compose_cfg(["quant_pair=wint4_afp16", "quant_granularity=w_group64"]))
    modules = quantizable_modules(read_checkpoint_config(plan.checkpoint))
    disabled = plan.cfg["model"]["disabled_layers"]
    storage = min_effective_bits(modules, disabled, 4.25)
    num_bits = min_effective_bits(modules, disabled, 4.0)
    assert plan.min_effective_bits == pytest.approx(storage, abs=1e-12)
    between = math.floor((storage + num_bits) / 2 * 1000) / 1000  # reachable at 4 bits, not at 4.25
    assert num_bits < between < storage
    with pytest.raises(UserInputError, match=r"below the minimum achievable effective bits .*4\.25 bits per"):
        plan_run(compose_cfg(["quant_pair=wint4_afp16", "quant_granularity=w_group64",
                              f"autoquant.effective_bits={between}"]))
    plan_run(compose_cfg(["quant_pair=wint4_afp16", "quant_granularity=w_group64",
                          f"autoquant.effective_bits={between}", "autoquant.cost_model=modelopt"]))
