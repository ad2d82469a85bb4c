"""Issue 12, item 11: a base format read back from JSON/YAML (string block_sizes keys) merges cleanly;
and the pure ``format_bits`` the plan uses for the reachable effective bits."""

from __future__ import annotations

import json

import pytest

from autoquant_sweep.fingerprints import canonical_json
from autoquant_sweep.quant.overlay import OverlayError, apply_overlay, format_bits

INT4_BLOCK = {
    "quant_cfg": [
        {"quantizer_name": "*", "enable": False},
        {
            "quantizer_name": "*weight_quantizer",
            "cfg": {
                "num_bits": 4,
                "block_sizes": {
                    -1: 128, "type": "static", "scale_bits": (4, 3), "scale_block_sizes": {-1: 32}
                },
            },
        },
        {"quantizer_name": "*input_quantizer", "enable": False},
    ],
    "algorithm": "max",
}


def _from_json(fmt: dict) -> dict:
    """What a manifest or a registry config gives back: integer keys became strings."""
    return json.loads(canonical_json(fmt))


def _weight_cfg(fmt: dict) -> dict:
    return next(r for r in fmt["quant_cfg"] if r["quantizer_name"] == "*weight_quantizer")["cfg"]


def test_string_keyed_base_merges_into_one_block_size_per_axis():
    base = _from_json(INT4_BLOCK)
    assert _weight_cfg(base)["block_sizes"] == {
        "-1": 128, "type": "static", "scale_bits": [4, 3], "scale_block_sizes": {"-1": 32}
    }
    out = apply_overlay(base, {"*weight_quantizer": {"block_sizes": {"-1": 64}}})
    assert _weight_cfg(out.format)["block_sizes"] == {
        -1: 64, "type": "static", "scale_bits": [4, 3], "scale_block_sizes": {-1: 32}
    }
    assert out.changed_patterns == ("*weight_quantizer",)


def test_string_and_int_keyed_bases_give_the_same_effective_format():
    overrides = {"*weight_quantizer": {"block_sizes": {-1: 64}, "type": "dynamic"}}
    from_json = apply_overlay(_from_json(INT4_BLOCK), overrides).format
    native = apply_overlay(INT4_BLOCK, overrides).format
    assert canonical_json(from_json) == canonical_json(native)
    assert _weight_cfg(from_json)["block_sizes"][-1] == 64
    assert "-1" not in _weight_cfg(from_json)["block_sizes"]


def test_type_only_override_also_normalises_the_base_keys():
    out = apply_overlay(_from_json(INT4_BLOCK), {"*weight_quantizer": {"type": "dynamic"}})
    # type is the quantizer-level attribute; the base's block_sizes keep their own type, keys normalised
    assert _weight_cfg(out.format)["block_sizes"] == {
        -1: 128, "type": "static", "scale_bits": [4, 3], "scale_block_sizes": {-1: 32}
    }
    assert _weight_cfg(out.format)["type"] == "dynamic"


def test_a_base_naming_one_axis_twice_is_an_error_naming_it():
    base = _from_json(INT4_BLOCK)
    _weight_cfg(base)["block_sizes"][-1] = 256  # now both "-1" and -1
    with pytest.raises(OverlayError, match=r"block_sizes name axis -1 twice") as info:
        apply_overlay(base, {"*weight_quantizer": {"block_sizes": {-1: 64}}})
    assert "*weight_quantizer" in str(info.value)


@pytest.mark.parametrize(
    ("rules", "bits"),
    [
        ([{"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}}], 8.0),
        ([{"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": (4, 3)}}], 8.0),
        ([{"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": (2, 1), "effective_bits": 4.5}}], 4.5),
        # ModelOpt takes the minimum over every enabled rule, inputs included
        ([{"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": (4, 3)}},
          {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 4}}], 4.0),
        # a rule with enable: False does not count; a cfg with enable: False counts 16
        ([{"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8}},
          {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 4}, "enable": False}], 8.0),
        ([{"quantizer_name": "*weight_quantizer", "cfg": [{"num_bits": 4}, {"num_bits": (4, 3)}]}], 4.0),
        ([{"quantizer_name": "*", "enable": False}], 16.0),
    ],
)
def test_format_bits_follows_modelopt_estimate(rules, bits):
    assert format_bits({"quant_cfg": [{"quantizer_name": "*", "enable": False}, *rules]}) == bits


def test_format_level_effective_bits_wins():
    assert format_bits({"quant_cfg": INT4_BLOCK["quant_cfg"], "effective_bits": 5.0}) == 5.0
