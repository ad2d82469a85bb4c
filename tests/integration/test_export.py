"""``export``: ModelOpt's unified HF checkpoint of a recipe, on the tiny Qwen3 in bf16 (real ModelOpt).

Recipes have the form ``mtq.get_auto_quantize_config`` returns (per-module rules after the preset's
disabling rules, ``algorithm: max``), built here from the effective format of each CPU-runnable pair x
granularity that has a deployment label, with the MLP down projections kept at 16 bits, and one recipe
mixing two formats. Every export must pass the faithfulness check and carry the predicted label.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")


def _linears(embedded) -> list[str]:
    config = json.loads((embedded.qwen3_tiny_dir / "config.json").read_text())
    return [f"model.layers.{i}.{p}" for i in range(config["num_hidden_layers"]) for p in PROJ]


def _format(pair: str, granularity: str) -> dict:
    from autoquant_sweep.config.groups import load_group
    from autoquant_sweep.quant.formats import resolve_format
    from autoquant_sweep.quant.overlay import apply_overlay

    fmt = {p["name"]: p["format_name"] for p in load_group("quant_pair")}[pair]
    overrides = {g["name"]: g.get("quant_cfg_overrides") or {} for g in load_group("quant_granularity")}
    return apply_overlay(resolve_format(fmt), overrides[granularity]).format


def recipe(assignment: dict[str, dict | None]) -> dict:
    """A per-module recipe: each module's weight / input rule from its format (None: kept at 16 bits)."""
    from autoquant_sweep.quant.overlay import effective_quantizer_cfg

    rules: list[dict] = [{"quantizer_name": "*", "enable": False},
                         {"quantizer_name": "*lm_head*", "enable": False}]
    for module, fmt in assignment.items():
        for role in ("weight", "input"):
            cfg = None if fmt is None else effective_quantizer_cfg(fmt, f"*{role}_quantizer")
            name = f"{module}.{role}_quantizer"
            rules.append({"quantizer_name": name, "cfg": cfg, "enable": True} if cfg is not None
                         else {"quantizer_name": name, "enable": False})
    return {"quant_cfg": rules, "algorithm": "max"}


def _settings():
    from autoquant_sweep.run_settings import default_settings

    return replace(default_settings(), dtype="bfloat16", device="cpu")


def _check_export(out: Path, report: dict, expected: str, quantized: list[str], kept: list[str]) -> None:
    from safetensors.torch import load_file

    hf = json.loads((out / "hf_quant_config.json").read_text())["quantization"]
    assert hf["quant_algo"] == expected == report["quant_algo"]
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_algo"] == expected
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()
    on_disk = json.loads((out / "export_report.json").read_text())
    faith = on_disk["faithfulness"]
    assert faith["layers_checked"] == len(quantized)
    assert set(faith["per_layer"]) == set(quantized)
    assert faith["max_error_over_tolerance"] <= 1.0
    assert all(v["elements_beyond_tolerance"] == 0 for v in faith["per_layer"].values())
    tensors = load_file(str(out / "model.safetensors"))
    for name in quantized:
        assert f"{name}.weight_scale" in tensors
        assert tensors[f"{name}.weight"].dtype.itemsize == 1  # int8 / uint8 (packed int4) / fp8
    for name in kept:
        assert f"{name}.weight_scale" not in tensors
        assert str(tensors[f"{name}.weight"].dtype) == "torch.bfloat16"
    fq, ex = on_disk["evaluation_fake_quant"], on_disk["evaluation_exported_weights"]
    assert fq["num_samples"] == ex["num_samples"] > 0
    assert abs(on_disk["evaluation_difference"] - (ex["eval_loss"] - fq["eval_loss"])) < 1e-12
    assert on_disk["seconds"]["export_hf_checkpoint"] > 0 and on_disk["bytes"]["safetensors"] > 0


# (pair, granularity, label ModelOpt writes): every CPU pair x granularity row of `validate` with a label
SINGLE = [
    ("wfp8_afp8", "default", "FP8"),
    ("wint8_aint8", "default", "W8A8_SQ_PER_CHANNEL"),
    ("wint8_afp16", "default", "W8A16"),
    ("wint4_afp16", "default", "W4A16_AWQ"),
    ("wint4_afp16", "w_group64", "W4A16_AWQ"),
    ("wint4_afp8", "default", "W4A8_AWQ"),
    ("wfp8_afp8", "recipe_match_channel_token", "FP8_PER_CHANNEL_PER_TOKEN"),
]


@pytest.mark.parametrize("pair,granularity,label", SINGLE, ids=[f"{p}-{g}" for p, g, _ in SINGLE])
def test_single_format_recipe_exports_faithfully(embedded, tmp_path, pair, granularity, label):
    from autoquant_sweep.export import export_checkpoint
    from autoquant_sweep.export_labels import format_label

    fmt = _format(pair, granularity)
    assert format_label(fmt).split(" ")[0] == label  # validate's "exports as"
    linears = _linears(embedded)
    kept = [m for m in linears if m.endswith("down_proj")]
    quantized = [m for m in linears if m not in kept]
    out = tmp_path / "ckpt"
    report = export_checkpoint(recipe({m: (None if m in kept else fmt) for m in linears}), _settings(), out)
    _check_export(out, report, label, quantized, kept)
    if label == "W4A16_AWQ":
        group = 64 if granularity == "w_group64" else 128
        assert json.loads((out / "hf_quant_config.json").read_text())["quantization"]["group_size"] == group


def test_two_format_recipe_exports_as_mixed_precision(embedded, tmp_path):
    from autoquant_sweep.export import export_checkpoint

    int8, int4 = _format("wint8_aint8", "default"), _format("wint4_afp16", "default")
    linears = _linears(embedded)
    assignment = {m: int8 if "self_attn" in m else (None if m.endswith("down_proj") else int4)
                  for m in linears}
    out = tmp_path / "mixed"
    report = export_checkpoint(recipe(assignment), _settings(), out)
    quantized = [m for m, f in assignment.items() if f is not None]
    _check_export(out, report, "MIXED_PRECISION", quantized, [m for m, f in assignment.items() if f is None])
    layers = json.loads((out / "hf_quant_config.json").read_text())["quantization"]["quantized_layers"]
    for m in quantized:
        assert layers[m]["quant_algo"] == ("W8A8_SQ_PER_CHANNEL" if "self_attn" in m else "W4A16_AWQ")


def test_refused_format_names_its_layer_group_before_any_model_loads(embedded, tmp_path):
    from autoquant_sweep.export import export_checkpoint
    from autoquant_sweep.export_labels import ExportLabelError

    linears = _linears(embedded)
    fmt = _format("wint8_aint8", "w_per_in_channel")
    settings = replace(_settings(), model_path=str(tmp_path / "no-such-checkpoint"))  # never reached
    out = tmp_path / "refused"
    with pytest.raises(ExportLabelError) as info:
        export_checkpoint(recipe({m: fmt for m in linears}), settings, out)
    message = str(info.value)
    assert "\n" not in message
    assert f"layer group '{linears[0]}'" in message and f"{len(linears) - 1} more groups" in message
    assert "INT8 per_in_channel weights" in message and "one INT8 weight scale per output channel" in message
    assert not out.exists()


def test_faithfulness_check_catches_a_checkpoint_with_other_weights(embedded, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from autoquant_sweep.export import faithfulness
    from autoquant_sweep.export_labels import DeployLabel

    name = "model.layers.0.self_attn.q_proj"
    rows = torch.linspace(0.1, 2, 64)[:, None]  # rows of different ranges: a per-row scale matters
    ref = torch.randn(64, 32, generator=torch.Generator().manual_seed(0)) * rows
    scale = ref.abs().amax(dim=1) / 127
    q = (ref / scale[:, None]).round().to(torch.int8)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({f"{name}.weight": q, f"{name}.weight_scale": scale}, str(folder / "model.safetensors"))
    label = DeployLabel("W8A16", None, "per_out_channel", "disabled")
    fake_quant = q.float() * scale[:, None]
    ok = faithfulness(folder, {name: fake_quant}, {name: label}, "float32")[name]
    assert ok["elements_beyond_tolerance"] == 0 and ok["max_abs_error"] == 0.0
    # the same values under a per-input-channel reading: what a mislabelled granularity would serve
    tensors = load_file(str(folder / "model.safetensors"))
    tensors[f"{name}.weight_scale"] = scale.flip(0).contiguous()
    save_file(tensors, str(folder / "model.safetensors"))
    bad = faithfulness(folder, {name: fake_quant}, {name: label}, "float32")[name]
    assert bad["elements_beyond_tolerance"] > 0 and bad["max_error_over_tolerance"] > 1.0
