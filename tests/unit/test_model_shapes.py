"""Shapes and reachable effective bits from config.json (pure: no torch, no ModelOpt)."""

from __future__ import annotations

import pytest

from autoquant_sweep.model_shapes import (
    QuantModuleShape,
    ShapeUnknown,
    axis_problem,
    block_sizes_problem,
    common_divisors,
    max_position_embeddings,
    min_effective_bits,
    quant_group,
    quantizable_modules,
    searchable_modules,
)

TINY_TEXT = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 512,
    "max_position_embeddings": 256,
}
TINY_QWEN3 = {"model_type": "qwen3", **TINY_TEXT}
TINY_VL = {
    "model_type": "qwen3_vl",
    "text_config": {"model_type": "qwen3_vl_text", **TINY_TEXT},
    "vision_config": {
        "depth": 2, "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 128, "patch_size": 8,
        "temporal_patch_size": 2, "in_channels": 3, "spatial_merge_size": 2, "deepstack_visual_indexes": [1],
    },
}
# Qwen/Qwen3-4B's config.json (the dimensions that matter here)
QWEN3_4B = {
    "model_type": "qwen3", "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
    "max_position_embeddings": 40960,
}
VL_DISABLED = ["*lm_head*", "*visual*", "*vision_tower*", "*vision_model*", "*multi_modal_projector*"]


def test_qwen3_tiny_modules_and_shapes():
    mods = quantizable_modules(TINY_QWEN3)
    assert len(mods) == 4 * 7 + 1
    by_name = {m.name: m.weight_shape for m in mods}
    assert by_name["model.layers.3.self_attn.q_proj"] == (128, 128)
    assert by_name["model.layers.3.self_attn.k_proj"] == (64, 128)
    assert by_name["model.layers.0.self_attn.o_proj"] == (128, 128)
    assert by_name["model.layers.0.mlp.gate_proj"] == (256, 128)
    assert by_name["model.layers.0.mlp.down_proj"] == (128, 256)
    assert by_name["lm_head"] == (512, 128)
    assert sum(m.numel for m in mods) == 655360
    assert mods[0].input_shape == (None, None, 128)


def test_qwen3_vl_text_from_text_config_and_vision_tower_counted():
    mods = quantizable_modules(TINY_VL)
    names = [m.name for m in mods]
    assert "model.language_model.layers.0.self_attn.q_proj" in names
    assert "model.visual.deepstack_merger_list.0.linear_fc2" in names
    assert mods[0].name == "model.visual.patch_embed.proj" and mods[0].weight_shape == (32, 3, 2, 8, 8)
    assert sum(m.numel for m in mods) == 749568
    searchable = searchable_modules(mods, VL_DISABLED)
    assert all(m.name.startswith("model.language_model.") for m in searchable) and len(searchable) == 28
    assert max_position_embeddings(TINY_VL) == 256


def test_reachable_minimum_counts_disabled_layers_at_16_bits():
    # (4 layers x 147,456 searchable weights at b bits + 65,536 lm_head weights at 16) / 655,360
    mods = quantizable_modules(TINY_QWEN3)
    assert min_effective_bits(mods, ["*lm_head*"], 8.0) == pytest.approx(8.8)
    assert min_effective_bits(mods, ["*lm_head*"], 4.0) == pytest.approx(5.2)
    assert min_effective_bits(mods, [], 4.0) == pytest.approx(4.0)
    vl = quantizable_modules(TINY_VL)
    assert min_effective_bits(vl, VL_DISABLED, 4.0) == pytest.approx(6.557377, abs=1e-6)
    # a real 4B shape: lm_head is 151936 x 2560 of 4.02e9 weights
    big = quantizable_modules(QWEN3_4B)
    assert sum(m.numel for m in big) == 3_633_315_840 + 151936 * 2560
    assert min_effective_bits(big, ["*lm_head*"], 4.0) == pytest.approx(5.1604, abs=1e-4)


def test_a_disabled_member_disables_its_whole_group_like_modelopt():
    mods = quantizable_modules(TINY_QWEN3)
    assert quant_group("model.layers.0.self_attn.v_proj") == "model.layers.0.self_attn"
    assert quant_group("model.layers.0.mlp.up_proj") == "model.layers.0.mlp"
    assert quant_group("model.layers.0.mlp.down_proj") == "model.layers.0.mlp.down_proj"
    searchable = {m.name for m in searchable_modules(mods, ["*layers.0.self_attn.q_proj", "lm_head"])}
    assert "model.layers.0.self_attn.k_proj" not in searchable
    assert "model.layers.0.self_attn.o_proj" in searchable
    assert len(searchable) == 28 - 3


def test_unknown_model_type_and_missing_keys():
    assert quantizable_modules({"model_type": "llama", "hidden_size": 8}) is None
    with pytest.raises(ShapeUnknown, match=r"config\.json has no 'head_dim'"):
        quantizable_modules({k: v for k, v in TINY_QWEN3.items() if k != "head_dim"})
    with pytest.raises(ShapeUnknown, match="no 'vision_config'"):
        quantizable_modules({"model_type": "qwen3_vl", "text_config": TINY_TEXT})
    assert max_position_embeddings({"model_type": "qwen3"}) is None


@pytest.mark.parametrize(
    ("axis", "shape", "problem"),
    [
        (None, (4, 8), None),
        (0, (4, 8), None),
        (-2, (4, 8), None),
        (2, (4, 8), "axis 2 is outside the 2 dims; use one of {-2, -1, 0, 1} or null (per tensor)"),
        (-3, (4, 8), "axis -3 is outside the 2 dims; use one of {-2, -1, 0, 1} or null (per tensor)"),
        (2, (None, None, 8), None),
        (3, (None, None, 8),
         "axis 3 is outside the 3 dims; use one of {-3, -2, -1, 0, 1, 2} or null (per tensor)"),
        ((0, 5), (4, 8), "axis 5 is outside the 2 dims; use one of {-2, -1, 0, 1} or null (per tensor)"),
    ],
)
def test_axis_problem(axis, shape, problem):
    assert axis_problem(axis, shape) == problem


@pytest.mark.parametrize(
    ("block_sizes", "shape", "found"),
    [
        ({-1: 64, "type": "static", "scale_bits": (4, 3)}, (256, 128), None),
        ({"-1": 128}, (256, 128), None),
        ({-1: None, "type": "dynamic"}, (None, None, 128), None),
        ({-2: 16}, (None, None, 128), None),  # sequence size unknown at plan time: not checked
        ({-1: 96}, (256, 128), (-1, "block size 96 does not divide dim -1 (size 128)")),
        ({1: 256}, (256, 128), (1, "block size 256 is larger than dim 1 (size 128)")),
        ({2: 64}, (256, 128), (2, "block_sizes key 2 is outside the 2 dims; use one of {-2, -1, 0, 1}")),
        ({"-3": 64}, (256, 128),
         ("-3", "block_sizes key -3 is outside the 2 dims; use one of {-2, -1, 0, 1}")),
        ({-1: 64, 1: 32}, (256, 128), (1, "block_sizes keys -1 and 1 both name dim 1; keep one")),
        ({"x": 64}, (256, 128), ("x", "block_sizes key 'x' is neither an axis index nor one of "
                                      "['type', 'scale_bits', 'scale_block_sizes', 'four_over_six']")),
    ],
)
def test_block_sizes_problem(block_sizes, shape, found):
    assert block_sizes_problem(block_sizes, shape) == found


def test_common_divisors_suggest_group_sizes_that_fit_every_module():
    assert common_divisors([128, 256]) == [128, 64, 32]
    assert common_divisors([2560, 9728], limit=4) == [512, 256, 128, 64]
    assert common_divisors([7]) == [7]


def test_conv_input_rank_is_the_weight_rank():
    conv = QuantModuleShape("model.visual.patch_embed.proj", "conv", (32, 3, 2, 8, 8))
    assert conv.input_shape == (None,) * 5 and conv.numel == 32 * 3 * 2 * 8 * 8


def test_docstring_examples_run():
    import doctest

    import autoquant_sweep.model_shapes as model_shapes
    import autoquant_sweep.quant.overlay as overlay

    for module in (model_shapes, overlay):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__
