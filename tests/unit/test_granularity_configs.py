"""Every conf/quant_granularity and conf/quant_pair file loads and validates; the doc is fresh."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from autoquant_sweep.config.groups import load_group, short_granularity
from autoquant_sweep.paths import conf_dir
from autoquant_sweep.quant.overlay import apply_overlay, validate_overrides

GRANULARITIES = sorted((conf_dir() / "quant_granularity").glob("*.yaml"))
PAIRS = sorted((conf_dir() / "quant_pair").glob("*.yaml"))
WEIGHTS = {"fp4", "fp8", "int4", "int8"}
ACTIVATIONS = {"fp16", "fp8", "int8", "int4", "fp4"}


def test_expected_files():
    assert {p.stem for p in GRANULARITIES} == {
        "default",
        "recipe_match_channel_token",
        "w_per_tensor",
        "w_per_out_channel",
        "w_per_in_channel",
        "w_group64",
        "w_group128",
        "a_per_token_dynamic",
        "a_per_tensor_static",
    }
    assert len(PAIRS) == 10


@pytest.mark.parametrize("path", GRANULARITIES, ids=lambda p: p.stem)
def test_granularity_file_validates(path):
    conf = OmegaConf.load(path)
    assert set(conf) == {"name", "order", "short", "description", "quant_cfg_overrides", "realizes"}
    assert conf.name == path.stem and conf.description
    overrides = validate_overrides(conf.quant_cfg_overrides)
    # every role an overlay changes carries the name's promise, and only those roles do
    roles = {"*weight_quantizer": "weight", "*input_quantizer": "input"}
    assert set(conf.realizes) == {roles[p] for p in overrides}


@pytest.mark.parametrize("pair_path", PAIRS, ids=lambda p: p.stem)
def test_every_promise_is_what_the_effective_format_declares(pair_path):
    """The name's promise equals the kind the effective format declares wherever the role is enabled (the
    plan refuses otherwise); what ModelOpt instantiates is checked in tests/integration/test_realized.py."""
    from autoquant_sweep.quant.capability import check_combination
    from autoquant_sweep.quant.formats import resolve_format
    from autoquant_sweep.quant.realized import declared_kinds

    base = resolve_format(OmegaConf.load(pair_path).format_name)
    for path in GRANULARITIES:
        conf = OmegaConf.to_container(OmegaConf.load(path))
        verdict = check_combination(base, conf["quant_cfg_overrides"], cuda_available=True)
        if verdict.status == "refused":  # refused before the promise is looked at (e.g. FP4 + axis)
            continue
        declared = declared_kinds(apply_overlay(base, conf["quant_cfg_overrides"]).format)
        for role, promised in conf["realizes"].items():
            assert declared[role] in ([], [promised]) or declared[role][0] == promised, (path.stem, role)


@pytest.mark.parametrize("path", PAIRS, ids=lambda p: p.stem)
def test_pair_file_resolves(path):
    from autoquant_sweep.quant.formats import resolve_format

    conf = OmegaConf.load(path)
    assert set(conf) == {"name", "order", "weight", "activation", "format_name", "description"}
    assert conf.name == path.stem == f"w{conf.weight}_a{conf.activation}"
    assert conf.weight in WEIGHTS and conf.activation in ACTIVATIONS
    fmt = resolve_format(conf.format_name)
    assert apply_overlay(fmt, {}).format == fmt


def test_recipe_match_mapping():
    conf = OmegaConf.load(conf_dir() / "quant_granularity" / "recipe_match_channel_token.yaml")
    assert validate_overrides(conf.quant_cfg_overrides) == {
        "*weight_quantizer": {"axis": 0},
        "*input_quantizer": {"type": "dynamic", "axis": None, "block_sizes": {-1: None}},
    }
    assert conf.realizes == {"weight": "per_out_channel", "input": "per_token_dynamic"}


def test_committed_doc_is_up_to_date():
    from autoquant_sweep.quant.granularity_docs import DOC_PATH, render_granularity_doc

    assert DOC_PATH.read_text(encoding="utf-8") == render_granularity_doc(), (
        "docs/granularity.md is stale: run python -m autoquant_sweep.quant.granularity_docs"
    )


def test_groups_load_in_their_yaml_order_with_distinct_short_names():
    granularities, pairs = load_group("quant_granularity"), load_group("quant_pair")
    for items in (granularities, pairs):
        orders = [item["order"] for item in items]
        assert orders == sorted(orders) and len(set(orders)) == len(orders)
    assert [g["name"] for g in granularities][:2] == ["default", "recipe_match_channel_token"]
    assert pairs[0]["name"] == "wint8_aint8" and pairs[-1]["name"] == "wfp4_afp4"
    shorts = [short_granularity(g["name"]) for g in granularities]
    assert shorts[5] == "w-g64"
    assert len({s[:5] for s in shorts}) == len(shorts)  # distinct within a few characters
    assert short_granularity("my_custom") == "my_custom"


def test_an_option_without_order_comes_last_and_a_bad_field_is_one_line(tmp_path):
    group = tmp_path / "quant_pair"
    group.mkdir()
    fields = "weight: int8\nactivation: int8\nformat_name: INT8_DEFAULT_CFG\n"
    (group / "a_mine.yaml").write_text(f"name: a_mine\n{fields}")
    (group / "z_first.yaml").write_text(f"name: z_first\norder: 1\n{fields}")
    assert [p["name"] for p in load_group("quant_pair", tmp_path)] == ["z_first", "a_mine"]
    assert load_group("quant_pair", tmp_path)[1]["order"] is None
    (group / "bad.yaml").write_text(f"name: bad\norder: first\n{fields}")
    expected = r"^\S+/quant_pair/bad\.yaml: order: Value 'first' of type 'str' could not be converted to Int"
    with pytest.raises(ValueError, match=expected):
        load_group("quant_pair", tmp_path)
