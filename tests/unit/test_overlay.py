"""Unit tests for the pure granularity overlay (no torch, no modelopt)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from autoquant_sweep.fingerprints import canonical_json, config_fingerprint
from autoquant_sweep.quant.overlay import (
    INPUT,
    WEIGHT,
    OverlayError,
    apply_overlay,
    effective_quantizer_cfg,
    normalize_block_sizes,
    to_rule_list,
    validate_overrides,
)
from autoquant_sweep.quant.summary import summarize_format

OFF = {"quantizer_name": "*", "enable": False}
TAIL = [
    {"quantizer_name": "*lm_head*", "enable": False},
    {"quantizer_name": "*", "parent_class": "nn.Embedding", "enable": False},
]


def fmt(weight=None, inp=None, algorithm="max", input_rule=True):
    rules = [OFF]
    if weight is not None:
        rules.append({"quantizer_name": WEIGHT, "cfg": weight})
    if input_rule:
        rules.append(
            {"quantizer_name": INPUT, "cfg": inp} if inp else {"quantizer_name": INPUT, "enable": False}
        )
    return {"quant_cfg": [*rules, *TAIL], "algorithm": algorithm}


INT8 = fmt({"num_bits": 8, "axis": 0}, {"num_bits": 8, "axis": None})
INT8_WO = fmt({"num_bits": 8, "axis": 0})
INT4 = fmt({"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}})
NVFP4_W = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}
W4A16_NVFP4 = fmt(NVFP4_W, input_rule=False)
W4A8_AWQ = fmt(
    [{"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}}, {"num_bits": (4, 3), "axis": None}],
    {"num_bits": (4, 3), "axis": None},
    algorithm="awq_lite",
)


def wcfg(result):
    return effective_quantizer_cfg(result.format, WEIGHT)


def icfg(result):
    return effective_quantizer_cfg(result.format, INPUT)


# ---------------------------------------------------------------- exclusivity and merge


def test_axis_and_block_sizes_together_is_error():
    with pytest.raises(OverlayError, match=r"\*weight_quantizer.*both 'axis' and 'block_sizes'"):
        validate_overrides({WEIGHT: {"axis": 0, "block_sizes": {-1: 64}}})


def test_axis_replaces_block_sizes():
    res = apply_overlay(INT4, {WEIGHT: {"axis": 0}})
    assert wcfg(res) == {"num_bits": 4, "axis": 0}
    assert res.changed_patterns == (WEIGHT,)


def test_block_sizes_replace_axis_and_merge_keeps_type_and_scale_bits():
    res = apply_overlay(INT8, {WEIGHT: {"block_sizes": {"-1": 64}}})
    assert wcfg(res) == {"num_bits": 8, "block_sizes": {-1: 64}}
    res = apply_overlay(INT4, {WEIGHT: {"block_sizes": {-1: 64}}})
    assert wcfg(res) == {"num_bits": 4, "block_sizes": {-1: 64, "type": "static"}}
    mx = fmt({"num_bits": (4, 3), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}})
    res = apply_overlay(mx, {WEIGHT: {"block_sizes": {-1: 16}}})
    assert wcfg(res)["block_sizes"] == {-1: 16, "type": "dynamic", "scale_bits": (8, 0)}


def test_type_is_the_quantizer_level_attribute_not_block_sizes_type():
    # facts 31: the quantizer-level type is what makes a TensorQuantizer dynamic; block_sizes["type"]
    # (dynamic block quantization) with {-1: None} instantiates a static quantizer per (batch, position)
    res = apply_overlay(INT8, {INPUT: {"type": "dynamic", "axis": None, "block_sizes": {-1: None}}})
    assert icfg(res) == {"num_bits": 8, "axis": None, "block_sizes": {-1: None}, "type": "dynamic"}
    # without block sizes: per-tensor dynamic (a valid ModelOpt quantizer, no longer an error)
    assert icfg(apply_overlay(INT8, {INPUT: {"type": "dynamic"}})) == {
        "num_bits": 8, "axis": None, "type": "dynamic"
    }
    # static is ModelOpt's default type: nothing to store, so restating it is a no-op
    assert apply_overlay(INT8, {INPUT: {"type": "static", "axis": None}}).is_noop
    # an explicit block_sizes type stays where the overlay put it (dynamic block quantization)
    res = apply_overlay(INT8, {INPUT: {"block_sizes": {-1: None, "type": "dynamic"}}})
    assert icfg(res) == {"num_bits": 8, "block_sizes": {-1: None, "type": "dynamic"}}


def test_non_null_axis_with_block_sizes_is_error_but_null_axis_may_stand_beside():
    with pytest.raises(OverlayError, match=r"sets both 'axis' and 'block_sizes'"):
        validate_overrides({INPUT: {"axis": 0, "block_sizes": {-1: None}}})
    assert validate_overrides({INPUT: {"axis": None, "block_sizes": {"-1": None}}}) == {
        INPUT: {"axis": None, "block_sizes": {-1: None}}
    }


# ---------------------------------------------------------------- normalisation and validation


def test_block_size_keys_normalised_including_nested():
    out = normalize_block_sizes(
        {"-1": 16, "type": "dynamic", "scale_bits": [4, 3], "scale_block_sizes": {"-1": 128}}
    )
    assert out == {-1: 16, "type": "dynamic", "scale_bits": (4, 3), "scale_block_sizes": {-1: 128}}
    assert normalize_block_sizes({-2: None}) == {-2: None}


@pytest.mark.parametrize("value", [0, -64, 64.0, "64", True])
def test_non_positive_or_non_int_group_size_is_error(value):
    with pytest.raises(OverlayError, match=r"block size for key -1"):
        validate_overrides({WEIGHT: {"block_sizes": {-1: value}}})


def test_non_axis_block_size_keys_pass_through_for_modelopt_to_judge():
    """ModelOpt's schema (check_with_modelopt, the plan's last gate) decides which keys exist."""
    assert normalize_block_sizes({"last": 64}) == {"last": 64}


FOUR_OVER_SIX = {"-1": 16, "type": "dynamic", "scale_bits": [4, 3], "four_over_six": True}


def test_four_over_six_passes_the_overlay():
    """ModelOpt 0.47's NVFP4 four-over-six key, in an override and in a base format."""
    overrides = validate_overrides({WEIGHT: {"block_sizes": FOUR_OVER_SIX}})
    assert overrides == {
        WEIGHT: {"block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3), "four_over_six": True}}
    }
    res = apply_overlay(W4A16_NVFP4, {WEIGHT: {"block_sizes": FOUR_OVER_SIX}})
    assert wcfg(res)["block_sizes"]["four_over_six"] is True and res.changed_patterns == (WEIGHT,)
    four_over_six = {**NVFP4_W["block_sizes"], "four_over_six": True}
    res = apply_overlay(fmt({**NVFP4_W, "block_sizes": four_over_six}, input_rule=False),
                        {WEIGHT: {"block_sizes": {-1: 32}}})
    assert wcfg(res)["block_sizes"] == {**four_over_six, -1: 32}


def test_unknown_attribute_names_it_and_lists_allowed():
    with pytest.raises(
        OverlayError, match=r"unknown attribute 'num_bits'.*\['axis', 'block_sizes', 'type'\]"
    ):
        validate_overrides({WEIGHT: {"num_bits": 4}})


@pytest.mark.parametrize("axis", [True, "0", 1.0])
def test_bool_or_wrong_type_axis_is_error(axis):
    with pytest.raises(OverlayError, match=r"axis must be null \(per tensor\) or an int"):
        validate_overrides({WEIGHT: {"axis": axis}})


def test_wrong_type_value_is_error():
    with pytest.raises(OverlayError, match=r"\.type='per_token'.*\['static', 'dynamic'\]"):
        validate_overrides({INPUT: {"type": "per_token"}})


def test_bad_pattern_key_is_error():
    with pytest.raises(OverlayError, match=r"'\*lm_head\*' is not a quantizer pattern"):
        validate_overrides({"*lm_head*": {"axis": 0}})


def test_unknown_pattern_not_in_format_is_error():
    with pytest.raises(
        OverlayError, match=r"pattern '\*q_proj.weight_quantizer' not in format 'INT8_DEFAULT_CFG'"
    ):
        apply_overlay(INT8, {"*q_proj.weight_quantizer": {"axis": 1}}, format_name="INT8_DEFAULT_CFG")


def test_explicit_pattern_present_in_rules_is_overlaid():
    base = copy.deepcopy(INT8)
    base["quant_cfg"].insert(
        3, {"quantizer_name": "*q_proj.weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}}
    )
    res = apply_overlay(base, {"*q_proj.weight_quantizer": {"axis": 1}})
    assert res.changed_patterns == ("*q_proj.weight_quantizer",)
    assert wcfg(res) == {"num_bits": 8, "axis": 0}


def test_last_rule_with_same_name_wins():
    base = copy.deepcopy(INT8)
    base["quant_cfg"].insert(2, {"quantizer_name": WEIGHT, "cfg": {"num_bits": 8, "axis": 0}})
    res = apply_overlay(base, {WEIGHT: {"axis": 1}})
    assert res.format["quant_cfg"][1]["cfg"] == {"num_bits": 8, "axis": 0}
    assert res.format["quant_cfg"][2]["cfg"] == {"num_bits": 8, "axis": 1}


# ---------------------------------------------------------------- sequential, default, noop


def test_sequential_cfg_applies_to_stage0_with_note():
    res = apply_overlay(W4A8_AWQ, {WEIGHT: {"block_sizes": {-1: 64}}})
    stages = wcfg(res)
    assert stages[0] == {"num_bits": 4, "block_sizes": {-1: 64, "type": "static"}}
    assert stages[1] == {"num_bits": (4, 3), "axis": None}
    assert "sequential cfg for *weight_quantizer: applied to stage 0 of 2" in res.notes


def test_default_key_expands_to_both_and_never_enables():
    res = apply_overlay(INT8_WO, {"default": {"axis": None}})
    assert wcfg(res) == {"num_bits": 8, "axis": None}
    assert icfg(res) is None
    assert res.noop_patterns == (INPUT,)
    res = apply_overlay(INT8, {"default": {"axis": None}, WEIGHT: {"block_sizes": {-1: 64}}})
    assert wcfg(res) == {"num_bits": 8, "block_sizes": {-1: 64}}


def test_activation_overlay_on_weight_only_is_noop():
    res = apply_overlay(INT8_WO, {INPUT: {"type": "dynamic", "block_sizes": {-1: None}}})
    assert res.is_noop and res.noop_patterns == (INPUT,) and res.changed_patterns == ()
    assert canonical_json(res.format) == canonical_json(INT8_WO)
    # W4A16_NVFP4: no *input_quantizer rule at all, disabled by the leading "*" rule
    res = apply_overlay(W4A16_NVFP4, {INPUT: {"axis": None}})
    assert res.is_noop and res.noop_patterns == (INPUT,)


def test_empty_overrides_is_not_noop():
    res = apply_overlay(INT8, {})
    assert not res.is_noop and res.changed_patterns == ()


# ---------------------------------------------------------------- legacy dict schema


def test_legacy_dict_converted_in_order():
    rules = to_rule_list(
        {"*": {"enable": False}, WEIGHT: {"num_bits": 8, "axis": 0}, INPUT: {"num_bits": 8, "enable": True}}
    )
    assert rules == [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": WEIGHT, "cfg": {"num_bits": 8, "axis": 0}},
        {"quantizer_name": INPUT, "cfg": {"num_bits": 8}, "enable": True},
    ]


def test_legacy_default_disable_trap_is_refused():
    with pytest.raises(OverlayError, match=r"'default'.*EVERY quantizer off.*leading"):
        to_rule_list({WEIGHT: {"num_bits": 8}, "default": {"enable": False}})
    assert to_rule_list({"default": {"num_bits": 8}}) == [{"quantizer_name": "*", "cfg": {"num_bits": 8}}]


def test_to_rule_list_leaves_rule_contents_to_modelopt():
    """Unknown rule keys or a rule without cfg/enable are for ModelOpt's schema (the last gate)."""
    assert to_rule_list([{"quantizer_name": "*", "enable": False, "bogus": 1}]) == [
        {"quantizer_name": "*", "enable": False, "bogus": 1}
    ]
    assert to_rule_list([{"quantizer_name": "*"}]) == [{"quantizer_name": "*"}]
    with pytest.raises(OverlayError, match=r"'quantizer_name' must be a non-empty string"):
        to_rule_list([{"quantizer_name": 3, "enable": False}])
    with pytest.raises(OverlayError, match=r"is not a recognised rule"):
        to_rule_list([{"a": 1, "b": 2}])


def test_legacy_nn_scoped_multi_key_entry_is_expanded_like_modelopt():
    rules = to_rule_list([{"nn.Linear": {WEIGHT: {"num_bits": 8}}, "*lm_head*": {"enable": False}}])
    assert rules == [
        {"quantizer_name": WEIGHT, "parent_class": "nn.Linear", "cfg": {"num_bits": 8}},
        {"quantizer_name": "*lm_head*", "enable": False},
    ]


def test_cfg_the_overlay_cannot_edit_is_named():
    base = fmt("int8")
    with pytest.raises(OverlayError, match=r"pattern '\*weight_quantizer' .* its cfg 'int8' is neither"):
        apply_overlay(base, {WEIGHT: {"axis": 0}})


# ---------------------------------------------------------------- determinism and identity


def test_deterministic_and_input_not_mutated():
    base = copy.deepcopy(INT4)
    overrides = {WEIGHT: {"block_sizes": {"-1": 64}}, INPUT: {"axis": None}}
    snapshot = copy.deepcopy(overrides)
    a = apply_overlay(base, overrides)
    b = apply_overlay(base, overrides)
    assert canonical_json(a.format) == canonical_json(b.format)
    assert config_fingerprint(a.format) == config_fingerprint(b.format)
    assert base == INT4 and overrides == snapshot
    a.format["quant_cfg"][1]["cfg"]["num_bits"] = 99
    assert base["quant_cfg"][1]["cfg"]["num_bits"] == 4


def test_canonical_json_and_fingerprint():
    assert canonical_json({"b": (4, 3), "a": {-1: 64}}) == '{"a":{"-1":64},"b":[4,3]}'
    assert canonical_json({"a": 1, "b": 2}) == canonical_json({"b": 2, "a": 1})
    fp = config_fingerprint(INT8)
    assert len(fp) == 16 and fp != config_fingerprint(INT8_WO)


def test_summarize_format():
    res = apply_overlay(INT4, {WEIGHT: {"block_sizes": {-1: 64}}})
    assert summarize_format(res.format) == (
        "weight: num_bits=4 block_sizes={-1: 64, type: static} | input: disabled | algorithm: max"
    )
    assert "input: num_bits=8 axis=None" in summarize_format(INT8)


def test_omegaconf_containers_accepted():
    from omegaconf import OmegaConf

    conf = OmegaConf.create({"*weight_quantizer": {"block_sizes": {"-1": 64}}})
    assert validate_overrides(conf) == {WEIGHT: {"block_sizes": {-1: 64}}}


def test_overlay_import_does_not_import_torch_or_modelopt():
    code = (
        "import sys; import autoquant_sweep.quant.overlay, autoquant_sweep.quant.capability, "
        "autoquant_sweep.quant; "
        "bad = [m for m in ('torch', 'modelopt') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
