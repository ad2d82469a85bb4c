"""The mix against the best single format at each budget, predicted **and measured**, on a study's store.

For a sweep's parent run (``--parent``), an Optuna study (``--study``) or the whole experiment, in one
process: the trials' scoring records are mixed (``autoquant_sweep.mix``), and at every ``--budgets``
point both the mix and the best satisfied single-format recipe (each solved the same way) are quantized
on a fresh copy (``mtq.quantize``, calibrated on the trials' batches) and evaluated on the held-out split,
as trials are. Nothing is logged to MLflow.

    python benchmarks/mix_gain.py --tracking-uri sqlite:///mlflow.db --parent <run id> --budgets 6,7,8,10
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", default="sensitivity")
    parser.add_argument("--parent", default=None)
    parser.add_argument("--study", default=None)
    parser.add_argument("--budgets", default="6,7,8,10")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from mlflow import MlflowClient

    from autoquant_sweep.mix import (
        gain_table,
        measure_mix,
        mix_curve,
        mix_quant_cfg,
        select_mixable,
        single_curves,
    )
    from autoquant_sweep.tracking.mix_run import collect_trials, find_runs, parse_budgets, trial_plan

    client = MlflowClient(tracking_uri=args.tracking_uri, registry_uri=args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    runs = find_runs(client, experiment.experiment_id, parent_run_id=args.parent, study=args.study)
    trials, _ = collect_trials(client, runs)
    mixed, left, _ = select_mixable(trials)
    budgets = parse_budgets(args.budgets)
    plan = trial_plan(client, mixed[0].run_id)
    curve = mix_curve(mixed, budgets)
    rows = gain_table(curve, single_curves(mixed, budgets))
    by_label = {t.label: t for t in mixed}
    print("| budget | best single format: predicted, bits, measured loss delta | mix: predicted, bits, "
          "measured loss delta | predicted ratio |")
    print("|---|---|---|---|")
    for point, row in zip(curve, rows, strict=True):
        row["mix_measured"] = None
        row["best_single_measured"] = None
        if point.satisfied:
            cfg, note = mix_quant_cfg(point, mixed)
            row["mix_measured"] = measure_mix(cfg, plan)["eval_loss_delta"]
            row["mix_calibration"] = note
        if row["best_single"]:
            single = by_label[row["best_single"]]
            (own,) = mix_curve([single], [point.budget])
            cfg, _ = mix_quant_cfg(own, [single])
            row["best_single_measured"] = measure_mix(cfg, plan)["eval_loss_delta"]
        single_text = (f"{row['best_single']}, {row['best_single_score']:.3e}, "
                       f"{row['best_single_bits']:.3f}, {row['best_single_measured']:+.4f} nats"
                       if row["best_single"] else "none fits")
        mix_text = (f"{row['mix_score']:.3e}, {row['mix_bits']:.3f}, {row['mix_measured']:+.4f} nats"
                    if row["mix_measured"] is not None else "does not fit")
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
        print(f"| {point.budget:g} | {single_text} | {mix_text} | {ratio} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"mixed": [t.name for t in mixed], "left_out": [e.name for e in left],
                                         "rows": rows}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
