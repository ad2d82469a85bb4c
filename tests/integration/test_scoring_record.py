"""``recipe/scoring.json`` against a live ``mtq.auto_quantize`` state (tiny Qwen3, CPU, real ModelOpt).

The record is what the mix merges: rebuilt into a search state it must give ModelOpt's solver exactly
what the live state gives it.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest

pytestmark = pytest.mark.integration

BUDGETS = (6.0, 7.0, 8.0, 10.0, 12.0)


@pytest.fixture(scope="module")
def live(embedded):
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.config import register_configs
    from autoquant_sweep.plan import plan_run
    from autoquant_sweep.sensitivity import run_autoquant
    from tests.conftest import CONF

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("sensitivity", overrides=["tracking=off", "quant_pair=wint4_afp16",
                                                "quant_granularity=w_group64"])
    plan = plan_run(cfg)
    loaded, model = MODEL_CACHE.model(plan)
    result = run_autoquant(model, MODEL_CACHE.batches(plan, loaded), copy.deepcopy(plan.effective_format),
                           format_label="g64", effective_bits=10.0, num_calib_steps=2, num_score_steps=2)
    return plan, result


def _record(plan, result):
    from autoquant_sweep.scoring import scoring_record

    return scoring_record(result.search_state, plan.effective_format, format_label="wint4_afp16+w_group64",
                          quant_pair="wint4_afp16", quant_granularity="w_group64",
                          scoring_fingerprint=plan.scoring_fingerprint, run_fingerprint=plan.fingerprint)


def test_the_record_has_the_documented_structure(live):
    from autoquant_sweep.scoring import GROUP_KEYS, SCHEMA, STATE_KEYS, read_record

    plan, result = live
    record = read_record(json.dumps(_record(plan, result)), "test")  # JSON all the way
    assert record["schema"] == SCHEMA
    assert set(record) == {"schema", "format_label", "quant_pair", "quant_granularity", "scoring_fingerprint",
                           "run_fingerprint", "config_fingerprint", "format", "format_bits", *STATE_KEYS,
                           "groups"}
    live_stats = result.search_state["candidate_stats"]
    assert list(record["groups"]) == list(live_stats)
    for name, group in record["groups"].items():
        assert set(group) == {*GROUP_KEYS, "score", "cost"}
        stats = live_stats[name]
        if group["score"] is None:  # lm_head: only "keep 16 bits" on offer
            assert len(stats["formats"]) == 1
        else:
            assert (group["score"], group["cost"]) == (stats["scores"][0], stats["costs"][0])
    assert record["format_bits"] == result.format_bits == 4.25
    assert record["scoring_fingerprint"] == plan.scoring_fingerprint
    assert record["cost_denominator"] == result.search_state["cost_denominator"]


def test_the_rebuilt_state_is_the_live_state_for_modelopts_solver(live):
    import modelopt.torch.quantization as mtq

    from autoquant_sweep.scoring import search_state

    plan, result = live
    state = result.search_state
    rebuilt = search_state([json.loads(json.dumps(_record(plan, result)))])
    for name, stats in state["candidate_stats"].items():
        got = rebuilt["candidate_stats"][name]
        assert [f.checkpoint_signature for f in got["formats"]] == [
            f.checkpoint_signature for f in stats["formats"]]
        assert got["scores"] == [float(s) for s in stats["scores"]]
        assert got["costs"] == [float(c) for c in stats["costs"]]
        assert got["module_names"] == list(stats["module_names"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for budget in BUDGETS:
            assert mtq.get_auto_quantize_config(rebuilt, {"effective_bits": budget}) == \
                mtq.get_auto_quantize_config(state, {"effective_bits": budget})


def test_a_record_of_another_schema_or_format_is_refused_by_name(live):
    from autoquant_sweep.scoring import ScoringRecordError, read_record, scoring_record

    plan, result = live
    with pytest.raises(ScoringRecordError, match=r"^runs/x/recipe/scoring.json: not a scoring record"):
        read_record(json.dumps({"schema": "other"}), "runs/x/recipe/scoring.json")
    other = copy.deepcopy(plan.effective_format)
    other["algorithm"] = "awq_lite"
    with pytest.raises(ScoringRecordError, match=r"holds another candidate than the recorded format"):
        scoring_record(result.search_state, other, format_label="x", quant_pair="p", quant_granularity="g",
                       scoring_fingerprint="s", run_fingerprint="r")
