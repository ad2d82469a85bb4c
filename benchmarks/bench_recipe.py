"""Cost of the budget curve and of the held-out evaluation, side by side with one budget (tiny model, CPU).

For each config, in one process, same checkpoint and batches:

* one ``mtq.auto_quantize`` call (deep copy of the pristine model), timed;
* on that same search state: the recipe at the run budget alone (``solve_recipe(..., with_config=True)``,
  what a run needs for its recipe), and the whole budget curve (``budget_curve``: the default grid,
  10-11 budgets, only the run budget's point builds its config), each timed;
* the held-out evaluation of the returned (quantized) model, and once the unquantized model.

Reported: per config the medians over ``--repeat`` rounds, and the ratio
(autoquant + curve) / (autoquant + one budget): the cost of a trial with the curve over a trial with
one recipe.

    python benchmarks/bench_recipe.py [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time

from bench_common import parse_repeat_args, plan_for, write_json

CONFIGS = (("wint8_aint8", "default"), ("wint4_aint8", "default"), ("wint4_afp16", "w_group64"))
BUDGET = 9.0


def main() -> int:
    args = parse_repeat_args(__doc__)

    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.evaluation import eval_loss
    from autoquant_sweep.plan import eval_split
    from autoquant_sweep.recipe import budget_curve, default_budget_grid, solve_recipe
    from autoquant_sweep.sensitivity import run_autoquant

    rows = []
    unquantized_s = None
    for pair, gran in CONFIGS:
        plan = plan_for(pair, gran, f"autoquant.effective_bits={BUDGET}")
        loaded = MODEL_CACHE.loaded(plan)
        batches = MODEL_CACHE.batches(plan, loaded)
        _, captions = eval_split(plan.cfg)
        eval_batches = MODEL_CACHE.eval_batches(plan, loaded, captions)
        if unquantized_s is None:
            t0 = time.perf_counter()
            eval_loss(loaded.model, eval_batches)
            unquantized_s = time.perf_counter() - t0
        times: dict[str, list[float]] = {"autoquant": [], "one_budget": [], "curve": [], "evaluation": []}
        n_budgets = 0
        for _ in range(args.repeat + 1):  # the first round warms up and is dropped
            model = copy.deepcopy(loaded.model)
            t0 = time.perf_counter()
            result = run_autoquant(model, batches, copy.deepcopy(plan.effective_format), format_label=pair,
                                   effective_bits=BUDGET, num_calib_steps=plan.batch_plan.num_calib_steps,
                                   num_score_steps=plan.batch_plan.num_score_steps)
            t1 = time.perf_counter()
            solve_recipe(result.search_state, BUDGET, with_config=True)
            t2 = time.perf_counter()
            grid = default_budget_grid(result.format_bits, BUDGET)
            budget_curve(result.search_state, grid, run_budget=BUDGET)
            t3 = time.perf_counter()
            eval_loss(result.model, eval_batches)
            t4 = time.perf_counter()
            n_budgets = len(grid)
            for key, value in (("autoquant", t1 - t0), ("one_budget", t2 - t1), ("curve", t3 - t2),
                               ("evaluation", t4 - t3)):
                times[key].append(value)
            del model, result
        med = {k: statistics.median(v[1:]) for k, v in times.items()}
        rows.append({
            "config": f"{pair} x {gran}", "budgets": n_budgets,
            **{f"{k}_s": round(v, 4) for k, v in med.items()},
            "curve_over_one_budget": round(
                (med["autoquant"] + med["curve"]) / (med["autoquant"] + med["one_budget"]), 4),
            "evaluation_share": round(med["evaluation"] / med["autoquant"], 4),
        })
        print(json.dumps(rows[-1]), flush=True)
    summary = {"unquantized_eval_s_once_per_process": round(unquantized_s or 0.0, 4), "rows": rows}
    print(json.dumps(summary, indent=1))
    write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
