"""Cost of the realized-granularity check, side by side with the raw ModelOpt call it follows (tiny model).

For each config, in one process, same checkpoint and batches: one raw ``mtq.auto_quantize`` call on a
deep copy of the pristine model (what a trial runs), then on the model it returned the check a trial adds
(``quant.realized.realize`` + ``check_realized``), and once the probe the check falls back to when a budget
keeps every group at 16 bits (``mtq.quantize`` of a copy on one calibration batch, then the same check).

Reported: per config the medians over ``--repeat`` rounds (a warm-up round is dropped) and the check's share
of the AutoQuant call.

    python benchmarks/bench_realized.py [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time

from bench_common import parse_repeat_args, plan_for, write_json

CONFIGS = (("wint8_aint8", "a_per_token_dynamic"), ("wint4_aint8", "recipe_match_channel_token"),
           ("wint4_afp16", "w_group64"), ("wint4_afp8", "default"))


def main() -> int:
    args = parse_repeat_args(__doc__)

    import modelopt.torch.quantization as mtq

    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.quant.realized import check_realized, realize

    rows = []
    for pair, gran in CONFIGS:
        plan = plan_for(pair, gran)
        loaded = MODEL_CACHE.loaded(plan)
        batches = MODEL_CACHE.batches(plan, loaded)
        times: dict[str, list[float]] = {"autoquant": [], "check": [], "probe_and_check": []}
        checked = 0
        for _ in range(args.repeat + 1):
            model = copy.deepcopy(loaded.model)
            t0 = time.perf_counter()
            returned, _ = mtq.auto_quantize(
                model, constraints={"effective_bits": 10.0}, quantization_formats=[copy.deepcopy(
                    plan.effective_format)], data_loader=batches, forward_step=lambda m, b: m(**b),
                loss_func=lambda out, b: out.loss, disabled_layers=["*lm_head*"],
                num_calib_steps=plan.batch_plan.num_calib_steps,
                num_score_steps=plan.batch_plan.num_score_steps, verbose=False)
            t1 = time.perf_counter()
            quantizers = realize(returned)
            check_realized(plan.declared_granularity, quantizers, where=f"{pair} x {gran}")
            t2 = time.perf_counter()
            probe = copy.deepcopy(loaded.model)
            first = batches[0]
            mtq.quantize(probe, copy.deepcopy(plan.effective_format), forward_loop=lambda m, b=first: m(**b))
            check_realized(plan.declared_granularity, realize(probe), where=f"{pair} x {gran}")
            t3 = time.perf_counter()
            checked = len(quantizers)
            for key, value in (("autoquant", t1 - t0), ("check", t2 - t1), ("probe_and_check", t3 - t2)):
                times[key].append(value)
            del model, returned, probe
        med = {k: statistics.median(v[1:]) for k, v in times.items()}
        rows.append({"config": f"{pair} x {gran}", "quantizers_checked": checked,
                     **{f"{k}_s": round(v, 5) for k, v in med.items()},
                     "check_share_of_autoquant": round(med["check"] / med["autoquant"], 6)})
        print(json.dumps(rows[-1]), flush=True)
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
