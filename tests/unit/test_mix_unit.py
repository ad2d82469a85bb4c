"""The pure parts of the mix (mix.py, tracking/mix_run.py): which trials mix, the gain table, the
calibration note, ``--budgets`` (no torch, no ModelOpt)."""

from __future__ import annotations

import pytest

from autoquant_sweep.errors import UserInputError
from autoquant_sweep.mix import (
    KEEP_16,
    Excluded,
    MixPoint,
    MixTrial,
    calibration_algorithm,
    gain_lines,
    gain_table,
    mix_description,
    select_mixable,
)
from autoquant_sweep.tracking.mix_run import parse_budgets


def _trial(label, key="k", cfg=None, algorithm="max", run_id=None):
    return MixTrial({"format_label": label, "scoring_fingerprint": key, "config_fingerprint": cfg or label,
                     "format": {"quant_cfg": [], "algorithm": algorithm}}, run_id=run_id or f"r-{label}")


def _point(budget, score, bits, choice):
    return MixPoint(budget=budget, achieved_effective_bits=bits, satisfied=bits <= budget,
                    predicted_score=score, choice=choice)


def test_the_majority_scoring_fingerprint_mixes_and_the_rest_is_named():
    trials = [_trial("a", "x"), _trial("b", "k"), _trial("c", "k"), _trial("d", "k", cfg="b")]
    mixed, left, key = select_mixable(trials)
    assert key == "k" and [t.label for t in mixed] == ["b", "c"]
    assert [(e.name, e.reason) for e in left] == [
        ("a (run r-a)", "scored on other inputs: scoring fingerprint x, the mix is k"),
        ("d (run r-d)", "the same effective format as b (run r-b)"),
    ]
    assert select_mixable(trials, key="x")[0][0].label == "a"  # an explicit key wins


def test_gain_table_compares_with_the_best_satisfied_single_format_at_each_budget():
    curve = [_point(6.0, 2e-5, 5.9, {"g1": "int4", "g2": "int8"}),
             _point(8.0, 1e-6, 7.9, {"g1": "int8", "g2": KEEP_16})]
    singles = {
        "int4": [_point(6.0, 4e-5, 5.8, {}), _point(8.0, 3e-6, 7.8, {})],
        "int8": [_point(6.0, 1e-7, 8.8, {}), _point(8.0, 2e-6, 7.95, {})],  # does not fit 6 bits
    }
    rows = gain_table(curve, singles)
    assert [(r["best_single"], r["ratio"]) for r in rows] == [("int4", pytest.approx(2.0)),
                                                              ("int8", pytest.approx(2.0))]
    assert rows[0]["mix_counts"] == {"int4": 1, "int8": 1}
    lines = gain_lines(rows, run_budget=8.0)
    assert lines[2].startswith("| 6 | int4, 4.000e-05 (5.800) | 2.000e-05 (5.900; int4 1, int8 1) | 2.00x |")
    assert lines[3].startswith("| 8 (run budget) | int8, 2.000e-06 (7.950)")


def test_an_unsatisfied_mix_or_no_fitting_single_has_no_ratio():
    rows = gain_table([_point(5.0, 1e-5, 5.3, {"g": "int4"})], {"int4": [_point(5.0, 1e-5, 5.3, {})]})
    assert rows[0]["best_single"] is None and rows[0]["ratio"] is None
    assert "none fits" in gain_lines(rows)[2] and "does not fit (5.300 bits)" in gain_lines(rows)[2]


def test_one_calibration_algorithm_and_a_note_naming_the_formats_it_does_not_apply():
    trials = [_trial("int4"), _trial("w4a8", algorithm="awq_lite"), _trial("int8")]
    plain = _point(10.0, 1e-7, 9.9, {"g1": "int4", "g2": "int8", "g3": KEEP_16})
    assert calibration_algorithm(plain, trials) == ("max", {"algorithm": "max", "per_format": {
        "int4": "max", "int8": "max"}, "not_applied": {}})
    only_awq = _point(10.0, 1e-7, 9.9, {"g1": "w4a8"})
    assert calibration_algorithm(only_awq, trials)[0] == "awq_lite"  # one format: its own algorithm
    both = _point(10.0, 1e-7, 9.9, {"g1": "w4a8", "g2": "int8"})
    algorithm, note = calibration_algorithm(both, trials)
    assert algorithm == "max" and note["not_applied"] == {"w4a8": "awq_lite"}


def test_the_description_says_how_many_groups_take_each_format_and_what_was_left_out():
    point = _point(10.0, 1.5e-7, 9.9, {"g1": "int8", "g2": "int8", "g3": KEEP_16})
    text = mix_description(point, [Excluded("fp8 (run r)", "scored on other inputs")], [_trial("int8")])
    assert text.splitlines() == [
        "Mix of 1 formats at 10 bits: int8 2, 16-bit 1 groups; 9.900 effective bits (fits), predicted score "
        "1.5000e-07.",
        "left out: fp8 (run r): scored on other inputs",
    ]


def test_budgets_option_is_checked_with_a_one_line_message():
    assert parse_budgets("6,8") == [6.0, 8.0]
    with pytest.raises(UserInputError, match=r"^--budgets: budgets must be in \(0, 16\], got \[17.0\]"):
        parse_budgets("8,17")
    with pytest.raises(UserInputError, match=r"^--budgets: 'six' is not a comma-separated list"):
        parse_budgets("six")
