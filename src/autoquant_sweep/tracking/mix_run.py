"""Record the mix (:mod:`autoquant_sweep.mix`) of a sweep, an experiment or an Optuna study in MLflow.

Reads every FINISHED trial's ``recipe/scoring.json`` from the store, mixes the trials of one scoring
fingerprint, measures the mixed recipe at the run budget and logs it as a run named ``mix ...`` under
the sweep's parent (``mix/quant_cfg.json`` loadable by ``mtq.quantize`` unchanged,
``mix/budget_curve.json``, ``mix/gain_table.md``, the curve as metrics, two plots, the measured loss,
params ``mix_budget`` / ``mix_trials``, a description with the groups per format). The registry gets
the mix as its own version; ``best`` and the budget band's alias move to it only when it is satisfied
and strictly better (:func:`autoquant_sweep.tracking.registry.register_best`'s rule).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autoquant_sweep.errors import UserInputError
from autoquant_sweep.mix import KEEP_16, Excluded, MixPoint, MixTrial, gain_lines, measure_mix

log = logging.getLogger(__name__)

KIND_TAG = "aqs_kind"  # "mix" on a mix run: never a trial of another mix
MIX_DIR = "mix"
MIX_CFG = "quant_cfg.json"
MIX_CURVE = "budget_curve.json"
MIX_GAIN = "gain_table.md"
CURVES_PNG = "curves.png"
MAP_PNG = "layer_format_map.png"
#: objectives whose value the mix has (the others rank trials, not recipes)
MIX_OBJECTIVES = {"constrained_score": "predicted_score", "eval_loss_delta": "eval_loss_delta"}


def _trial_name(run: Any) -> str:
    tags = run.data.tags
    return f"{tags.get('quant_pair', '?')}+{tags.get('quant_granularity', '?')} (run {run.info.run_id})"


def find_runs(client: Any, experiment_id: str, *, parent_run_id: str | None = None,
              study: str | None = None) -> list[Any]:
    """FINISHED trial runs of a sweep's parent, of every sweep of an Optuna study, or of the experiment;
    computed runs first, then by start time (so a repeated format keeps the run that computed it)."""
    base = "attributes.status = 'FINISHED'"
    if parent_run_id is not None:
        filters = [f"{base} and tags.mlflow.parentRunId = '{parent_run_id}'"]
    elif study is not None:
        parents = client.search_runs([experiment_id], f"tags.optuna_study = '{study}'", max_results=5000)
        if not parents:
            raise UserInputError(f"--study: no sweep of Optuna study '{study}' in this experiment")
        filters = [f"{base} and tags.mlflow.parentRunId = '{p.info.run_id}'" for p in parents]
    else:
        filters = [base]
    runs = [r for f in filters for r in client.search_runs([experiment_id], f, max_results=5000)]
    runs = [r for r in runs if r.data.tags.get(KIND_TAG) != "mix" and "quant_pair" in r.data.tags]
    return sorted(runs, key=lambda r: (r.data.tags.get("cache_hit") == "true", r.info.start_time or 0))


def collect_trials(client: Any, runs: Sequence[Any]) -> tuple[list[MixTrial], list[Excluded]]:
    """Each run's scoring record (``recipe/scoring.json``), labelled by the run's pair and canonical
    granularity; runs without one are left out by name."""
    from autoquant_sweep.report import RECIPE_DIR
    from autoquant_sweep.scoring import SCORING_FILE, ScoringRecordError, read_record

    trials, excluded = [], []
    with tempfile.TemporaryDirectory(prefix="aqs-mix-") as tmp:
        for run in runs:
            where = f"run {run.info.run_id} {RECIPE_DIR}/{SCORING_FILE}"
            try:
                path = client.download_artifacts(run.info.run_id, f"{RECIPE_DIR}/{SCORING_FILE}",
                                                 str(Path(tmp) / run.info.run_id))
                record = read_record(Path(path).read_text(), where)
            except ScoringRecordError as exc:
                excluded.append(Excluded(_trial_name(run), str(exc)))
                continue
            except Exception:  # MLflow: no such artifact
                excluded.append(Excluded(_trial_name(run), f"no {RECIPE_DIR}/{SCORING_FILE} (a run recorded "
                                                           "before scoring records, or without a recipe)"))
                continue
            tags = run.data.tags
            if tags.get("canonical_granularity"):  # a no-op granularity is the format it restates
                record["format_label"] = f"{tags['quant_pair']}+{tags['canonical_granularity']}"
            trials.append(MixTrial(record, run_id=run.info.run_id, source=where,
                                   requested=f"{tags['quant_pair']}+{tags.get('quant_granularity', '?')}"))
    return trials, excluded


def budget_grid(trials: Sequence[MixTrial], run_budget: float, budgets: Sequence[float] | None
                ) -> list[float]:
    """``budgets`` (with the run budget), else the default grid from the cheapest mixed format's bits."""
    from autoquant_sweep.recipe import resolve_budget_grid

    low = min(float(t.record.get("format_bits") or 16.0) for t in trials)
    return resolve_budget_grid(list(budgets) if budgets else None, low, run_budget)


def trial_plan(client: Any, run_id: str) -> Any:
    """The plan of a mixed trial, from its resolved config (``config/config.yaml``), tracking off: what the
    mix is measured with (same checkpoint, batches, held-out split)."""
    from omegaconf import OmegaConf

    from autoquant_sweep.plan import plan_run
    from autoquant_sweep.tracking.run_logging import CONFIG_ARTIFACT_DIR, HYDRA_CFG_FILE

    with tempfile.TemporaryDirectory(prefix="aqs-mix-cfg-") as tmp:
        path = client.download_artifacts(run_id, f"{CONFIG_ARTIFACT_DIR}/{HYDRA_CFG_FILE}", tmp)
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    cfg.pop("hydra", None)
    cfg["tracking"] = {**cfg.get("tracking", {}), "mode": "off"}
    return plan_run(cfg)


def _plot_curves(curve: Sequence[MixPoint], singles: Mapping[str, Sequence[MixPoint]], title: str) -> Any:
    from autoquant_sweep.figures import new_figure

    fig = new_figure()
    fig.subplots_adjust(left=0.13, right=0.70, top=0.9, bottom=0.12)
    ax = fig.add_subplot()
    for label, points in sorted(singles.items()):
        pts = [p for p in points if p.satisfied and p.predicted_score > 0]
        ax.plot([p.achieved_effective_bits for p in pts], [p.predicted_score for p in pts], ".-", lw=0.8,
                label=label)
    pts = [p for p in curve if p.satisfied and p.predicted_score > 0]
    ax.plot([p.achieved_effective_bits for p in pts], [p.predicted_score for p in pts], "k*-", lw=1.6,
            label="mix")
    ax.set_yscale("log")
    ax.set_xlabel("achieved effective bits")
    ax.set_ylabel("predicted damage (AutoQuant score)")
    ax.set_title(f"{title}: mix vs single formats", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _plot_map(point: MixPoint, labels: Sequence[str], title: str) -> Any:
    from autoquant_sweep.figures import new_figure

    columns = [*labels, KEEP_16]
    groups = list(point.choice)
    fig = new_figure(width=2.5 + 0.9 * len(columns), height=1.2 + 0.22 * len(groups))
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.45, right=0.97, top=1 - 0.5 / height, bottom=0.9 / height)
    ax = fig.add_subplot()
    grid = [[1.0 if point.choice[g] == c else 0.0 for c in columns] for g in groups]
    ax.imshow(grid, cmap="Greys", aspect="auto", vmin=0, vmax=1.3)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=6)
    ax.set_yticks(range(len(groups)), groups, fontsize=6)
    ax.set_title(f"{title}: format per layer group at {point.budget:g} bits", fontsize=8)
    return fig


def _register(client: Any, run_id: str, point: MixPoint, measured: Mapping[str, Any] | None,
              objective: str, params: Mapping[str, str], mixed: Sequence[MixTrial],
              quant_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """A registry version for the mix; ``best`` / band alias move only when satisfied and strictly better."""
    from mlflow.exceptions import MlflowException

    from autoquant_sweep.fingerprints import config_fingerprint
    from autoquant_sweep.recipe import recipe_json
    from autoquant_sweep.tracking.registry import (
        BEST_ALIAS,
        alias_version,
        registered_name,
        settle_aliases,
        version_description,
    )

    key = MIX_OBJECTIVES.get(objective)
    value = point.predicted_score if key == "predicted_score" else (measured or {}).get("eval_loss_delta")
    if not point.satisfied or value is None or not math.isfinite(float(value)):
        log.info("registry: the mix is not registered (satisfied=%s, %s=%s)", point.satisfied, objective,
                 value)
        return None
    name = registered_name(params.get("model", "model"), objective)
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass
    counts = ", ".join(f"{k} {v}" for k, v in point.counts.items())
    kept = point.counts.get(KEEP_16, 0)
    tags = {
        "quant_pair": "mix", "granularity": counts, "requested_granularity": "mix",
        "dataset": params.get("dataset", ""), "dataset_size": params.get("dataset_size", ""),
        "objective": objective, "objective_value": repr(float(value)),
        "budget": params.get("effective_bits_budget", ""),
        "recipe_effective_bits": repr(point.achieved_effective_bits),
        "recipe_predicted_score": repr(point.predicted_score), "recipe_satisfied": "true",
        "kept_16bit_groups": str(kept), "recipe_groups": str(len(point.choice)),
        "eval_loss": repr((measured or {}).get("eval_loss", math.nan)),
        "eval_loss_delta": repr((measured or {}).get("eval_loss_delta", math.nan)),
        "ppl_increase_pct": repr((measured or {}).get("ppl_increase_pct", math.nan)),
        "artifact": f"{MIX_DIR}/{MIX_CFG}", "uniform_artifact": f"{MIX_DIR}/{MIX_CFG}",
        "source_run_id": run_id, "selected_run_id": run_id, "mix_trials": ",".join(t.label for t in mixed),
        "config_fingerprint": config_fingerprint(recipe_json(quant_cfg)),
        "registered_name": name,
    }
    run = client.get_run(run_id)
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/{MIX_DIR}", run_id=run_id,
                                          tags=tags, description=version_description(tags))
    value = float(value)
    previous = alias_version(client, name, BEST_ALIAS)
    # the aliases go to the best satisfied version of all (registry.settle_alias): the mix takes them only
    # when it is strictly better (ties stay with the older version), whatever other sweeps do meanwhile
    aliases = settle_aliases(client, name, version.version, tags)
    return {"name": name, "version": version.version, "value": value, **aliases, "run_id": run_id,
            "previous_best": previous.version if previous is not None else None}


def run_mix(client: Any, experiment_id: str, runs: Sequence[Any], *, parent_run_id: str | None,
            budgets: Sequence[float] | None = None, objective: str | None = None, measure: bool = True,
            registry: bool = True, cache: Any = None) -> dict[str, Any] | None:
    """Mix ``runs`` (trial runs, :func:`find_runs`), log the mix run under ``parent_run_id`` and register
    it. Returns what :func:`mix_lines` prints, None when fewer than two trials mix."""
    from mlflow.entities import Metric, Param, RunTag

    from autoquant_sweep.mix import (
        gain_table,
        mix_curve,
        mix_description,
        mix_quant_cfg,
        select_mixable,
        single_curves,
    )
    from autoquant_sweep.recipe import budget_step, recipe_json
    from autoquant_sweep.report import dump_json
    from autoquant_sweep.tracking.run_logging import NOTE_TAG, RUN_NAME_TAG, creation_tags

    t0 = time.perf_counter()
    trials, excluded = collect_trials(client, runs)
    mixed, left, key = select_mixable(trials)
    excluded += left
    for e in excluded:
        log.info("mix: left out %s: %s", e.name, e.reason)
    if len(mixed) < 2:
        log.warning("mix: %d trial(s) with one scoring fingerprint; nothing to mix", len(mixed))
        return None
    by_id = {r.info.run_id: r for r in runs}
    first = by_id[mixed[0].run_id]
    params = dict(first.data.params)
    objective = objective or params.get("objective", "constrained_score")
    run_budget = float(params.get("effective_bits_budget", 10.0))
    grid = budget_grid(mixed, run_budget, budgets)
    curve = mix_curve(mixed, grid, run_budget=run_budget)
    singles = single_curves(mixed, grid)
    rows = gain_table(curve, singles)
    point = next(p for p in curve if abs(p.budget - run_budget) < 1e-9)
    quant_cfg, calibration = mix_quant_cfg(point, mixed)
    solve_s = time.perf_counter() - t0
    measured = None
    if measure:
        measured = measure_mix(quant_cfg, trial_plan(client, mixed[0].run_id), cache)
    model = params.get("model", "model")
    name = f"mix {model} {len(mixed)} formats @{run_budget:g}"
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    tags.update({KIND_TAG: "mix", RUN_NAME_TAG: name, "scoring_fingerprint": key, "model": model,
                 "quant_pair": "mix", "quant_granularity": "mix"})
    run = client.create_run(experiment_id, tags=creation_tags(tags), run_name=name)
    run_id = run.info.run_id
    description = mix_description(point, excluded, mixed)
    if measured:
        description += (f"\nMeasured: held-out loss {measured['eval_loss_delta']:+.4f} nats vs unquantized "
                        f"(perplexity {measured['ppl_increase_pct']:+.2f} %), calibrated with "
                        f"{calibration['algorithm']}"
                        + (f" (own algorithm not applied: {calibration['not_applied']})"
                           if calibration["not_applied"] else "") + ".")
    description += "\n\n" + "\n".join(gain_lines(rows, run_budget))
    now = int(time.time() * 1000)
    metrics = [Metric("mix_predicted_score", point.predicted_score, now, 0),
               Metric("mix_effective_bits", point.achieved_effective_bits, now, 0),
               Metric("mix_satisfied", float(point.satisfied), now, 0),
               Metric("mix_seconds", solve_s, now, 0)]
    for p in curve:
        step = budget_step(p.budget)
        metrics += [Metric("mix_curve_predicted_score", p.predicted_score, now, step),
                    Metric("mix_curve_effective_bits", p.achieved_effective_bits, now, step)]
    for r in rows:
        if r["ratio"] is not None:
            metrics.append(Metric("mix_gain_ratio", r["ratio"], now, budget_step(r["budget"])))
    for k in ("eval_loss", "eval_loss_delta", "ppl_increase_pct"):
        if measured and measured.get(k) is not None:
            metrics.append(Metric(f"mix_{k}", float(measured[k]), now, 0))
    run_params = [Param("mix_budget", repr(run_budget)),
                  Param("mix_trials", ",".join(t.label for t in mixed)[:6000]),
                  Param("mix_trial_runs", ",".join(str(t.run_id) for t in mixed)[:6000]),
                  Param("mix_left_out", str(len(excluded))), Param("objective", objective)]
    run_params += [Param(k, v) for k, v in params.items() if k in ("model", "dataset", "dataset_size",
                                                                      "effective_bits_budget")]
    client.log_batch(run_id, metrics=metrics, params=run_params, tags=[RunTag(NOTE_TAG, description)])
    client.log_text(run_id, dump_json(recipe_json(quant_cfg)), f"{MIX_DIR}/{MIX_CFG}")
    client.log_text(run_id, dump_json({"run_budget": run_budget, "scoring_fingerprint": key,
                                       "calibration": calibration, "measured": measured,
                                       "mixed": [{"label": t.label, "run_id": t.run_id} for t in mixed],
                                       "left_out": [{"name": e.name, "reason": e.reason} for e in excluded],
                                       "curve": [p.curve_point() for p in curve],
                                       "single_curves": {k: [p.curve_point() for p in v]
                                                         for k, v in singles.items()},
                                       "gain_table": rows}), f"{MIX_DIR}/{MIX_CURVE}")
    client.log_text(run_id, "\n".join(gain_lines(rows, run_budget)) + "\n", f"{MIX_DIR}/{MIX_GAIN}")
    title = f"{model} mix"
    client.log_figure(run_id, _plot_curves(curve, singles, title), f"{MIX_DIR}/{CURVES_PNG}")
    client.log_figure(run_id, _plot_map(point, [t.label for t in mixed], title), f"{MIX_DIR}/{MAP_PNG}")
    registered = _register(client, run_id, point, measured, objective, params, mixed,
                                                     quant_cfg) if registry else None
    client.set_terminated(run_id, "FINISHED")
    best_single = next((r for r in rows if abs(r["budget"] - run_budget) < 1e-9), None)
    return {"run_id": run_id, "point": point, "rows": rows, "run_budget": run_budget, "measured": measured,
            "calibration": calibration, "mixed": mixed, "excluded": excluded, "registered": registered,
            "best_single": best_single, "seconds": solve_s, "quant_cfg": quant_cfg}


def mix_lines(result: Mapping[str, Any]) -> list[str]:
    """The mix's printed answer: the mix at the run budget next to the best single format and the ratio,
    the registry entry, the gain table."""
    point, row, measured = result["point"], result["best_single"], result["measured"]
    counts = ", ".join(f"{k} {v}" for k, v in point.counts.items())
    lines = [f"mix of {len(result['mixed'])} formats (run {result['run_id']}) at {point.budget:g} "
             f"effective bits: "
             f"{counts} groups; achieves {point.achieved_effective_bits:.3f} bits, predicted score "
             f"{point.predicted_score:.4e}"
             + (f", measured held-out loss {measured['eval_loss_delta']:+.4f} nats (perplexity "
                f"{measured['ppl_increase_pct']:+.2f} %)" if measured else "")]
    if row is not None and row["best_single"]:
        ratio = f"{row['ratio']:.2f}x lower" if row["ratio"] is not None else "no ratio"
        lines.append(f"  best single format at {point.budget:g} bits: {row['best_single']}, predicted score "
                     f"{row['best_single_score']:.4e} ({row['best_single_bits']:.3f} bits): "
                     f"the mix is {ratio}")
    registered = result.get("registered")
    if registered:
        before = f" from version {registered['previous_best']}" if registered.get("previous_best") else ""
        band = registered.get("band_alias")
        lines.append(f"  registered: {registered['name']} version {registered['version']} ("
                     + (f"alias best moved here{before}" if registered["alias_moved"] else "alias best kept")
                     + (f"; {band} {'moved here' if registered['band_moved'] else 'kept'}" if band else "")
                     + ")")
    for e in result["excluded"]:
        lines.append(f"  left out: {e.name}: {e.reason}")
    lines.append("  mix vs best single format per budget (predicted; solved the same way):")
    lines += ["  " + line for line in gain_lines(result["rows"], result["run_budget"])]
    return lines


def mix_recipe_summary(client: Any, run_id: str) -> dict[str, Any]:
    """A mix run's recipe at its budget in the form of a manifest's ``recipe`` section (``lookup``
    prints it): budget, achieved bits, quantized / kept-at-16-bit groups, the format of each group."""
    with tempfile.TemporaryDirectory(prefix="aqs-mix-lookup-") as tmp:
        data = json.loads(Path(client.download_artifacts(run_id, f"{MIX_DIR}/{MIX_CURVE}", tmp)).read_text())
    point = next(p for p in data["curve"] if abs(p["budget"] - data["run_budget"]) < 1e-9)
    return {"budget": point["budget"], "achieved_effective_bits": point["achieved_effective_bits"],
            "satisfied": point["satisfied"], "predicted_score": point["predicted_score"],
            "quantized_groups": [g for g, f in point["choice"].items() if f != KEEP_16],
            "kept_16bit_groups": [g for g, f in point["choice"].items() if f == KEEP_16],
            "formats": point["choice"]}


def parse_budgets(text: str | None) -> list[float] | None:
    """``--budgets 6,8,10`` -> ``[6.0, 8.0, 10.0]``.

    Example:
        >>> parse_budgets("6, 8,10"), parse_budgets(None)
        ([6.0, 8.0, 10.0], None)
    """
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UserInputError(f"--budgets: '{text}' is not a comma-separated list of numbers") from exc
    bad = [v for v in values if not 0 < v <= 16]
    if bad:
        raise UserInputError(f"--budgets: budgets must be in (0, 16], got {bad}")
    return values


def dump(result: Mapping[str, Any]) -> str:
    """JSON of a mix result for ``--json`` (points as curve points)."""
    data = {k: v for k, v in result.items() if k not in ("point", "mixed", "excluded", "quant_cfg")}
    data["point"] = result["point"].curve_point()
    data["mixed"] = [t.name for t in result["mixed"]]
    data["excluded"] = [{"name": e.name, "reason": e.reason} for e in result["excluded"]]
    return json.dumps(data, indent=2, default=str)


def cmd_mix(args: Any) -> int:
    """``autoquant-sweep mix``: mix the trials of a sweep's parent run, an Optuna study or an experiment,
    log the mix run and register it; print the answer."""
    from autoquant_sweep.tracking.registry import store_client
    from autoquant_sweep.tracking.registry_args import tracking_uri

    client = store_client(tracking_uri(args))
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise UserInputError(f"--experiment: no MLflow experiment '{args.experiment}' in "
                             f"{client.tracking_uri}; runs use experiment=<name> (default sensitivity)")
    parent = args.parent
    if parent is not None:
        try:
            client.get_run(parent)
        except Exception as exc:
            raise UserInputError(f"--parent: no MLflow run '{parent}' ({type(exc).__name__})") from exc
    runs = find_runs(client, experiment.experiment_id, parent_run_id=parent, study=args.study)
    result = run_mix(client, experiment.experiment_id, runs, parent_run_id=parent,
                     budgets=parse_budgets(args.budgets), measure=not args.no_measure,
                     registry=not args.no_register)
    if result is None:
        raise UserInputError(f"mix: fewer than two trials with one scoring fingerprint among {len(runs)} "
                             "finished runs; run a sweep over several quant_pair / quant_granularity first")
    print(dump(result) if args.json else "\n".join(mix_lines(result)))
    return 0


def add_mix_command(sub: Any) -> None:
    """Register ``autoquant-sweep mix``."""
    from autoquant_sweep.tracking.registry_args import add_store_args

    p = sub.add_parser("mix", help="the per-layer mix over every format a sweep / study / experiment "
                                   "scored: logged as a run 'mix ...' and registered")
    p.add_argument("--experiment", default="sensitivity", help="MLflow experiment (default: sensitivity)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--parent", default=None, help="a sweep's parent run id (the mix run goes under it)")
    where.add_argument("--study", default=None, help="an Optuna study name: the trials of all its sweeps")
    p.add_argument("--budgets", default=None, help="comma-separated budgets, e.g. 6,8,10 (default: the grid "
                                                   "from the cheapest format's bits; the run budget always)")
    p.add_argument("--no-measure", action="store_true", help="do not quantize and evaluate the mixed recipe")
    p.add_argument("--no-register", action="store_true", help="do not register the mix")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_store_args(p)
    p.set_defaults(func=cmd_mix)
