"""Unit tests for the capability rules (pure)."""

from __future__ import annotations

import pytest

from autoquant_sweep.quant.capability import CAPABILITY_RULES, check_combination, validation_matrix
from autoquant_sweep.quant.overlay import INPUT, WEIGHT

OFF = {"quantizer_name": "*", "enable": False}


def fmt(weight, inp=None, algorithm="max"):
    rules = [OFF, {"quantizer_name": WEIGHT, "cfg": weight}]
    if inp is not None:
        rules.append({"quantizer_name": INPUT, "cfg": inp})
    return {"quant_cfg": rules, "algorithm": algorithm}


NVFP4 = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}
NVFP4_DEFAULT = fmt(NVFP4, NVFP4)
W4A8_NVFP4_FP8 = fmt(
    {**NVFP4, "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (4, 3)}},
    {"num_bits": (4, 3), "axis": None},
)
MXFP8 = fmt({"num_bits": (4, 3), "block_sizes": {-1: 32, "type": "dynamic", "scale_bits": (8, 0)}})
INT8 = fmt({"num_bits": 8, "axis": 0}, {"num_bits": 8, "axis": None})
INT8_SQ = fmt({"num_bits": 8, "axis": 0}, {"num_bits": 8, "axis": None}, algorithm="smoothquant")
INT8_WO = fmt({"num_bits": 8, "axis": 0})
W4A8_AWQ = fmt(
    [{"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}}, {"num_bits": (4, 3), "axis": None}],
    {"num_bits": (4, 3), "axis": None},
    algorithm={"method": "awq_lite", "alpha_step": 0.1},
)
PER_TOKEN = {INPUT: {"type": "dynamic", "axis": None, "block_sizes": {-1: None}}}
# ModelOpt's docstring form: a static quantizer per (batch, position) in 0.47 (facts 31)
DOCSTRING_PER_TOKEN = {INPUT: {"block_sizes": {-1: None, "type": "dynamic"}}}


def check(base, overrides, cuda=True, name="F", gran="G"):
    return check_combination(base, overrides, cuda_available=cuda, format_name=name, granularity_name=gran)


def test_rules_are_data():
    ids = [r.rule_id for r in CAPABILITY_RULES]
    assert len(ids) == len(set(ids)) == 7
    assert all(r.summary and r.evidence for r in CAPABILITY_RULES)


@pytest.mark.parametrize(
    "overrides", [{WEIGHT: {"axis": 0}}, {WEIGHT: {"axis": None}}, {INPUT: {"type": "static"}}]
)
def test_fp4_axis_or_type_refused(overrides):
    v = check(NVFP4_DEFAULT, overrides, name="NVFP4_DEFAULT_CFG", gran="w_x")
    assert v.status == "refused" and "fp4-axis-or-type" in v.rule_ids
    msg = v.reasons[0]
    assert "NVFP4_DEFAULT_CFG" in msg and "w_x" in msg and "FP4 E2M1" in msg
    assert "Only support E=4 & M=3 for now" in msg and "\n" not in msg


def test_fp4_list_num_bits_accepted():
    base = fmt({"num_bits": [2, 1], "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": [4, 3]}})
    assert check(base, {WEIGHT: {"axis": 0}}).status == "refused"
    assert check(base, {WEIGHT: {"block_sizes": {-1: 64}}}).rule_ids == ("nvfp4-block-size",)


def test_nvfp4_block_size_change_refused_and_preset_size_kept():
    v = check(
        W4A8_NVFP4_FP8, {WEIGHT: {"block_sizes": {-1: 64}}}, name="W4A8_NVFP4_FP8_CFG", gran="w_group64"
    )
    assert v.status == "refused" and v.rule_ids == ("nvfp4-block-size",)
    assert (
        "{-1: 32}" in v.reasons[0]
        and "silently ignores" in v.reasons[0]
        and "W4A8_NVFP4_FP8_CFG" in v.reasons[0]
    )
    # 32 is this preset's own size: restating it is a no-op, not a refusal; 16 would change it
    assert check(W4A8_NVFP4_FP8, {WEIGHT: {"block_sizes": {-1: 32}}}).status == "noop"
    assert check(W4A8_NVFP4_FP8, {WEIGHT: {"block_sizes": {-1: 16}}}).status == "refused"


def test_mx_block_size_refused():
    v = check(MXFP8, {WEIGHT: {"block_sizes": {-1: 64}}}, name="MXFP8_DEFAULT_CFG")
    assert v.status == "refused" and v.rule_ids == ("mx-block-size",)
    assert "Blocksize for fused call must be one of {8, 16, 32}" in v.reasons[0]
    assert check(MXFP8, {WEIGHT: {"block_sizes": {-1: 16}}}).status == "ok"


@pytest.mark.parametrize("base,algo", [(INT8_SQ, "smoothquant"), (W4A8_AWQ, "awq_lite")])
def test_per_token_dynamic_with_calibration_algorithm_refused(base, algo):
    v = check(base, PER_TOKEN, gran="a_per_token_dynamic")
    assert v.status == "refused" and v.rule_ids == ("dynamic-input-calib-algorithm",)
    assert algo in v.reasons[0] and "Axis and block_sizes are both set." in v.reasons[0]
    assert check(INT8, PER_TOKEN).status == "ok"


def test_docstring_per_token_form_is_refused_before_load_with_the_remedy():
    v = check(INT8, DOCSTRING_PER_TOKEN, cuda=False, name="INT8_DEFAULT_CFG", gran="old_token")
    assert v.status == "refused" and v.rule_ids == ("block-type-dynamic-per-token",)
    assert "static quantizer per (batch, position)" in v.reasons[0]
    assert "quantizer-level type: dynamic" in v.reasons[0]
    # the same form already in a base format (e.g. a recipe stored by an older version) is refused too
    old = fmt({"num_bits": 8, "axis": 0}, {"num_bits": 8, "block_sizes": {-1: None, "type": "dynamic"}})
    assert check(old, {}, cuda=False).rule_ids == ("block-type-dynamic-per-token",)
    # dynamic BLOCK quantization with a group size (NVFP4 / MX style) is what block_sizes type is for
    assert "block-type-dynamic-per-token" not in check(MXFP8, {}, cuda=True).rule_ids


def test_cuda_only_refused_on_cpu():
    v = check(NVFP4_DEFAULT, {}, cuda=False, name="NVFP4_DEFAULT_CFG", gran="default")
    assert v.status == "refused" and v.rule_ids == ("cuda-only",)
    assert "amax must be a CUDA tensor" in v.reasons[0]
    v = check(MXFP8, {}, cuda=False)
    assert "modelopt_cuda_ext_mx" in v.reasons[0]
    assert check(NVFP4_DEFAULT, {}, cuda=True).status == "ok"
    assert check(INT8, {}, cuda=False).status == "ok"


def test_noop_disabled_and_restated():
    v = check(INT8_WO, PER_TOKEN)
    assert v.status == "noop" and "disabled" in v.reasons[0]
    v = check(INT8, {WEIGHT: {"axis": 0}})
    assert v.status == "noop" and "restates the preset" in v.reasons[0]
    assert check(INT8, {}).status == "ok"


def test_invalid_overlay_is_refused_not_raised():
    v = check(INT8, {WEIGHT: {"axis": 0, "block_sizes": {-1: 64}}})
    assert v.status == "refused" and v.rule_ids == ("invalid-overlay",)


def test_validation_matrix_shape():
    formats = {"A": INT8, "B": NVFP4_DEFAULT}
    pairs = [{"name": "pa", "format_name": "A"}, {"name": "pb", "format_name": "B"}]
    grans = [
        {"name": "default", "quant_cfg_overrides": {}},
        {"name": "w_axis1", "quant_cfg_overrides": {WEIGHT: {"axis": 1}}},
        {"name": "a_tok", "quant_cfg_overrides": PER_TOKEN},
    ]
    rows = validation_matrix(pairs, grans, cuda_available=True, resolve=lambda n: formats[n])
    assert len(rows) == 6
    assert set(rows[0]) >= {"pair", "granularity", "format_name", "status", "reason"}
    status = {(r["pair"], r["granularity"]): r["status"] for r in rows}
    assert status == {
        ("pa", "default"): "ok",
        ("pa", "w_axis1"): "ok",
        ("pa", "a_tok"): "ok",
        ("pb", "default"): "ok",
        ("pb", "w_axis1"): "refused",
        ("pb", "a_tok"): "refused",
    }
