"""resolve_format from the stored presets (no ModelOpt import), and the stored data against ModelOpt 0.47.

The tests marked ``integration`` import ModelOpt (8-12 s): they compare the stored presets with the
installed ModelOpt and exercise ``check_with_modelopt``, the plan's last gate.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from autoquant_sweep.errors import UserInputError
from autoquant_sweep.fingerprints import canonical_json
from autoquant_sweep.quant.compositions import PROJECT_COMPOSITIONS
from autoquant_sweep.quant.formats import UnknownFormatError, resolve_format
from autoquant_sweep.quant.overlay import INPUT, WEIGHT, effective_quantizer_cfg
from autoquant_sweep.quant.preset_data import PRESETS
from autoquant_sweep.quant.presets import project_preset_names, stored_presets

REGENERATE = "regenerate it with: python -m autoquant_sweep.quant.presets"


def test_stored_presets_cover_every_name_the_project_uses():
    assert sorted(PRESETS) == project_preset_names(), f"quant/preset_data.py is stale; {REGENERATE}"
    assert stored_presets() is PRESETS, "the installed ModelOpt is not the version the presets were read from"


def test_resolve_preset_is_deep_copy_in_list_schema():
    fmt = resolve_format("INT8_DEFAULT_CFG")
    assert isinstance(fmt["quant_cfg"], list) and fmt["algorithm"] == "max"
    assert canonical_json(fmt) == canonical_json(PRESETS["INT8_DEFAULT_CFG"])
    fmt["quant_cfg"][1]["cfg"]["axis"] = 7
    assert PRESETS["INT8_DEFAULT_CFG"]["quant_cfg"][1]["cfg"]["axis"] == 0


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


def test_project_formats_resolve_without_importing_modelopt():
    names = [*project_preset_names(), *PROJECT_COMPOSITIONS]
    code = (
        "import sys\n"
        "from autoquant_sweep.quant.formats import resolve_format\n"
        f"for name in {names!r}:\n"
        "    resolve_format(name)\n"
        "print(sorted(m for m in ('modelopt', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- against the installed ModelOpt ---------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_stored_preset_equals_modelopts(name):
    import modelopt.torch.quantization.config as mtq_config

    assert PRESETS[name] == getattr(mtq_config, name), f"{name} differs from ModelOpt's; {REGENERATE}"


@pytest.mark.integration
def test_other_presets_still_resolve_through_modelopt():
    from autoquant_sweep.quant.formats import available_format_names

    names = available_format_names()
    for name in ("INT8_DEFAULT_CFG", "NVFP4_DEFAULT_CFG", "INT8_SMOOTHQUANT_CFG", *PROJECT_COMPOSITIONS):
        assert name in names
    assert names == sorted(names)
    assert "INT8_SMOOTHQUANT_CFG" not in PRESETS
    assert resolve_format("INT8_SMOOTHQUANT_CFG")["algorithm"] == "smoothquant"


@pytest.mark.integration
def test_unknown_format_message():
    with pytest.raises(UnknownFormatError) as exc:
        resolve_format("INT8_DEFALT_CFG")
    msg = str(exc.value)
    assert "unknown quant format 'INT8_DEFALT_CFG' (key quant_pair.format_name)" in msg
    assert "did you mean 'INT8_DEFAULT_CFG'?" in msg and "known:" in msg


@pytest.mark.integration
@pytest.mark.parametrize("name", [*sorted(PRESETS), *PROJECT_COMPOSITIONS])
def test_modelopt_accepts_every_project_format(name):
    from autoquant_sweep.quant.formats import check_with_modelopt

    check_with_modelopt(resolve_format(name), f"quant_pair.format_name={name}")


FOUR_OVER_SIX = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3),
                                                      "four_over_six": True}}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("cfg", "reason"),
    [
        ({"num_bits": 8, "axis": 0, "block_sizes": {-1: 16}},
         r"rule #1 \('\*weight_quantizer'\): cfg\.block_sizes: Assertion failed, axis must be None"),
        ({"num_bits": 8, "axsi": 0}, r"quant_cfg rule #1 \('\*weight_quantizer'\): cfg\.axsi: Extra inputs"),
        ({"num_bits": 4, "block_sizes": {-1: 16, "typo": "dynamic"}},
         r"cfg\.block_sizes: Assertion failed \(got \{-1: 16, 'typo': 'dynamic'\}\)"),
        ({"num_bits": (3, 3)}, r"cfg: Supported FPx quantization formats"),
        (FOUR_OVER_SIX, None),
    ],
    ids=["axis-and-block-sizes", "unknown-attribute", "unknown-block-sizes-key", "bad-num-bits",
         "four-over-six"],
)
def test_check_with_modelopt_is_one_line_naming_context_and_reason(cfg, reason):
    from autoquant_sweep.quant.formats import check_with_modelopt

    fmt = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
                         {"quantizer_name": "*weight_quantizer", "cfg": cfg}], "algorithm": "max"}
    context = "quant_granularity=g on quant_pair=p"
    if reason is None:
        check_with_modelopt(fmt, context)
        return
    with pytest.raises(UserInputError, match=reason) as info:
        check_with_modelopt(fmt, context)
    message = str(info.value)
    assert message.startswith(f"{context}: ModelOpt rejects the effective format: ") and "\n" not in message


@pytest.mark.integration
def test_check_with_modelopt_names_a_top_level_key():
    from autoquant_sweep.quant.formats import check_with_modelopt

    with pytest.raises(UserInputError, match=r"^ctx: ModelOpt rejects the effective format: algorthm: Extra"):
        check_with_modelopt({"quant_cfg": [], "algorthm": "max"}, "ctx")
