"""Deployment labels, run settings from a manifest and the export's lookup lines (pure, no ModelOpt)."""

from __future__ import annotations

import pytest

from autoquant_sweep.errors import UserInputError
from autoquant_sweep.export import export_lines
from autoquant_sweep.export_labels import (
    MIXED,
    ExportLabelError,
    checkpoint_label,
    group_labels,
    label_for,
)
from autoquant_sweep.run_settings import RunSettings, settings_from_manifest, with_overrides

INT8_W = {"num_bits": 8, "axis": 0}
INT8_X = {"num_bits": 8, "axis": None}
FP8 = {"num_bits": (4, 3), "axis": None}
INT4_G128 = {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}}


@pytest.mark.parametrize("weight,inputs,algo", [
    (INT8_W, INT8_X, "W8A8_SQ_PER_CHANNEL"),
    (INT8_W, None, "W8A16"),
    (FP8, FP8, "FP8"),
    ({"num_bits": (4, 3), "axis": 0}, {"num_bits": (4, 3), "axis": None, "type": "dynamic",
                                       "block_sizes": {-1: None}}, "FP8_PER_CHANNEL_PER_TOKEN"),
    (INT4_G128, None, "W4A16_AWQ"),
    ([INT4_G128, FP8], FP8, "W4A8_AWQ"),
])
def test_formats_a_label_describes(weight, inputs, algo):
    assert label_for(weight, inputs).quant_algo == algo


@pytest.mark.parametrize("weight,inputs,why", [
    ({"num_bits": 4, "axis": 0}, None, "INT4 weights are deployed in groups"),
    ({"num_bits": 4, "axis": None}, None, "per_tensor INT4 has no label"),
    ({"num_bits": 4, "block_sizes": {-1: 32}}, None, "group size 64 / 128, not 32"),
    (INT8_W, {"num_bits": 8, "block_sizes": {-1: None}}, "per_position_static inputs"),
    (INT8_W, {"num_bits": 8, "block_sizes": {-1: None, "type": "dynamic"}}, "static per (batch, position)"),
    ({"num_bits": (4, 3), "axis": 0}, {"num_bits": (4, 3), "block_sizes": {-1: None, "type": "dynamic"}},
     "static per (batch, position)"),
    (INT4_G128, INT8_X, "INT8 inputs would be dropped"),
    (FP8, None, "would be labelled as one of them"),
    (None, INT8_X, "quantized inputs with 16-bit weights"),
])
def test_formats_without_a_label_are_refused_with_the_reason(weight, inputs, why):
    with pytest.raises(ExportLabelError) as info:
        label_for(weight, inputs)
    assert why in str(info.value) and "\n" not in str(info.value)


def test_a_recipe_of_two_formats_is_mixed_precision_and_kept_groups_have_no_label():
    rules = [{"quantizer_name": "*", "enable": False},
             {"quantizer_name": "a.q_proj.weight_quantizer", "cfg": INT8_W},
             {"quantizer_name": "a.q_proj.input_quantizer", "cfg": INT8_X},
             {"quantizer_name": "a.up_proj.weight_quantizer", "cfg": INT4_G128},
             {"quantizer_name": "a.down_proj.weight_quantizer", "enable": False}]
    labels = group_labels({"quant_cfg": rules})
    assert {g: lab.quant_algo for g, lab in labels.items()} == {"a.q_proj": "W8A8_SQ_PER_CHANNEL",
                                                                 "a.up_proj": "W4A16_AWQ"}
    assert checkpoint_label(labels) == MIXED


def test_validate_has_an_exports_as_column_from_the_same_rule():
    from autoquant_sweep.cli import validation_rows

    rows = {(r["pair"], r["granularity"]): r["exports_as"] for r in validation_rows("cpu")}
    assert rows[("wint8_aint8", "default")] == "W8A8_SQ_PER_CHANNEL"
    assert rows[("wint4_afp16", "w_group64")] == "W4A16_AWQ (group 64)"
    assert rows[("wfp8_afp8", "default")] == "FP8"
    assert rows[("wint4_afp16", "w_per_out_channel")].startswith("refused: INT4 weights are deployed in")
    assert rows[("wint8_aint8", "a_per_token_dynamic")].startswith("refused: W8A8_SQ_PER_CHANNEL carries")
    assert all(v for v in rows.values())


MANIFEST = {"model": {"name": "qwen3_4b", "path": "/nowhere/qwen3-4b", "kind": "causal_lm",
                      "dtype": "bfloat16"},
            "dataset": {"size": "large", "path": "/nowhere/cal.txt", "num_samples": 512, "seq_len": 512},
            "autoquant": {"device": "cuda", "batch_size": 8, "num_calib_steps": 16},
            "evaluation": None}


def test_settings_of_a_real_checkpoint_need_its_folder_when_the_path_is_gone():
    with pytest.raises(UserInputError, match="pass --model-path DIR"):
        settings_from_manifest(MANIFEST)


def test_settings_come_from_the_manifest_and_flags_override_them(tmp_path):
    manifest = {**MANIFEST, "model": {**MANIFEST["model"], "path": str(tmp_path)}}
    s = settings_from_manifest(manifest)
    assert (s.model_path, s.dtype, s.device, s.seq_len, s.batch_size, s.num_calib_samples, s.eval_source) == \
        (str(tmp_path), "bfloat16", "cuda", 512, 8, 128, None)
    t = with_overrides(s, {"device": "cpu", "seq_len": 256, "batch_size": None})
    assert (t.device, t.seq_len, t.batch_size) == ("cpu", 256, 8)
    with pytest.raises(UserInputError, match="--seq-len: must be a positive integer"):
        with_overrides(s, {"seq_len": 0})
    assert isinstance(t, RunSettings)


def test_lookup_lines_name_every_export_of_a_version():
    tags = {"export.FP8": '{"model_id": "m-1", "artifact_location": "file:///x", "local_path": "/q", '
                          '"quant_algo": "FP8"}', "quant_pair": "wfp8_afp8"}
    assert export_lines(tags) == ["export FP8: logged model m-1 at file:///x (written to /q)"]
