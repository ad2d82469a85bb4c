"""The honest memory cost (quant/cost.py): bits per stored weight incl. scales, as per-entry
``effective_bits`` in the effective format; the scoring fingerprint (pure; no torch, no ModelOpt)."""

from __future__ import annotations

import copy

import pytest

from autoquant_sweep.config.groups import load_group
from autoquant_sweep.config.validation import validate_settings
from autoquant_sweep.errors import UserInputError
from autoquant_sweep.fingerprints import run_fingerprint, scoring_fingerprint
from autoquant_sweep.quant.cost import NOT_STORED_BITS, storage_bits, with_cost_model
from autoquant_sweep.quant.formats import resolve_format
from autoquant_sweep.quant.overlay import apply_overlay, format_bits, to_rule_list, validate_overrides
from tests.conftest import CONF
from tests.unit.test_validation import VALID


def _overlaid(format_name: str, granularity: str) -> dict:
    gran = next(g for g in load_group("quant_granularity", CONF) if g["name"] == granularity)
    return apply_overlay(resolve_format(format_name),
                         validate_overrides(gran.get("quant_cfg_overrides") or {})).format


@pytest.mark.parametrize(("cfg", "bits"), [
    ({"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}}, 4 + 16 / 128),
    ({"num_bits": 4, "block_sizes": {"-1": 64}}, 4 + 16 / 64),
    ({"num_bits": 4, "block_sizes": {-1: 64, -2: 2}}, 4 + 16 / 128),  # 2-D blocks: one scale per 128
    ({"num_bits": 8, "axis": 0}, 8.0),
    ({"num_bits": (4, 3), "axis": None}, 8.0),
    ({"num_bits": (2, 1), "block_sizes": {-1: 16, "scale_bits": (4, 3)}}, 4 + 8 / 16),
    ({"num_bits": (4, 3), "block_sizes": {-1: 32, "scale_bits": (8, 0)}}, 8 + 8 / 32),  # E8M0 scales
    ({"num_bits": 4, "block_sizes": {-1: 16, "scale_bits": 8, "scale_block_sizes": {-1: 16}}},
     4 + 8 / 16 + 16 / 256),
    ([{"num_bits": 4, "block_sizes": {-1: 128}}, {"num_bits": (4, 3), "axis": None}], 4 + 16 / 128),
])
def test_storage_bits_count_elements_and_the_scales_the_deployed_form_stores(cfg, bits):
    assert storage_bits(cfg) == pytest.approx(bits, abs=1e-12)


def test_storage_bits_has_no_rule_for_a_backend_string_or_a_disabled_cfg():
    assert storage_bits({"num_bits": "nf4"}) is None
    assert storage_bits({"num_bits": 4, "enable": False}) is None


def test_the_rule_gives_modelopts_own_nvfp4_cost():
    weight = next(r for r in to_rule_list(resolve_format("NVFP4_DEFAULT_CFG")["quant_cfg"])
                  if r["quantizer_name"] == "*weight_quantizer")
    preset_bits = weight["cfg"]["effective_bits"]  # ModelOpt's preset sets it itself
    assert storage_bits({k: v for k, v in weight["cfg"].items() if k != "effective_bits"}) == preset_bits


def test_storage_cost_makes_group64_dearer_than_group128_and_modelopt_cost_does_not():
    g64, g128 = _overlaid("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "w_group64"), _overlaid(
        "INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "w_group128")
    assert format_bits(with_cost_model(g64)) == 4.25
    assert format_bits(with_cost_model(g128)) == 4.125
    assert format_bits(with_cost_model(g64, "modelopt")) == 4.0
    assert format_bits(with_cost_model(g128, "modelopt")) == 4.0
    assert with_cost_model(g64, "modelopt") == g64  # ModelOpt's own cost: the format unchanged


def test_storage_cost_charges_weights_only_inputs_are_not_stored():
    w8a8 = with_cost_model(resolve_format("INT8_DEFAULT_CFG"))
    enabled = [r for r in w8a8["quant_cfg"] if r.get("cfg") is not None and r.get("enable", True)]
    by_name = {r["quantizer_name"]: r["cfg"]["effective_bits"] for r in enabled}
    assert by_name == {"*weight_quantizer": 8.0, "*input_quantizer": NOT_STORED_BITS}
    # W4A8 AWQ: sequential weight stages both carry the one storage number; the FP8 input does not win
    w4a8 = with_cost_model(resolve_format("W4A8_AWQ_BETA_CFG"))
    weight = next(r for r in w4a8["quant_cfg"] if r["quantizer_name"] == "*weight_quantizer")
    assert [stage["effective_bits"] for stage in weight["cfg"]] == [4.125, 4.125]
    assert format_bits(w4a8) == 4.125


def test_an_unknown_cost_model_is_one_line_naming_the_key():
    with pytest.raises(UserInputError, match=r"^autoquant.cost_model: unknown cost model 'bits'"):
        with_cost_model(resolve_format("INT8_DEFAULT_CFG"), "bits")
    c = copy.deepcopy(VALID)
    c["autoquant"]["cost_model"] = "bits"
    with pytest.raises(UserInputError, match=r"autoquant.cost_model"):
        validate_settings(c)


class _Batches:
    batch_size, num_calib_steps, num_score_steps = 4, 4, 4


def _fingerprints(cost_model: str, fmt: dict) -> tuple[str, str]:
    c = {"model": {"kind": "causal_lm", "dtype": "float32", "disabled_layers": ["*lm_head*"]},
         "dataset": {"seq_len": 32},
         "autoquant": {"method": "gradient", "effective_bits": 10.0, "seed": 0, "cost_model": cost_model,
                       "budget_grid": None}}
    common = {"checkpoint_identity": "sha:1", "captions": ["a ."], "batch_plan": _Batches(), "device": "cpu",
              "versions": {"torch": "2.13"}}
    return (run_fingerprint(c, effective_format=fmt, eval_split=None, **common),
            scoring_fingerprint(c, **common))


def test_the_scoring_fingerprint_is_the_run_fingerprint_without_the_format_and_names_the_cost_model():
    int8, fp8 = resolve_format("INT8_DEFAULT_CFG"), resolve_format("FP8_DEFAULT_CFG")
    run_int8, score_int8 = _fingerprints("storage", int8)
    run_fp8, score_fp8 = _fingerprints("storage", fp8)
    assert run_int8 != run_fp8 and score_int8 == score_fp8  # two formats of one study mix
    run_mo, score_mo = _fingerprints("modelopt", int8)
    assert run_mo != run_int8 and score_mo != score_int8  # costs of another model never mix


def test_the_cost_in_a_format_does_not_change_its_canonical_granularity():
    from autoquant_sweep.canonical import canonical_name

    pair = {"format_name": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"}
    noop = with_cost_model(_overlaid("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "a_per_token_dynamic"))
    assert canonical_name(pair, "a_per_token_dynamic", noop) == "default"  # inputs are off: a no-op
    assert canonical_name(pair, "w_group128", with_cost_model(_overlaid(pair["format_name"], "w_group128"))) \
        == "default"  # the preset's own group size
    g64 = with_cost_model(_overlaid(pair["format_name"], "w_group64"))
    assert canonical_name(pair, "w_group64", g64) == "w_group64"
