"""What a person reads of a sweep, without MLflow or a model: summary table, heatmap cells, descriptions,
run names, params of overlays that took effect, log10 metrics, the trial <-> run link (by job number)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from autoquant_sweep.search.study_report import (
    TRIAL_JOB_ATTR,
    TRIAL_PARENT_ATTR,
    link_trials_to_runs,
    stamp_trial_job,
)
from autoquant_sweep.tracking.run_logging import (
    JOB_NUM_TAG,
    effective_override_params,
    failure_description,
    readable_metrics,
    run_name,
    short_granularity,
)
from autoquant_sweep.tracking.summary import (
    NOT_TRIED,
    REFUSED,
    csv_text,
    format_value,
    heatmap_cells,
    markdown_text,
    outcome,
    parent_description,
)

NAN = math.nan


def _row(rid: str, pair: str, gran: str, value: float, status: str = "FINISHED", **extra) -> dict:
    row = {
        "run_id": rid * 8,
        "run_name": f"{pair} {gran}",
        "quant_pair": pair,
        "quant_granularity": gran,
        "dataset_size": "small",
        "total_sensitivity": value,
        "constrained_score": value,
        "effective_bits": 10.0 if value == value else NAN,
        "status": status,
        "cache_hit": "false",
        "failure_reason": "",
        "overlay_status": "ok",
    }
    row.update(extra)
    return row


ROWS = [
    _row("a", "wint8_aint8", "default", 8.73e-6),
    _row("b", "wint8_aint8", "w_group64", 2.473e-7),
    _row("c", "wint4_aint8", "w_group64", 1.2e-6, cache_hit="true"),
    _row(
        "d",
        "wint4_afp16",
        "a_per_token_dynamic",
        5.0e-6,
        overlay_status="noop",
        canonical_granularity="default",
    ),
    _row(
        "e",
        "wfp4_afp8",
        "w_per_out_channel",
        NAN,
        status="FAILED",
        failure_kind="refused",
        failure_reason="fp4 | no axis",
    ),
]


def test_summary_table_is_sorted_by_the_objective_and_formatted_per_column() -> None:
    md = markdown_text(ROWS, "total_sensitivity", "t")
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("|") and line.strip("| ").startswith("#"))
    assert "| quant_granularity " in header and "| granularity " not in header
    assert lines[lines.index(header) + 1].startswith("|--")  # the alignment row follows the header
    body = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines
            if line.startswith("|") and line.strip("| ")[:1].isdigit()]
    assert [cells[2] for cells in body] == [
        "w_group64",
        "w_group64",
        "a_per_token_dynamic",
        "default",
        "w_per_out_channel",
    ]  # best first
    assert body[0][4:7] == ["2.47e-07", "1.0", "2.47e-07"] and "10.00" in body[0] and "e+01" not in md
    assert body[3][5] == "35.3"  # 8.73e-6 is 35x the best
    assert "no-op (= default)" in body[2] and "cache hit" in body[1] and "refused" in body[4]
    assert "fp4 \\| no axis" in body[4][-1]
    csv_lines = csv_text(ROWS, "total_sensitivity").splitlines()
    assert csv_lines[0].startswith("run_id,quant_pair,quant_granularity,")
    assert csv_lines[1].startswith("bbbbbbbb,") and "2.473e-07" in csv_lines[1]
    assert len({len(line) for line in lines if line.startswith("|")}) == 1  # columns padded to one width


def test_number_formats() -> None:
    assert format_value("total_sensitivity", 2.473e-07) == "2.47e-07"
    assert format_value("effective_bits", 10.0) == "10.00"
    assert format_value("ppl_increase_pct", 1.234) == "+1.23 %"
    assert format_value("recipe_satisfied", 1.0) == "yes"
    assert format_value("total_sensitivity", NAN) == ""


def test_heatmap_cells_tell_refused_failed_not_tried_and_noop_apart() -> None:
    rows = [*ROWS, _row("f", "wint8_aint8", "w_per_tensor", NAN, status="FAILED", failure_kind="error")]
    _pairs, grans, cells = heatmap_cells(rows, "total_sensitivity")
    assert grans[0] == "default"
    assert cells[("wfp4_afp8", "w_per_out_channel")] == (REFUSED, False)
    assert cells[("wint8_aint8", "w_per_tensor")] == ("failed", False)
    assert cells[("wfp4_afp8", "default")] == (NOT_TRIED, False)
    assert cells[("wint4_afp16", "a_per_token_dynamic")] == (5.0e-6, True)
    assert cells[("wint8_aint8", "w_group64")] == (2.473e-7, False)


def test_outcome_of_a_run() -> None:
    assert outcome(ROWS[0]) == "computed"
    assert outcome(ROWS[2]) == "cache hit"
    assert outcome(ROWS[3]) == "no-op (= default)"
    assert outcome(ROWS[4]) == "refused"
    assert outcome({"status": "FAILED", "failure_kind": "error"}) == "failed"


def test_parent_description_names_the_winner_first() -> None:
    text = parent_description(
        ROWS,
        "total_sensitivity",
        experiment_id="3",
        parent_tags={
            "best_run_id": "b" * 8,
            "registered_model": "autoquant-m-total_sensitivity",
            "registered_version": "2",
            "best_alias_moved": "true",
        },
        best_run=SimpleNamespace(
            data=SimpleNamespace(
                metrics={"recipe_effective_bits": 9.8, "recipe_satisfied": 1.0, "ppl_increase_pct": 0.5},
                tags={"effective_config_summary": "weight: num_bits=8 axis=0"},
            )
        ),
        budget=10.0,
        command="python experiments/sensitivity.py -m",
    )
    first = text.splitlines()[0]
    assert first.startswith("Best: wint8_aint8 / w_group64 on small: total_sensitivity = 2.473e-07")
    assert "(log10 -6.61)" in first and "35x lower than the worst" in first
    assert "(#/experiments/3/runs/bbbbbbbb)" in text and "v2; alias `best` now points here" in text
    assert "9.80 effective bits (budget met)" in text and "perplexity +0.50 %" in text
    assert "5 child runs" in text and "1 refused" in text
    assert "`python experiments/sensitivity.py -m`" in text
    nothing = parent_description([ROWS[4]], "total_sensitivity", experiment_id="3", parent_tags={})
    assert nothing.startswith("No finished run") and "fp4 | no axis" in nothing


def test_override_params_only_where_the_overlay_took_effect() -> None:
    weight, inp = "*weight_quantizer", "*input_quantizer"
    overrides = {weight: {"axis": 0}, inp: {"type": "dynamic", "block_sizes": {-1: None}}}
    noop = SimpleNamespace(changed_patterns=(), noop_patterns=(inp,))
    partial = SimpleNamespace(changed_patterns=(weight,), noop_patterns=(inp,))
    both = SimpleNamespace(changed_patterns=(weight, inp), noop_patterns=())
    assert effective_override_params(overrides, noop) == {"override.status": "noop"}
    assert effective_override_params(overrides, partial) == {
        "override.weight.axis": "0",
        "override.ignored": "input (quantizer disabled)",
        "override.status": "partial",
    }
    assert effective_override_params(overrides, both)["override.input.type"] == "dynamic"
    assert effective_override_params({}, None) == {"override.status": "none"}
    refused = effective_override_params(overrides, None, "refused")
    assert refused["override.status"] == "refused" and refused["override.input.type"] == "dynamic"


def test_log10_metrics_and_run_names() -> None:
    metrics = [
        ("total_sensitivity", 2.473e-7, 0),
        ("layer_score", 1e-8, 3),
        ("layer_score", 0.0, 4),
        ("effective_bits", 10.0, 0),
    ]
    assert readable_metrics(metrics) == [
        ("log10_total_sensitivity", -6.607, 0),
        ("log10_layer_score", -8.0, 3),
    ]
    c = {
        "quant_pair": {"name": "wint4_aint8"},
        "quant_granularity": {"name": "w_group64"},
        "dataset": {"size": "small"},
    }
    assert run_name(c) == "wint4_aint8 w-g64"
    assert run_name(c, "cache hit") == "wint4_aint8 w-g64 [cache hit]"
    assert run_name({**c, "dataset": {"size": "large"}}) == "wint4_aint8 w-g64 large"
    shorts = [
        short_granularity(g)
        for g in (
            "w_per_tensor",
            "w_per_out_channel",
            "w_per_in_channel",
            "a_per_token_dynamic",
            "a_per_tensor_static",
        )
    ]
    assert len({s[:5] for s in shorts}) == len(shorts)  # distinct within a few characters
    assert short_granularity("my_custom") == "my_custom"


def test_failure_description_keeps_the_whole_reason() -> None:
    c = {"quant_pair": {"name": "wfp4_afp8"}, "quant_granularity": {"name": "w_per_out_channel"}}
    reason = "format X + granularity Y: fp4 takes no axis; ModelOpt fails with 'bad'" + "; more" * 200
    text = failure_description(c, reason, "refused")
    assert text.startswith("REFUSED BEFORE ANY MODEL WAS LOADED: wfp4_afp8 / w_per_out_channel")
    assert "- ModelOpt fails with 'bad'" in text and text.count("- more") == 200
    assert "failure/plan.json" in text and "autoquant-sweep validate" in text


def _run(rid: str, parent: str, job: str | None) -> SimpleNamespace:
    tags = {"mlflow.parentRunId": parent, **({JOB_NUM_TAG: job} if job is not None else {})}
    return SimpleNamespace(info=SimpleNamespace(run_id=rid), data=SimpleNamespace(tags=tags))


def test_trials_link_to_the_run_of_their_job_under_their_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real Optuna study asked by two sweeps: each trial is stamped with its sweep's parent run and the
    job number it runs as (0, 1, ... per sweep), and links to the run with the same two."""
    import optuna

    from autoquant_sweep.tracking.store import PARENT_RUN_ENV

    study = optuna.create_study()
    for parent, asks in (("parent-1", 2), ("parent-2", 2)):
        monkeypatch.setenv(PARENT_RUN_ENV, parent)
        for _ in range(asks):
            stamp_trial_job(study.ask())
    monkeypatch.delenv(PARENT_RUN_ENV)
    stamp_trial_job(study.ask())  # an untracked sweep: no stamp, no link
    trials = study.get_trials(deepcopy=False)
    assert [(t.user_attrs.get(TRIAL_PARENT_ATTR), t.user_attrs.get(TRIAL_JOB_ATTR)) for t in trials] == [
        ("parent-1", 0), ("parent-1", 1), ("parent-2", 0), ("parent-2", 1), (None, None)]
    runs = [_run("r-2-1", "parent-2", "1"), _run("r-1-0", "parent-1", "0"), _run("r-2-0", "parent-2", "0"),
            _run("single", "parent-1", None)]
    linked = link_trials_to_runs(trials, runs)
    assert {n: r.info.run_id for n, r in linked.items()} == {0: "r-1-0", 2: "r-2-0", 3: "r-2-1"}


@pytest.mark.parametrize("value", [0.0, -1.0, NAN])
def test_no_log10_for_values_without_one(value: float) -> None:
    assert readable_metrics([("total_sensitivity", value, 0)]) == []
