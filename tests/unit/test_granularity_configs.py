"""Every conf/quant_granularity and conf/quant_pair file loads and validates; the doc is fresh."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from autoquant_sweep.quant.overlay import apply_overlay, validate_overrides

ROOT = Path(__file__).resolve().parents[2]
GRANULARITIES = sorted((ROOT / "conf" / "quant_granularity").glob("*.yaml"))
PAIRS = sorted((ROOT / "conf" / "quant_pair").glob("*.yaml"))
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
    assert set(conf) == {"name", "description", "quant_cfg_overrides"}
    assert conf.name == path.stem and conf.description
    validate_overrides(conf.quant_cfg_overrides)


@pytest.mark.parametrize("path", PAIRS, ids=lambda p: p.stem)
def test_pair_file_resolves(path):
    from autoquant_sweep.quant.formats import resolve_format

    conf = OmegaConf.load(path)
    assert set(conf) == {"name", "weight", "activation", "format_name", "description"}
    assert conf.name == path.stem == f"w{conf.weight}_a{conf.activation}"
    assert conf.weight in WEIGHTS and conf.activation in ACTIVATIONS
    fmt = resolve_format(conf.format_name)
    assert apply_overlay(fmt, {}).format == fmt


def test_recipe_match_mapping():
    conf = OmegaConf.load(ROOT / "conf" / "quant_granularity" / "recipe_match_channel_token.yaml")
    assert validate_overrides(conf.quant_cfg_overrides) == {
        "*weight_quantizer": {"axis": 0},
        "*input_quantizer": {"type": "dynamic", "block_sizes": {-1: None}},
    }


def test_committed_doc_is_up_to_date():
    from autoquant_sweep.quant.granularity_docs import DOC_PATH, render_granularity_doc

    assert DOC_PATH.read_text(encoding="utf-8") == render_granularity_doc(), (
        "docs/granularity.md is stale: run python -m autoquant_sweep.quant.granularity_docs"
    )
