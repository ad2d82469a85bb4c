"""The per-layer mix over several formats' scoring records (tiny Qwen3, CPU, real ModelOpt; no mocks).

One ``mtq.auto_quantize`` call per format (as trials do) plus one joint call over two formats of
distinct bits, module scope.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest

pytestmark = pytest.mark.integration

BUDGETS = (5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0)
FORMATS = {  # label -> overrides
    "wint4_afp16+default": ["quant_pair=wint4_afp16"],
    "wint4_afp16+w_group64": ["quant_pair=wint4_afp16", "quant_granularity=w_group64"],
    "wint8_afp16+default": ["quant_pair=wint8_afp16"],
    "wfp8_afp16+default": ["quant_pair=wfp8_afp16"],
}
STEPS = 2


def _plan(overrides):
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.config import register_configs
    from autoquant_sweep.plan import plan_run
    from tests.conftest import CONF

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return plan_run(compose("sensitivity", overrides=["tracking=off", *overrides]))


def _trial(plan, label, run_id):
    import torch

    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.mix import MixTrial
    from autoquant_sweep.scoring import scoring_record
    from autoquant_sweep.sensitivity import run_autoquant

    loaded, model = MODEL_CACHE.model(plan)
    torch.manual_seed(0)
    result = run_autoquant(model, MODEL_CACHE.batches(plan, loaded), copy.deepcopy(plan.effective_format),
                           format_label=label, effective_bits=10.0, num_calib_steps=STEPS,
                           num_score_steps=STEPS)
    pair, gran = label.split("+")
    record = scoring_record(result.search_state, plan.effective_format, format_label=label, quant_pair=pair,
                            quant_granularity=gran, scoring_fingerprint=plan.scoring_fingerprint,
                            run_fingerprint=plan.fingerprint)
    return MixTrial(json.loads(json.dumps(record)), run_id=run_id)  # through JSON, as read back


@pytest.fixture(scope="module")
def study(embedded):
    plans = {label: _plan(o) for label, o in FORMATS.items()}
    trials = {label: _trial(plan, label, f"run{i}") for i, (label, plan) in enumerate(plans.items())}
    return plans, trials


@pytest.fixture(scope="module")
def joint(study):
    """One ``mtq.auto_quantize`` call over INT4 block-128 and INT8 (distinct bits)."""
    import modelopt.torch.quantization as mtq
    import torch

    from autoquant_sweep.compute import MODEL_CACHE

    plans, _ = study
    int4, int8 = plans["wint4_afp16+default"], plans["wint8_afp16+default"]
    loaded, model = MODEL_CACHE.model(int4)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, state = mtq.auto_quantize(
            model, constraints={"effective_bits": 10.0},
            quantization_formats=[copy.deepcopy(int4.effective_format), copy.deepcopy(int8.effective_format)],
            data_loader=MODEL_CACHE.batches(int4, loaded), forward_step=lambda m, b: m(**b),
            loss_func=lambda out, b: out.loss, disabled_layers=list(int4.cfg["model"]["disabled_layers"]),
            num_calib_steps=STEPS, num_score_steps=STEPS, verbose=False, method="gradient")
    return state


def test_two_formats_of_distinct_bits_mix_to_the_joint_calls_config(study, joint):
    import modelopt.torch.quantization as mtq

    from autoquant_sweep.mix import mix_curve, rescaled

    _, trials = study
    pair = [trials["wint4_afp16+default"], trials["wint8_afp16+default"]]
    raw = mix_curve(pair, BUDGETS, rescale=False)  # ModelOpt's own solve, as in the joint call
    precise = mix_curve(pair, BUDGETS)  # the mix's answer: solved on rescaled scores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for point, exact in zip(raw, precise, strict=True):
            constraint = {"effective_bits": point.budget}
            assert point.quant_cfg == mtq.get_auto_quantize_config(joint, constraint)
            # the joint call's state with its scores scaled the same way gives the mix's answer
            assert exact.quant_cfg == mtq.get_auto_quantize_config(rescaled(joint), constraint)
            if point.satisfied:  # and the rescaled solve finds the same recipe or a better one
                assert exact.satisfied
                assert exact.predicted_score <= point.predicted_score * (1 + 1e-9)
    used = {label for p in precise for label in p.choice.values()}
    assert {"wint4_afp16+default", "wint8_afp16+default"} <= used  # a real mix at some budget


def test_int8_and_fp8_each_keep_their_own_trials_score(study):
    from autoquant_sweep.mix import merged_state
    from autoquant_sweep.scoring import candidate

    _, trials = study
    int8, fp8 = trials["wint8_afp16+default"], trials["wfp8_afp16+default"]
    state = merged_state([int8, fp8])
    sig = {t.label: candidate(t.record["format"], t.label).checkpoint_signature for t in (int8, fp8)}
    differ = 0
    for name, stats in state["candidate_stats"].items():
        own = {t.label: t.record["groups"][name]["score"] for t in (int8, fp8)}
        if own[int8.label] is None:
            continue
        by_sig = dict(zip([f.checkpoint_signature for f in stats["formats"]], stats["scores"], strict=True))
        assert by_sig[sig[int8.label]] == own[int8.label]
        assert by_sig[sig[fp8.label]] == own[fp8.label]  # not clamped to the other candidate's
        differ += own[int8.label] != own[fp8.label]
    assert differ > 0


def test_the_mix_is_never_worse_than_a_satisfied_single_format_recipe(study):
    from autoquant_sweep.mix import gain_table, mix_curve, single_curves
    from autoquant_sweep.recipe import quantized_modules

    _, trials = study
    mixed = list(trials.values())
    curve = mix_curve(mixed, BUDGETS)
    singles = single_curves(mixed, BUDGETS)
    for i, point in enumerate(curve):
        for label, recipes in singles.items():
            if recipes[i].satisfied:
                assert point.satisfied
                assert point.predicted_score <= recipes[i].predicted_score * (1 + 1e-9), (label, point.budget)
        # the per-group choice read off the solver is what the public config quantizes
        on = quantized_modules(point.quant_cfg)
        chosen = {g for g, label in point.choice.items() if label != "16-bit"}
        groups = mixed[0].record["groups"]
        assert chosen == {name.removesuffix(".quant_recipe") for name, g in groups.items()
                          if any(m in on for m in g["module_names"])}
    rows = gain_table(curve, singles)
    assert [r["budget"] for r in rows] == list(BUDGETS)
    assert all(r["ratio"] is None or r["ratio"] >= 1 - 1e-9 for r in rows)
    assert any(r["ratio"] is not None and r["ratio"] > 1 for r in rows)  # the mix gains somewhere


def test_a_trial_scored_on_other_inputs_is_left_out_by_name(study):
    from autoquant_sweep.mix import select_mixable

    _, trials = study
    other_plan = _plan(["quant_pair=wint4_afp16", "quant_granularity=w_group64",
                        "autoquant.cost_model=modelopt"])
    other = _trial(other_plan, "wint4_afp16+w_group64", "run-other")
    mixed, excluded, key = select_mixable([*trials.values(), other])
    assert key == trials["wint4_afp16+default"].record["scoring_fingerprint"]
    assert [t.label for t in mixed] == list(FORMATS)
    assert [e.name for e in excluded] == ["wint4_afp16+w_group64 (run run-other)"]
    assert excluded[0].reason.startswith(f"scored on other inputs: scoring fingerprint "
                                         f"{other_plan.scoring_fingerprint}")
    # the same format twice (a cache hit, another sweep of the study): once in the mix, the other named
    again = copy.deepcopy(trials["wint8_afp16+default"])
    again.run_id = "run-again"
    mixed, excluded, _ = select_mixable([*trials.values(), again])
    assert len(mixed) == len(FORMATS)
    assert excluded[0].reason == "the same effective format as wint8_afp16+default (run run2)"
