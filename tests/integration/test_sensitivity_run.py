"""One real AutoQuant sensitivity run on the embedded tiny models (CPU)."""

from __future__ import annotations

import csv
import json

import pytest

from autoquant_sweep.errors import SensitivityResultError, UserInputError
from autoquant_sweep.pipeline import run
from autoquant_sweep.plan import plan_run
from autoquant_sweep.report import RECIPE_FILES, REPORT_FILES
from autoquant_sweep.scoring import SCORING_FILE
from tests.conftest import CONF

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def default_outcome(tmp_path_factory, embedded):
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("sensitivity", overrides=["tracking=off"])
    return run(cfg, run_dir=tmp_path_factory.mktemp("run"))


def test_default_run_writes_every_report_file(default_outcome):
    folder = default_outcome.report_dir
    assert folder.name == "report"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*REPORT_FILES, "recipe"])
    # with the trial's scoring record, what a mix merges (scoring.py)
    assert sorted(p.name for p in (folder / "recipe").iterdir()) == sorted([*RECIPE_FILES, SCORING_FILE])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"]["name"] == "qwen3_tiny"
    assert manifest["model"]["architecture"] == "Qwen3ForCausalLM"
    assert manifest["dataset"]["size"] == "small" and manifest["dataset"]["num_samples"] == 16
    assert manifest["quantization"]["base_format"] == "INT8_DEFAULT_CFG"
    assert manifest["autoquant"] | {"device": "cpu"} == manifest["autoquant"]
    assert (manifest["autoquant"]["num_calib_steps"], manifest["autoquant"]["num_score_steps"]) == (4, 4)
    assert set(manifest["versions"]) >= {"torch", "nvidia-modelopt", "transformers"}
    # 4 decoder layers x (qkv, o, gate/up, down) groups; lm_head is disabled and not reported
    layers = manifest["per_layer"]
    assert len(layers) == 16
    assert all(layer["score"] > 0 for layer in layers)
    assert not any("lm_head" in m for layer in layers for m in layer["modules"])
    total = sum(layer["score"] for layer in layers)
    assert manifest["objectives"]["total_sensitivity"] == pytest.approx(total, rel=1e-12)
    assert manifest["constrained_result"]["is_satisfied"] is True
    assert manifest["objectives"]["effective_bits"] <= manifest["autoquant"]["effective_bits"] + 1e-9

    with (folder / "per_layer.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and rows[0]["rank"] == "1"
    assert float(rows[0]["score"]) == max(layer["score"] for layer in layers)
    md = (folder / "per_layer.md").read_text()
    assert md.count("| layer group ") == 1 and "INT8_DEFAULT_CFG" in md
    assert (folder / "per_layer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scores_equal_a_direct_modelopt_call(default_outcome):
    """Same checkpoint, batches and step counts through plain ModelOpt give the very same scores."""
    import copy

    import modelopt.torch.quantization as mtq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plan = default_outcome.plan
    tokenizer = AutoTokenizer.from_pretrained(plan.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(plan.checkpoint, dtype=torch.float32).eval()
    batches = []
    for start in range(0, len(plan.captions), 4):
        enc = tokenizer(
            plan.captions[start : start + 4],
            padding="max_length",
            truncation=True,
            max_length=32,
            return_tensors="pt",
        )
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        batches.append({**enc, "labels": labels})
    torch.manual_seed(0)
    _, state = mtq.auto_quantize(
        model,
        constraints={"effective_bits": 10.0},  # the default budget (conf/autoquant/default.yaml)
        quantization_formats=[copy.deepcopy(mtq.INT8_DEFAULT_CFG)],
        data_loader=batches,
        forward_step=lambda m, b: m(**b),
        loss_func=lambda out, b: out.loss,
        disabled_layers=["*lm_head*"],
        num_calib_steps=4,
        num_score_steps=4,
    )
    direct = {
        name.removesuffix(".quant_recipe"): stats["scores"][0]
        for name, stats in state["candidate_stats"].items()
        if len(stats["formats"]) > 1
    }
    ours = {layer["group"]: layer["score"] for layer in default_outcome.manifest["per_layer"]}
    assert ours == direct
    assert default_outcome.manifest["constrained_result"]["score"] == float(state["best"]["score"])


def test_rerun_in_same_process_gives_identical_scores(compose_cfg, tmp_path, default_outcome):
    """The process keeps a pristine model; a second run must not see the first run's quantizers."""
    again = run(compose_cfg(), run_dir=tmp_path)
    assert again.manifest["per_layer"] == default_outcome.manifest["per_layer"]


def test_qwen3_vl_scores_the_language_model_only(compose_cfg, tmp_path, embedded):
    outcome = run(compose_cfg(["model=qwen3_vl_tiny"]), run_dir=tmp_path)
    manifest = outcome.manifest
    assert manifest["model"]["architecture"] == "Qwen3VLForConditionalGeneration"
    modules = [m for layer in manifest["per_layer"] for m in layer["modules"]]
    assert len(manifest["per_layer"]) == 16
    assert all(".language_model." in m for m in modules)
    assert not any("visual" in m for m in modules)
    assert "visual" not in (outcome.report_dir / "per_layer.md").read_text()


LEGACY_DEFAULT_OFF = {  # facts file item 2: dict-form "default" appends a trailing disable-all rule
    "quant_cfg": {
        "*weight_quantizer": {"num_bits": 8, "axis": 0},
        "*input_quantizer": {"num_bits": 8, "axis": None},
        "default": {"enable": False},
    },
    "algorithm": "max",
}
ALL_OFF_RULES = {"quant_cfg": [{"quantizer_name": "*", "enable": False}], "algorithm": "max"}


@pytest.mark.parametrize(
    ("quant_format", "message"),
    [
        (LEGACY_DEFAULT_OFF, r"ALL_OFF: every per-layer score is 0\.0, so nothing was quantized"),
        (ALL_OFF_RULES, r"ALL_OFF: AutoQuant scored no layer group"),
    ],
    ids=["legacy-default-trap", "all-rules-off"],
)
def test_configs_that_quantize_nothing_are_errors(embedded, quant_format, message):
    """ModelOpt reports 0.0 for every layer (or nothing at all) and raises nothing: we must refuse."""
    from autoquant_sweep.data import read_captions, tokenize_batches
    from autoquant_sweep.modeling import load_model_and_tokenizer
    from autoquant_sweep.sensitivity import run_autoquant

    loaded = load_model_and_tokenizer(
        embedded.qwen3_tiny_dir, kind="causal_lm", dtype="float32", device="cpu"
    )
    batches = tokenize_batches(loaded.tokenizer, read_captions(embedded.caption_file("small"), 8), 32, 4)
    with pytest.raises(SensitivityResultError, match=message):
        run_autoquant(
            loaded.model,
            batches,
            quant_format,
            format_label="ALL_OFF",
            effective_bits=16.0,
            num_calib_steps=2,
            num_score_steps=2,
        )


def test_infeasible_budget_names_the_minimum(compose_cfg, tmp_path):
    """Refused by the plan (from config.json; the number is ModelOpt's, see test_plan_checks)."""
    with pytest.raises(
        UserInputError,
        match=r"^autoquant\.effective_bits: 8\.5 is below the minimum achievable effective bits 8\.8000 of "
        r"qwen3_tiny with quant_pair=wint8_aint8 \(INT8_DEFAULT_CFG, 8 bits per weight;",
    ):
        plan_run(compose_cfg(["autoquant.effective_bits=8.5"]))
    assert not (tmp_path / "report").exists()
