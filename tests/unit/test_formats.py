"""resolve_format against the real ModelOpt 0.47 presets (no model is loaded)."""

from __future__ import annotations

import pytest

from autoquant_sweep.quant.formats import (
    PROJECT_COMPOSITIONS,
    UnknownFormatError,
    available_format_names,
    resolve_format,
)
from autoquant_sweep.quant.overlay import INPUT, WEIGHT, canonical_json, effective_quantizer_cfg

mtq = pytest.importorskip("modelopt.torch.quantization")


def test_available_names_include_presets_and_compositions():
    names = available_format_names()
    for name in ("INT8_DEFAULT_CFG", "NVFP4_DEFAULT_CFG", "W4A8_AWQ_BETA_CFG", *PROJECT_COMPOSITIONS):
        assert name in names
    assert names == sorted(names)


def test_resolve_preset_is_deep_copy_in_list_schema():
    fmt = resolve_format("INT8_DEFAULT_CFG")
    assert isinstance(fmt["quant_cfg"], list) and fmt["algorithm"] == "max"
    assert canonical_json(fmt) == canonical_json(mtq.INT8_DEFAULT_CFG)
    fmt["quant_cfg"][1]["cfg"]["axis"] = 7
    assert mtq.INT8_DEFAULT_CFG["quant_cfg"][1]["cfg"]["axis"] == 0


def test_preset_facts_block_sizes():
    assert effective_quantizer_cfg(resolve_format("W4A8_NVFP4_FP8_CFG"), WEIGHT)["block_sizes"][-1] == 32
    assert effective_quantizer_cfg(resolve_format("W4A16_NVFP4_CFG"), WEIGHT)["block_sizes"][-1] == 16
    assert effective_quantizer_cfg(resolve_format("W4A16_NVFP4_CFG"), INPUT) is None
    assert isinstance(effective_quantizer_cfg(resolve_format("W4A8_AWQ_BETA_CFG"), WEIGHT), list)


def test_composition_int4_int8():
    fmt = resolve_format("AQS_W4A8_INT4_BLOCK_INT8_CFG")
    int4 = resolve_format("INT4_BLOCKWISE_WEIGHT_ONLY_CFG")
    int8 = resolve_format("INT8_DEFAULT_CFG")
    assert effective_quantizer_cfg(fmt, WEIGHT) == effective_quantizer_cfg(int4, WEIGHT)
    assert effective_quantizer_cfg(fmt, INPUT) == effective_quantizer_cfg(int8, INPUT)
    assert fmt["algorithm"] == "max"
    assert len(fmt["quant_cfg"]) == len(int4["quant_cfg"])
    assert effective_quantizer_cfg(fmt, "model.lm_head.weight_quantizer") is None


def test_composition_fp8_weight_only():
    fmt = resolve_format("AQS_FP8_WEIGHT_ONLY_CFG")
    assert effective_quantizer_cfg(fmt, WEIGHT) == {"num_bits": (4, 3), "axis": None}
    assert effective_quantizer_cfg(fmt, INPUT) is None


def test_unknown_format_message():
    with pytest.raises(UnknownFormatError) as exc:
        resolve_format("INT8_DEFALT_CFG")
    msg = str(exc.value)
    assert "unknown quant format 'INT8_DEFALT_CFG' (key quant_pair.format_name)" in msg
    assert "did you mean 'INT8_DEFAULT_CFG'?" in msg and "known:" in msg
