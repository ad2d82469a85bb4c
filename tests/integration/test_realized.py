"""What ModelOpt 0.47 really instantiates for every pair x granularity that runs on CPU (facts 31).

The table test quantizes the embedded tiny Qwen3 with each effective format (``mtq.quantize`` on one
calibration batch: the quantizers a trial's ``auto_quantize`` inserts, calibrated) and reads the
``TensorQuantizer`` modules back: every one must be what the format declares, and what the granularity's
name promises. The docstring form of per-token inputs is shown to be static per (batch, position), which
is why it is refused before load; the quantizer-level form evaluates at any batch size.
"""

from __future__ import annotations

import copy
import json
import math

import pytest

from autoquant_sweep.config.groups import load_group
from autoquant_sweep.quant.capability import check_combination
from autoquant_sweep.quant.formats import resolve_format
from autoquant_sweep.quant.overlay import INPUT, apply_overlay
from autoquant_sweep.quant.realized import (
    RealizedGranularityError,
    check_realized,
    declared_kinds,
    realize,
)
from tests.conftest import CONF

pytestmark = pytest.mark.integration

PAIRS = load_group("quant_pair", CONF)
GRANULARITIES = load_group("quant_granularity", CONF)


@pytest.fixture(scope="module")
def tiny(embedded):
    from autoquant_sweep import data as data_mod
    from autoquant_sweep.modeling import load_model_and_tokenizer

    loaded = load_model_and_tokenizer(embedded.qwen3_tiny_dir, kind="causal_lm", dtype="float32",
                                      device="cpu", trust_remote_code=False)
    captions = data_mod.read_captions(embedded.caption_file("small"), 16)
    calib = data_mod.tokenize_batches(loaded.tokenizer, captions, 32, 4)
    larger = data_mod.tokenize_batches(loaded.tokenizer, captions, 32, 8)
    return loaded.model, calib, larger


def _quantized(model, fmt, batches):
    import modelopt.torch.quantization as mtq

    copy_ = copy.deepcopy(model)
    mtq.quantize(copy_, copy.deepcopy(fmt), forward_loop=lambda m: [m(**b) for b in batches])
    return copy_


def test_every_cpu_runnable_combination_realizes_what_its_name_promises(tiny):
    from autoquant_sweep.quant.granularity_docs import REALIZED_PATH, measure_realized

    model, calib, _ = tiny
    rows = measure_realized(model, calib[0])
    assert len(rows) == 61  # 7 CPU pairs x 9 granularities, less the 2 refused (AWQ + per-token inputs)
    assert [(r["pair"], r["granularity"], r["mismatch"]) for r in rows if r["mismatch"]] == []
    promises = {g["name"]: g["realizes"] for g in GRANULARITIES}
    for row in rows:
        for role, promised in promises[row["granularity"]].items():
            if row["declared"][role] != "disabled":  # the role is enabled in this pair: the promise holds
                assert row["realized"][role].split("+")[0] == promised, (row["granularity"], role)
    table = {(r["pair"], r["granularity"]): (r["realized"]["weight"], r["realized"]["input"]) for r in rows}
    assert table[("wint8_aint8", "a_per_token_dynamic")] == ("per_out_channel", "per_token_dynamic")
    assert table[("wint4_aint8", "recipe_match_channel_token")] == ("per_out_channel", "per_token_dynamic")
    assert table[("wint4_afp16", "default")] == ("group128", "disabled")
    assert table[("wint8_afp16", "w_per_in_channel")] == ("per_in_channel", "disabled")
    assert table[("wint4_afp8", "w_group64")] == ("group64+per_tensor", "per_tensor_static")
    assert table[("wfp8_afp8", "default")] == ("per_tensor", "per_tensor_static")
    # the table in docs/granularity.md is this measurement (a ModelOpt pin move that changes it fails here)
    assert json.loads(REALIZED_PATH.read_text(encoding="utf-8")) == rows


def test_per_token_dynamic_inputs_are_dynamic_and_evaluate_at_another_batch_size(tiny):
    from autoquant_sweep.evaluation import MAX_EVAL_BATCH, eval_batch_size, eval_loss

    model, calib, larger = tiny
    fmt = apply_overlay(resolve_format("INT8_DEFAULT_CFG"),
                        {INPUT: {"type": "dynamic", "axis": None, "block_sizes": {-1: None}}}).format
    quantized = _quantized(model, fmt, calib)
    inputs = [q for q in realize(quantized) if q.role == "input"]
    assert inputs
    assert all(q.dynamic and q.amax_shape is None and q.kind == "per_token_dynamic" for q in inputs)
    assert all(tuple(q.axis) == (0, 1) for q in inputs)  # one scale per (batch, position), at run time
    assert eval_batch_size(quantized, 4) == MAX_EVAL_BATCH  # no amax pins the held-out batch size
    loss_8 = eval_loss(quantized, larger)  # calibrated at batch 4, evaluated at batch 8
    assert math.isfinite(loss_8)
    assert abs(loss_8 - eval_loss(model, larger)) < 0.01  # per-token INT8 inputs barely hurt


def test_the_docstring_form_is_static_per_position_and_the_check_says_so(tiny):
    """``block_sizes: {-1: None, "type": "dynamic"}`` (ModelOpt's docstring form) on INT8 inputs: ModelOpt
    0.47 makes it a static quantizer whose amax has the calibration batch's shape (pins the private
    ``_dynamic`` read in ``quant.realized._is_dynamic`` to nvidia-modelopt 0.47)."""
    from autoquant_sweep.evaluation import MAX_EVAL_BATCH, eval_batch_size, eval_loss

    model, calib, larger = tiny
    fmt = apply_overlay(resolve_format("INT8_DEFAULT_CFG"),
                        {INPUT: {"block_sizes": {-1: None, "type": "dynamic"}}}).format
    declared = declared_kinds(fmt)
    assert declared["input"] == ["per_token_dynamic"]  # what the docstring promises
    quantized = _quantized(model, fmt, calib)
    inputs = [q for q in realize(quantized) if q.role == "input"]
    assert {q.kind for q in inputs} == {"per_position_static"}
    assert {q.amax_shape for q in inputs} == {(4, 32, 1)}  # fitted to the calibration batch
    assert eval_batch_size(quantized, 4) == 4 and eval_batch_size(quantized, 2) == MAX_EVAL_BATCH
    expected = r"declares input per_token_dynamic but ModelOpt instantiated per_position_static .*\(4, 32, 1"
    with pytest.raises(RealizedGranularityError, match=expected):
        check_realized(declared, realize(quantized), where="wint8_aint8 x docstring form")
    with pytest.raises(RuntimeError, match=r"size of tensor a \(8\) must match the size of tensor b \(4\)"):
        eval_loss(quantized, larger)
    # ... and it never gets that far: the capability rule refuses it before any model is loaded
    verdict = check_combination(resolve_format("INT8_DEFAULT_CFG"),
                                {INPUT: {"block_sizes": {-1: None, "type": "dynamic"}}}, cuda_available=False)
    assert verdict.rule_ids == ("block-type-dynamic-per-token",)


def test_a_tracked_per_token_trial_records_the_realized_granularity(compose_cfg, tmp_path, embedded):
    from mlflow import MlflowClient

    from autoquant_sweep.pipeline import run_job

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_job(compose_cfg(["quant_pair=wint8_aint8", "quant_granularity=a_per_token_dynamic",
                               "tracking=local", f"tracking.tracking_uri={uri}"]), run_dir=tmp_path / "run")
    manifest = outcome.manifest
    assert manifest["realized"]["weight"] == "per_out_channel"
    assert manifest["realized"]["input"] == "per_token_dynamic"
    assert manifest["realized"]["source"] == "auto_quantize model"
    assert manifest["quantization"]["declared"] == {"weight": ["per_out_channel"],
                                                    "input": ["per_token_dynamic"]}
    assert manifest["seconds"]["realized_check"] < manifest["seconds"]["autoquant"]
    # dynamic inputs: the held-out split is evaluated in larger batches than calibration's 4
    assert manifest["evaluation"]["batch_size"] > manifest["autoquant"]["batch_size"]
    run_ = MlflowClient(tracking_uri=uri, registry_uri=uri).get_run(outcome.run_id)
    assert run_.data.params["realized.weight"] == "per_out_channel"
    assert run_.data.params["realized.input"] == "per_token_dynamic"


def test_an_old_form_overlay_is_refused_in_the_plan_with_the_remedy(compose_cfg, tmp_path):
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.errors import CapabilityRefusedError
    from autoquant_sweep.plan import plan_run

    user_conf = tmp_path / "conf" / "quant_granularity"
    user_conf.mkdir(parents=True)
    (user_conf / "old_token.yaml").write_text(
        "name: old_token\nquant_cfg_overrides:\n  '*input_quantizer':\n"
        "    block_sizes: {-1: null, type: dynamic}\n"
    )
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("sensitivity", overrides=[
            "tracking=off", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "quant_pair=wint8_aint8",
            "quant_granularity=old_token"])
    expected = r"static quantizer per \(batch, position\).*quantizer-level type: dynamic"
    with pytest.raises(CapabilityRefusedError, match=expected) as info:
        plan_run(cfg)
    assert "\n" not in str(info.value)


def test_no_cached_result_of_the_old_form_is_reused(compose_cfg, monkeypatch):
    """The run fingerprint of a per-token trial differs from the one the previous release computed for the
    same command (docstring form, result schema 2), so its cached static-per-position result never hits."""
    from autoquant_sweep import fingerprints
    from autoquant_sweep.plan import plan_run

    plan = plan_run(compose_cfg(["quant_pair=wint8_aint8", "quant_granularity=a_per_token_dynamic"]))
    inputs = [r for r in plan.effective_format["quant_cfg"] if r["quantizer_name"] == INPUT and r.get("cfg")]
    # (effective_bits: the storage cost model's per-entry cost, 16 for inputs: quant/cost.py)
    assert inputs[-1]["cfg"] == {"num_bits": 8, "axis": None, "block_sizes": {-1: None}, "type": "dynamic",
                                 "effective_bits": 16.0}
    old_format = copy.deepcopy(plan.effective_format)
    old_input = next(r for r in reversed(old_format["quant_cfg"])
                     if r["quantizer_name"] == INPUT and r.get("cfg"))
    old_input["cfg"] = {"num_bits": 8, "block_sizes": {-1: None, "type": "dynamic"}}  # what 5dc5297 wrote

    def fingerprint(fmt):
        return fingerprints.run_fingerprint(
            plan.cfg, checkpoint_identity=plan.checkpoint_identity, captions=plan.captions,
            batch_plan=plan.batch_plan, device=plan.device, effective_format=fmt, eval_split=plan.eval_split,
            versions=plan.versions)

    assert fingerprint(plan.effective_format) == plan.fingerprint
    monkeypatch.setattr(fingerprints, "RESULT_SCHEMA", 2)
    assert fingerprint(old_format) != plan.fingerprint
    assert fingerprint(plan.effective_format) != plan.fingerprint  # the schema bump alone changes it too
