"""Cost of the mix next to one trial's, in one process (tiny model, CPU).

For each of the formats below, once: one ``mtq.auto_quantize`` call (deep copy of the pristine model) and
its scoring record (``scoring.scoring_record``, through JSON as a later process reads it). Then, over
every format's record, ``--repeat`` rounds of:

* merge: the records into one ModelOpt search state (``mix.merged_state``);
* solve: the mix at every budget of the grid (``mix.mix_curve``, rescaled scores; only the run budget
  builds its ``mtq.quantize`` config), reported as the total and per budget;
* measure: ``mtq.quantize`` of a fresh copy with the mixed recipe (calibration) and the held-out
  evaluation (``mix.measure_mix``).

Reported: medians (the first round warms up and is dropped), the trial's ``auto_quantize`` seconds for
comparison, and the mix's whole cost over one trial's.

    python benchmarks/bench_mix.py [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time

from bench_common import parse_repeat_args, plan_for, write_json

CONFIGS = (("wint4_afp16", "default"), ("wint4_afp16", "w_group64"), ("wint8_afp16", "default"),
           ("wfp8_afp16", "default"))
BUDGET = 8.0  # the mix's run budget (below what INT8 alone reaches)
SCORE_BUDGET = 10.0  # each trial's auto_quantize budget (every format reaches it)


def main() -> int:
    args = parse_repeat_args(__doc__)

    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.mix import (
        MixTrial,
        gain_lines,
        gain_table,
        measure_mix,
        merged_state,
        mix_curve,
        mix_quant_cfg,
        single_curves,
    )
    from autoquant_sweep.recipe import default_budget_grid
    from autoquant_sweep.scoring import scoring_record
    from autoquant_sweep.sensitivity import run_autoquant

    trials, trial_s, plan = [], [], None
    for pair, gran in CONFIGS:
        plan = plan_for(pair, gran, f"autoquant.effective_bits={SCORE_BUDGET}")
        loaded, model = MODEL_CACHE.model(plan)
        t0 = time.perf_counter()
        result = run_autoquant(model, MODEL_CACHE.batches(plan, loaded), copy.deepcopy(plan.effective_format),
                               format_label=pair, effective_bits=SCORE_BUDGET,
                               num_calib_steps=plan.batch_plan.num_calib_steps,
                               num_score_steps=plan.batch_plan.num_score_steps)
        trial_s.append(time.perf_counter() - t0)
        record = scoring_record(result.search_state, plan.effective_format, format_label=f"{pair}+{gran}",
                                quant_pair=pair, quant_granularity=gran,
                                scoring_fingerprint=plan.scoring_fingerprint,
                                run_fingerprint=plan.fingerprint)
        trials.append(MixTrial(json.loads(json.dumps(record))))
        del model, result
    grid = default_budget_grid(min(t.record["format_bits"] for t in trials), BUDGET)
    times: dict[str, list[float]] = {"merge": [], "solve_curve": [], "calibrate": [], "evaluate": []}
    for _ in range(args.repeat + 1):
        t0 = time.perf_counter()
        merged_state(trials)
        t1 = time.perf_counter()
        curve = mix_curve(trials, grid, run_budget=BUDGET)
        t2 = time.perf_counter()
        point = next(p for p in curve if abs(p.budget - BUDGET) < 1e-9)
        quant_cfg, _ = mix_quant_cfg(point, trials)
        evaluation = measure_mix(quant_cfg, plan)
        t3 = time.perf_counter()
        calibrate = evaluation["calibration_seconds"]
        for key, value in (("merge", t1 - t0), ("solve_curve", t2 - t1), ("calibrate", calibrate),
                           ("evaluate", t3 - t2 - calibrate)):
            times[key].append(value)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    one_trial = statistics.median(trial_s)
    mix_total = sum(med.values())
    rows = gain_table(curve, single_curves(trials, grid))
    summary = {
        "formats": [t.label for t in trials], "budgets": len(grid),
        "trial_autoquant_s_median": round(one_trial, 4),
        **{f"mix_{k}_s": round(v, 4) for k, v in med.items()},
        "mix_solve_per_budget_s": round(med["solve_curve"] / len(grid), 4),
        "mix_total_s": round(mix_total, 4),
        "mix_over_one_trial": round(mix_total / one_trial, 4),
        "mix_eval_loss_delta_at_budget": evaluation["eval_loss_delta"],
        "gain_table": rows,
    }
    print("\n".join(gain_lines(rows, BUDGET)))
    print(json.dumps({k: v for k, v in summary.items() if k != "gain_table"}, indent=1))
    write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
