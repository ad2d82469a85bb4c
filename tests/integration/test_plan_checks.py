"""Issue 12 (plan side): what used to run something else silently, or fail only after the model was
loaded, is refused by ``plan_run`` with one line naming the key and the fix, before any model loads.

Real Hydra composition, real ModelOpt where a number must match it, the embedded tiny models on CPU.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from autoquant_sweep.errors import CapabilityRefusedError, UserInputError
from autoquant_sweep.plan import plan_run

from ..conftest import run_app

pytestmark = pytest.mark.integration

ERROR = "autoquant-sweep: error:"
USER_GRANULARITIES = {
    "w_axis5": {"*weight_quantizer": {"axis": 5}},
    "a_axis3": {"*input_quantizer": {"axis": 3}},
    "w_group96": {"*weight_quantizer": {"block_sizes": {-1: 96}}},
    "w_group512": {"*weight_quantizer": {"block_sizes": {-1: 512}}},
    "w_block_key2": {"*weight_quantizer": {"block_sizes": {2: 64}}},
}


def _user_conf(root: Path) -> Path:
    """A --config-dir with custom quant_granularity options, the way users add their own overlays."""
    folder = root / "user_conf" / "quant_granularity"
    folder.mkdir(parents=True, exist_ok=True)
    for name, overrides in USER_GRANULARITIES.items():
        doc = {"name": name, "quant_cfg_overrides": overrides}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return folder.parent


@pytest.fixture
def no_model_load(monkeypatch):
    """Guard: counts calls of the loader the compute stage uses; a plan must never call it."""
    import autoquant_sweep.compute
    import autoquant_sweep.modeling

    calls = []

    def counting_loader(*args, **kwargs):
        calls.append(args)
        raise AssertionError("plan_run loaded a model")

    monkeypatch.setattr(autoquant_sweep.compute, "load_model_and_tokenizer", counting_loader)
    monkeypatch.setattr(autoquant_sweep.modeling, "load_model_and_tokenizer", counting_loader)
    yield calls
    assert calls == []


@pytest.fixture
def plan_error(compose_cfg, tmp_path, embedded, no_model_load):
    """``plan_error(overrides, error_type) -> message`` (one line, nothing loaded)."""
    user_conf = _user_conf(tmp_path)

    def _plan_error(overrides, error=UserInputError) -> str:
        cfg = compose_cfg([f"hydra.searchpath=[file://{user_conf}]", *overrides])
        with pytest.raises(error) as info:
            plan_run(cfg)
        message = str(info.value)
        assert "\n" not in message
        return message

    return _plan_error


def _checkpoint_copy(root: Path, embedded, **config_changes) -> Path:
    """A real checkpoint directory (the tiny Qwen3's files) with a changed config.json."""
    ckpt = root / "ckpt"
    shutil.copytree(embedded.qwen3_tiny_dir, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config.update(config_changes)
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


# ---- item 2: overrides (and effective formats) that do not fit the model's tensors ----------------------

Q_PROJ = "model.layers.0.self_attn.q_proj"
WEIGHT_AXES = (
    "use one of {-2, -1, 0, 1} (0 = per output channel, 1 = per input channel) or null (per tensor)"
)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (
            ["quant_granularity=w_axis5"],
            UserInputError,
            "quant_granularity=w_axis5 on quant_pair=wint8_aint8: "
            "quant_cfg_overrides['*weight_quantizer'].axis=5 does not fit the weight (out, in) = (128, 128) "
            f"of {Q_PROJ}: axis 5 is outside the 2 dims; {WEIGHT_AXES}",
        ),
        (
            ["+quant_granularity.quant_cfg_overrides={default: {axis: 5}}"],
            UserInputError,
            "quant_granularity=default on quant_pair=wint8_aint8: quant_cfg_overrides['default'].axis=5 "
            f"does not fit the weight (out, in) = (128, 128) of {Q_PROJ}: axis 5 is outside the 2 dims; "
            f"{WEIGHT_AXES}",
        ),
        (
            ["quant_granularity=a_axis3"],
            UserInputError,
            "quant_granularity=a_axis3 on quant_pair=wint8_aint8: "
            "quant_cfg_overrides['*input_quantizer'].axis=3 does not fit the input (batch, seq, in) = "
            f"(*, *, 128) of {Q_PROJ}: axis 3 is outside the 3 dims; use one of {{-3, -2, -1, 0, 1, 2}} "
            "or null (per tensor)",
        ),
        (
            ["quant_pair=wint4_afp16", "quant_granularity=w_block_key2"],
            UserInputError,
            "quant_granularity=w_block_key2 on quant_pair=wint4_afp16: "
            "quant_cfg_overrides['*weight_quantizer'].block_sizes[2] does not fit the weight (out, in) = "
            f"(128, 128) of {Q_PROJ}: block_sizes key 2 is outside the 2 dims; use one of {{-2, -1, 0, 1}}",
        ),
        (
            ["quant_pair=wint4_afp16", "quant_granularity=w_group96"],
            CapabilityRefusedError,
            "quant_granularity=w_group96 on quant_pair=wint4_afp16: "
            "quant_cfg_overrides['*weight_quantizer'].block_sizes[-1] does not fit the weight (out, in) = "
            f"(128, 128) of {Q_PROJ}: block size 96 does not divide dim -1 (size 128); block sizes that "
            "divide dim -1 of every searchable weight: 128, 64, 32",
        ),
        (
            ["quant_pair=wint4_afp16", "quant_granularity=w_group512"],
            CapabilityRefusedError,
            "quant_granularity=w_group512 on quant_pair=wint4_afp16: "
            "quant_cfg_overrides['*weight_quantizer'].block_sizes[-1] does not fit the weight (out, in) = "
            f"(128, 128) of {Q_PROJ}: block size 512 is larger than dim -1 (size 128); block sizes that "
            "divide dim -1 of every searchable weight: 128, 64, 32",
        ),
    ],
    ids=["weight-axis-5", "default-axis-5", "input-axis-3", "block-key-2", "group-96", "group-512"],
)
def test_overrides_that_do_not_fit_the_tensors_are_refused(plan_error, overrides, error, message):
    assert plan_error(overrides, error) == message


def test_effective_format_is_checked_not_only_the_overrides(compose_cfg, tmp_path, embedded, no_model_load):
    """INT4_BLOCKWISE's own block size 128 against a model whose Linear inputs are 96 wide."""
    ckpt = _checkpoint_copy(tmp_path, embedded, hidden_size=96, intermediate_size=192, head_dim=24)
    real = ["model=qwen3_4b", f"model.path={ckpt}", "model.dtype=float32"]
    with pytest.raises(CapabilityRefusedError) as info:
        plan_run(compose_cfg([*real, "quant_pair=wint4_afp16", "quant_granularity=default"]))
    assert str(info.value) == (
        "quant_granularity=default on quant_pair=wint4_afp16: the weight quantizer's block_sizes[-1] of "
        "quant_pair.format_name=INT4_BLOCKWISE_WEIGHT_ONLY_CFG does not fit the weight (out, in) = "
        "(96, 96) of model.layers.0.self_attn.q_proj: block size 128 is larger than dim -1 (size 96); "
        "block sizes that divide dim -1 of every searchable weight: 96, 48, 32"
    )
    with pytest.raises(CapabilityRefusedError, match=r"block size 64 does not divide dim -1 \(size 96\)"):
        plan_run(compose_cfg([*real, "quant_pair=wint4_afp16", "quant_granularity=w_group64"]))
    # per channel fits any width
    plan = plan_run(compose_cfg([*real, "quant_pair=wint4_afp16", "quant_granularity=w_per_out_channel"]))
    assert plan.min_effective_bits is not None


def test_every_shipped_granularity_fits_the_tiny_models(compose_cfg, embedded, no_model_load):
    for model in ("qwen3_tiny", "qwen3_vl_tiny"):
        for granularity in ("w_per_in_channel", "w_group64", "w_group128", "recipe_match_channel_token"):
            plan = plan_run(compose_cfg([f"model={model}", "quant_pair=wint4_aint8",
                                         f"quant_granularity={granularity}"]))
            assert plan.overlay_status in ("ok", "noop")


def test_unknown_model_type_skips_the_shape_checks_with_a_log_line(
    compose_cfg, tmp_path, embedded, no_model_load, caplog
):
    ckpt = _checkpoint_copy(tmp_path, embedded, model_type="llama")
    with caplog.at_level("WARNING", logger="autoquant_sweep.plan"):
        plan = plan_run(compose_cfg(["model=qwen3_4b", f"model.path={ckpt}", "autoquant.effective_bits=4"]))
    assert plan.min_effective_bits is None
    assert any(
        "model_type 'llama'" in r.getMessage() and "has no shape formulas" in r.getMessage()
        and "not checked before loading" in r.getMessage()
        for r in caplog.records
    )


# ---- item 3: model.path next to the embedded default --------------------------------------------------


def test_model_path_with_embedded_model_is_refused(plan_error, tmp_path):
    message = plan_error([f"model.path={tmp_path}"])
    assert message == (
        f"model.path: '{tmp_path}' is given together with model.embedded=qwen3_tiny, which runs the embedded "
        f"checkpoint and would ignore it; to run the checkpoint at '{tmp_path}' pass model=qwen3_4b "
        f"model.path={tmp_path} (model=qwen3_vl_4b_instruct for Qwen3-VL), or add model.embedded=null"
    )


def test_model_embedded_null_uses_the_given_path(compose_cfg, embedded, no_model_load):
    plan = plan_run(compose_cfg(["model.embedded=null", f"model.path={embedded.qwen3_tiny_dir}"]))
    assert plan.checkpoint == embedded.qwen3_tiny_dir


# ---- item 8: late checks moved into the plan -----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["autoquant.method=fisher"],
            "autoquant.method: unknown method 'fisher'; choose one of gradient, kl_div",
        ),
        (
            ["model.kind=seq2seq"],
            "model.kind: unknown kind 'seq2seq'; choose one of causal_lm, image_text_to_text",
        ),
        (["model.dtype=int8"], "model.dtype: unknown dtype 'int8'; choose one of float32, bfloat16, float16"),
        (["autoquant.batch_size=-2"], "autoquant.batch_size: must be a positive integer, got -2"),
        (["autoquant.num_calib_samples=0"], "autoquant.num_calib_samples: must be a positive integer, got 0"),
        (
            ["autoquant.num_score_samples=-1"],
            "autoquant.num_score_samples: must be a positive integer, got -1",
        ),
        (
            ["dataset.max_samples=0"],
            "dataset.max_samples: must be a positive integer or null (every line of dataset.size), got 0",
        ),
        (
            ["dataset.seq_len=0"],
            "dataset.seq_len: must be an integer of at least 2 (tokens per caption, padded), got 0",
        ),
        (
            ["dataset.seq_len=1"],
            "dataset.seq_len: must be an integer of at least 2 (tokens per caption, padded), got 1",
        ),
    ],
)
def test_settings_refused_before_loading(plan_error, overrides, message):
    assert plan_error(overrides) == message


def test_seq_len_over_max_position_embeddings_names_config_json(plan_error, embedded):
    config = embedded.qwen3_tiny_dir / "config.json"
    assert plan_error(["dataset.seq_len=257"]) == (
        f"dataset.seq_len: 257 is more than max_position_embeddings=256 of '{config}'; "
        "use dataset.seq_len=256 or less"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["autoquant.effective_bits=8.5"],
            "autoquant.effective_bits: 8.5 is below the minimum achievable effective bits 8.8000 of "
            "qwen3_tiny with quant_pair=wint8_aint8 (INT8_DEFAULT_CFG, 8 bits per weight; every searchable "
            "layer at 8 bits, the 65,536 weights of model.disabled_layers at 16 bits); use "
            "autoquant.effective_bits=8.8 or more, or a lower-bit quant_pair",
        ),
        (
            ["quant_pair=wint4_afp16", "autoquant.effective_bits=4"],
            # INT4 in blocks of 128 with 16-bit scales: 4.125 bits (autoquant.cost_model=storage)
            "autoquant.effective_bits: 4 is below the minimum achievable effective bits 5.3125 of "
            "qwen3_tiny with quant_pair=wint4_afp16 (INT4_BLOCKWISE_WEIGHT_ONLY_CFG, 4.125 bits per weight; "
            "every searchable layer at 4.125 bits, the 65,536 weights of model.disabled_layers at 16 bits); "
            "use autoquant.effective_bits=5.32 or more, or a lower-bit quant_pair",
        ),
        (
            # the vision tower is out of the cost (model.cost_excluded_modules): the text model's minimum
            ["model=qwen3_vl_tiny", "quant_pair=wint4_aint8", "autoquant.effective_bits=5"],
            "autoquant.effective_bits: 5 is below the minimum achievable effective bits 5.3125 of "
            "qwen3_vl_tiny with quant_pair=wint4_aint8 (AQS_W4A8_INT4_BLOCK_INT8_CFG, 4.125 bits per weight; "
            "every searchable layer at 4.125 bits, the 65,536 weights of model.disabled_layers at 16 bits, "
            "the 94,208 weights of model.cost_excluded_modules not counted); "
            "use autoquant.effective_bits=5.32 or more, or a lower-bit quant_pair",
        ),
    ],
    ids=["int8", "int4-block", "vl-w4a8"],
)
def test_unreachable_budget_refused_before_loading(plan_error, overrides, message):
    assert plan_error(overrides) == message


def test_budget_at_the_minimum_is_accepted(compose_cfg, embedded, no_model_load):
    plan = plan_run(compose_cfg(["autoquant.effective_bits=8.8"]))
    assert plan.min_effective_bits == pytest.approx(8.8)


@pytest.fixture(scope="module")
def tiny_model_and_batches(embedded):
    from autoquant_sweep.data import read_captions, tokenize_batches
    from autoquant_sweep.modeling import load_model_and_tokenizer

    loaded = load_model_and_tokenizer(
        embedded.qwen3_tiny_dir, kind="causal_lm", dtype="float32", device="cpu"
    )
    batches = tokenize_batches(loaded.tokenizer, read_captions(embedded.caption_file("small"), 8), 32, 4)
    return loaded.model, batches


@pytest.mark.parametrize("quant_pair", ["wint8_aint8", "wint4_afp16"])
def test_computed_minimum_equals_modelopts(compose_cfg, tiny_model_and_batches, quant_pair):
    """ModelOpt's own infeasible-budget error names its minimum; the plan computed it from config.json."""
    import copy

    import modelopt.torch.quantization as mtq

    plan = plan_run(compose_cfg([f"quant_pair={quant_pair}", "autoquant.effective_bits=16"]))
    model, batches = tiny_model_and_batches
    too_low = round(plan.min_effective_bits - 0.1, 2)  # above the format's own bits: ModelOpt's cost check
    with pytest.raises(ValueError, match="is infeasible") as info:
        mtq.auto_quantize(
            copy.deepcopy(model),
            constraints={"effective_bits": too_low},
            quantization_formats=[copy.deepcopy(plan.effective_format)],
            data_loader=batches,
            forward_step=lambda m, batch: m(**batch),
            loss_func=lambda output, batch: output.loss,
            disabled_layers=plan.cfg["model"]["disabled_layers"],
            num_calib_steps=1,
            num_score_steps=1,
            verbose=False,
        )
    found = re.search(r"minimum achievable effective bits is ([0-9]+\.[0-9]+)", str(info.value))
    modelopt_minimum = float(found[1])
    assert plan.min_effective_bits == pytest.approx(modelopt_minimum, abs=1e-3)
    # storage cost: INT4 block-128 weights cost 4.125 bits (5.2 with ModelOpt's own num_bits cost)
    assert modelopt_minimum == {"wint8_aint8": 8.8, "wint4_afp16": 5.3125}[quant_pair]


def test_format_bits_match_modelopts_recipe_cost_for_every_preset():
    import warnings

    from modelopt.torch.quantization.algorithms import QuantRecipe

    from autoquant_sweep.quant.formats import available_format_names, resolve_format
    from autoquant_sweep.quant.overlay import format_bits

    checked = 0
    for name in available_format_names():
        fmt = resolve_format(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = QuantRecipe(quant_cfg=resolve_format(name), name=name).compression * 16
        assert format_bits(fmt) == pytest.approx(expected, abs=1e-12), name
        checked += 1
    assert checked >= 30


def test_shape_formulas_match_the_loaded_tiny_models(embedded):
    """The module names and weight shapes from config.json are the ones the real models have."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from autoquant_sweep.model_shapes import quantizable_modules

    for folder, auto_cls in (
        (embedded.qwen3_tiny_dir, AutoModelForCausalLM),
        (embedded.qwen3_vl_tiny_dir, AutoModelForImageTextToText),
    ):
        model = auto_cls.from_pretrained(folder)
        real = [
            (name, tuple(module.weight.shape))
            for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))
        ]
        config = json.loads((folder / "config.json").read_text())
        assert sorted((m.name, m.weight_shape) for m in quantizable_modules(config)) == sorted(real)


# ---- item 10: a broken config.json names the file -----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ('{"model_type": "qwen3",', r"is not valid JSON \(line 1, column 24: Expecting property name"),
        ("[1, 2]", r"holds a JSON list, not an object"),
    ],
    ids=["truncated", "not-an-object"],
)
def test_broken_config_json_is_named(compose_cfg, tmp_path, embedded, no_model_load, content, pattern):
    ckpt = _checkpoint_copy(tmp_path, embedded)
    (ckpt / "config.json").write_text(content)
    with pytest.raises(UserInputError) as info:
        plan_run(compose_cfg(["model=qwen3_4b", f"model.path={ckpt}"]))
    message = str(info.value)
    assert message.startswith(f"model.path: '{ckpt / 'config.json'}' ")
    assert re.search(pattern, message) and "restore the checkpoint's config.json" in message
    assert "tokenizer" not in message and "\n" not in message


def test_loader_names_a_broken_config_json_too(tmp_path, embedded):
    """Callers that load without a plan (``autoquant-sweep apply``) get the same answer."""
    from autoquant_sweep.modeling import load_model_and_tokenizer

    ckpt = _checkpoint_copy(tmp_path, embedded)
    (ckpt / "config.json").write_text("{oops")
    with pytest.raises(UserInputError) as info:
        load_model_and_tokenizer(ckpt, kind="causal_lm", dtype="float32", device="cpu")
    assert str(info.value) == (
        f"model.path: '{ckpt / 'config.json'}' is not valid JSON (line 1, column 2: Expecting property name "
        "enclosed in double quotes); restore the checkpoint's config.json"
    )


# ---- the command line ---------------------------------------------------------------------------------


def test_cli_axis_5_exits_2_with_one_line_and_no_output_dir(tmp_path, embedded):
    user_conf = _user_conf(tmp_path / "conf-root")
    cwd = tmp_path / "run"
    cwd.mkdir()
    result = run_app(["--config-dir", str(user_conf), "quant_granularity=w_axis5", "tracking=off"], cwd=cwd)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1, result.stderr[-3000:]
    assert re.search(
        r"quant_cfg_overrides\['\*weight_quantizer'\]\.axis=5 does not fit the weight .* use one of "
        r"\{-2, -1, 0, 1\}",
        lines[0],
    )
    assert "Loading weights" not in result.stderr + result.stdout
    assert list(cwd.iterdir()) == []
