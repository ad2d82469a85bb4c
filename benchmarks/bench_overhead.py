"""Per-trial overhead of a framework sweep trial over a plain ``mtq.auto_quantize`` call, interleaved.

    python benchmarks/bench_overhead.py [--trials 7] [--skip-no-eval] [--json out.json] [--profile out.prof]

One process, tiny Qwen3 on CPU. An in-process Optuna sweep (``-m hydra/sweeper=optuna``, grid sampler
over :data:`PAIRS` x :data:`GRANULARITIES`, a SQLite study and MLflow tracking on a throwaway store,
reports written, no registry) runs the project's task exactly as the main job does. A Hydra callback,
right after each job ends, runs the raw call on that job's config: a fresh deep copy of one pristine
model loaded with ``from_pretrained``, the same tokenised batches, the same effective format, budget,
step counts and seed. Framework and raw trials therefore alternate (F R F R ...) and each pair shares
whatever load the machine has at that moment; the per-pair ratio F / R is reported as median, IQR and
min / max, once for wall time and once for CPU time (this process's user + system time of all its
threads, plus that of waited-for child processes such as the CBC solver of the budget curve). On a
machine other jobs load, wall time mostly measures the others; CPU time measures the work, and is the
ratio to read there.

* **framework trial** = wall time from the end of the previous raw call to the end of this job: the
  plugin's ``tell`` / ``ask`` and owner hook, Hydra's job set-up (config, folder, log file), the MLflow run
  and cache lookup, the plan, AutoQuant, the recipe and the budget curve, the held-out evaluation (unless
  ``autoquant.evaluate=false``), the report files and plots, MLflow logging;
* **raw trial** = ``copy.deepcopy(pristine)`` + ``mtq.auto_quantize`` (what ``bench_sweep.py`` calls (a));
* **self ratio** = the framework trial over its own AutoQuant call (``manifest.json`` ``seconds``), the
  same call as the raw one, timed in the same trial: the least load-sensitive estimate of the overhead.

Pair 0 (model load, first imports, first AutoQuant of the process) is a warm-up, reported apart. The
sweep runs twice: as configured (evaluation on) and with ``autoquant.evaluate=false``. ``--profile``
writes a cProfile of framework trial 1 (from the end of raw call 0 to the end of job 1).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bench_common import run_app, write_json

REPO = Path(__file__).resolve().parents[1]
# pair x granularity grid of the sweep: 10 combinations that all run on CPU, each with its own effective
# format (no no-op overlay, so no trial is a cache hit of another), in the grid sampler's seeded order
PAIRS = ("wint8_aint8", "wint4_aint8")
GRANULARITIES = ("default", "w_per_tensor", "w_per_in_channel", "w_group64", "a_per_token_dynamic")


STAGE_SECONDS: dict[str, float] = {}


def _timed(stage: str, function: Any) -> Any:
    """``function`` that adds its wall time to ``STAGE_SECONDS[stage]``."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            STAGE_SECONDS[stage] = STAGE_SECONDS.get(stage, 0.0) + time.perf_counter() - start

    return wrapper


def install_stage_timers() -> None:
    """Wall time per stage of a framework trial, from the project's module-level entry points."""
    from autoquant_sweep import pipeline, report

    for module, name, stage in ((pipeline, "plan_run", "plan"), (pipeline, "compute", "compute"),
                                (pipeline, "write_report_atomically", "report_files"),
                                (report, "plot_sensitivity", "plots"),
                                (report, "plot_budget_curve", "plots")):
        setattr(module, name, _timed(stage, getattr(module, name)))


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished, waited-for children."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Interleave(Callback):
    """After each sweep job: time it (framework), then run the raw call on the same config (raw)."""

    rows: ClassVar[list[dict[str, Any]]] = []
    profile_path: ClassVar[Path | None] = None

    def __init__(self) -> None:
        self._mark = time.perf_counter()
        self._cpu_mark = cpu_seconds()
        self._profiler: cProfile.Profile | None = None
        self._just_profiled = False
        self._pristine: Any = None
        self._tokenizer: Any = None
        self._batches: dict[tuple, list[dict]] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._mark, self._cpu_mark = time.perf_counter(), cpu_seconds()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        framework, framework_cpu = time.perf_counter() - self._mark, cpu_seconds() - self._cpu_mark
        stages = dict(STAGE_SECONDS)
        STAGE_SECONDS.clear()
        if self._profiler is not None:
            self._profiler.disable()
            self._profiler.dump_stats(str(self.profile_path))
            self._profiler = None
            self._just_profiled = True
        manifest_path = Path(HydraConfig.get().runtime.output_dir) / "report" / "manifest.json"
        seconds = json.loads(manifest_path.read_text())["seconds"] if manifest_path.is_file() else {}
        profiled = self._just_profiled
        self._just_profiled = False
        raw, raw_cpu = self._raw(config)
        self.rows.append({
            "config": f"{config.quant_pair.name} x {config.quant_granularity.name}",
            "framework_s": framework,
            "raw_s": raw,
            "ratio": framework / raw,
            "framework_cpu_s": framework_cpu,
            "raw_cpu_s": raw_cpu,
            "cpu_ratio": framework_cpu / raw_cpu,
            "framework_autoquant_s": seconds.get("autoquant"),
            "framework_curve_s": seconds.get("budget_curve"),
            "framework_evaluation_s": seconds.get("evaluation"),
            # the same AutoQuant call, timed inside the framework trial at the same moment: the trial over
            # its own call is the overhead ratio least disturbed by other jobs' load
            "self_ratio": framework / seconds["autoquant"] if seconds.get("autoquant") else None,
            "extra_s": framework - seconds["autoquant"] if seconds.get("autoquant") else None,
            **_stage_breakdown(framework, stages, seconds),
            "profiled": profiled,  # cProfile slows Python-heavy code several-fold: left out of the summary
        })
        print(f"[bench] {self.rows[-1]['config']}: framework {framework:.3f} s, raw {raw:.3f} s, "
              f"ratio {framework / raw:.3f}; CPU framework {framework_cpu:.3f} s, raw {raw_cpu:.3f} s, "
              f"ratio {framework_cpu / raw_cpu:.3f}", flush=True)
        if self.profile_path is not None and len(self.rows) == 1:
            self._profiler = cProfile.Profile()
        self._mark, self._cpu_mark = time.perf_counter(), cpu_seconds()
        if self._profiler is not None:
            self._profiler.enable()

    def _raw(self, config: DictConfig) -> tuple[float, float]:
        """deepcopy of the pristine model + the same ``mtq.auto_quantize`` call the job made."""
        import modelopt.torch.quantization as mtq
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from autoquant_sweep.data import tokenize_batches

        plan = _plan_run(config)
        c = plan.cfg
        if self._pristine is None:
            self._tokenizer = AutoTokenizer.from_pretrained(plan.checkpoint)
            self._pristine = AutoModelForCausalLM.from_pretrained(
                plan.checkpoint, dtype=getattr(torch, c["model"]["dtype"])).eval()
        key = (int(c["dataset"]["seq_len"]), plan.batch_plan.batch_size)
        if key not in self._batches:
            self._batches[key] = tokenize_batches(self._tokenizer, plan.captions, *key)
        aq = c["autoquant"]
        quant_format = copy.deepcopy(plan.effective_format)
        torch.manual_seed(int(aq["seed"]))
        start, start_cpu = time.perf_counter(), cpu_seconds()
        model = copy.deepcopy(self._pristine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mtq.auto_quantize(
                model,
                constraints={"effective_bits": float(aq["effective_bits"])},
                quantization_formats=[quant_format],
                data_loader=self._batches[key],
                forward_step=lambda m, b: m(**b),
                loss_func=lambda out, b: out.loss,
                disabled_layers=list(c["model"]["disabled_layers"]),
                num_calib_steps=plan.batch_plan.num_calib_steps,
                num_score_steps=plan.batch_plan.num_score_steps,
                verbose=False,
                method=aq["method"],
            )
        elapsed, elapsed_cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
        del model
        return elapsed, elapsed_cpu


def _stage_breakdown(framework: float, stages: dict[str, float], seconds: dict[str, Any]) -> dict[str, float]:
    """Where a framework trial's wall time went (each stage's own time, nested stages subtracted)."""
    inside_compute = sum(seconds.get(k) or 0.0 for k in ("autoquant", "budget_curve", "evaluation"))
    task = stages.get("task", 0.0)
    return {
        "stage_hydra_optuna_s": framework - task,  # tell / ask / hook, Hydra's per-job config, folder, logs
        "stage_plan_s": stages.get("plan", 0.0),
        "stage_compute_other_s": stages.get("compute", 0.0) - inside_compute,  # deepcopy, manifest pieces
        "stage_report_files_s": stages.get("report_files", 0.0) - stages.get("plots", 0.0),
        "stage_plots_s": stages.get("plots", 0.0),
        # MLflow connect / cache lookup / run start / logging, OmegaConf.to_yaml, whatever else the task does
        "stage_mlflow_and_rest_s": task - stages.get("plan", 0.0) - stages.get("compute", 0.0)
        - stages.get("report_files", 0.0),
    }


def _plan_run(config: DictConfig) -> Any:
    from autoquant_sweep.plan import plan_run

    return plan_run(config)


def _sweep(work: Path, trials: int, extra: list[str]) -> list[dict[str, Any]]:
    """One in-process sweep through the project's Hydra task, with :class:`Interleave` attached."""
    sys.path.insert(0, str(REPO / "experiments"))
    from autoquant_sweep.app import sensitivity_task
    from sensitivity import CONF_DIR, EXECUTION_WHITELIST  # the app's own config and whitelist

    task = _timed("task", sensitivity_task)

    @hydra.main(config_path=CONF_DIR, config_name="sensitivity",
                execution_whitelist=[*EXECUTION_WHITELIST, "__main__.*"])
    def app(cfg: DictConfig) -> Any:
        return task(cfg)

    Interleave.rows = []
    store = work / f"sweep-{len(list(work.iterdir()))}"  # its own MLflow store: no cache hit across sweeps
    store.mkdir()
    argv = [
        "sensitivity.py", "-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=grid",
        f"quant_pair=choice({','.join(PAIRS)})", f"quant_granularity=choice({','.join(GRANULARITIES)})",
        f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.storage=sqlite:///{store}/optuna.db",
        f"hydra.sweeper.study_name=bench-overhead-{store.name}",
        "autoquant.device=cpu", "tracking.registry=false",
        f"tracking.tracking_uri=sqlite:///{store}/mlflow.db", f"tracking.artifact_location={store}/mlruns",
        f"hydra.sweep.dir={store}/multirun", "output_layout=tmp",
        "+hydra.callbacks.bench_interleave._target_=__main__.Interleave",
        *extra,
    ]
    run_app(app, argv)
    return list(Interleave.rows)


def _spread(values: list[float]) -> dict[str, Any]:
    values = sorted(values)
    quartiles = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": round(statistics.median(values), 4),
            "iqr": [round(quartiles[0], 4), round(quartiles[2], 4)],
            "min_max": [round(values[0], 4), round(values[-1], 4)]}


STAGES = ("stage_hydra_optuna_s", "stage_plan_s", "stage_compute_other_s", "stage_report_files_s",
          "stage_plots_s", "stage_mlflow_and_rest_s")


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median ratio with IQR and min / max over the pairs after the warm-up pair (and not profiled)."""
    measured = [r for r in rows[1:] if not r["profiled"]]

    def med(key: str) -> float | None:
        values = [r[key] for r in measured if r.get(key) is not None]
        return round(statistics.median(values), 4) if values else None

    def rounded(row: dict[str, Any]) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}

    return {
        "pairs": len(measured),
        "wall_ratio": _spread([r["ratio"] for r in measured]),
        "cpu_ratio": _spread([r["cpu_ratio"] for r in measured]),
        "self_ratio": _spread([r["self_ratio"] for r in measured if r["self_ratio"]] or [math.nan]),
        "autoquant_framework_over_raw": _spread([r["framework_autoquant_s"] / r["raw_s"] for r in measured
                                                 if r["framework_autoquant_s"]] or [math.nan]),
        **{f"{key}_median": med(key) for key in (
            "framework_s", "raw_s", "framework_cpu_s", "raw_cpu_s", "framework_autoquant_s", "extra_s",
            "framework_curve_s", "framework_evaluation_s", *STAGES)},
        "warm_up_pair": rounded(rows[0]),
        "pairs_detail": [rounded(r) for r in measured],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=7,
                        help="trials per sweep, at most 10 (the first pair is a warm-up)")
    parser.add_argument("--skip-no-eval", action="store_true", help="only the sweep with evaluation on")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="cProfile of framework trial 1")
    args = parser.parse_args()
    if args.profile is not None:
        args.trials += 1  # the profiled pair does not count
    if not 3 <= args.trials <= len(PAIRS) * len(GRANULARITIES):
        parser.error(f"--trials: {args.trials} is not in 3..{len(PAIRS) * len(GRANULARITIES)} (one warm-up "
                     "pair, at least two measured pairs, each combination of the grid at most once)")
    warnings.filterwarnings("ignore")
    Interleave.profile_path = args.profile
    install_stage_timers()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aqs-bench-overhead-") as tmp:
        work = Path(tmp)
        variants = [("evaluate=true", [])]
        if not args.skip_no_eval:
            variants.append(("evaluate=false", ["autoquant.evaluate=false"]))
        for name, extra in variants:
            results[name] = summarise(_sweep(work, args.trials, extra))
            Interleave.profile_path = None  # profile the first sweep only
    for name, summary in results.items():
        for kind in ("wall", "cpu", "self"):
            spread = summary[f"{kind}_ratio"]
            what = "framework trial / its own AutoQuant call" if kind == "self" else "framework / raw"
            print(f"{name}: {kind} {what} median {spread['median']:.3f} (IQR {spread['iqr'][0]:.3f}-"
                  f"{spread['iqr'][1]:.3f}, min {spread['min_max'][0]:.3f}, max {spread['min_max'][1]:.3f}, "
                  f"{summary['pairs']} pairs)")
        print(f"{name}: medians framework {summary['framework_s_median']} s wall / "
              f"{summary['framework_cpu_s_median']} s CPU, raw {summary['raw_s_median']} s wall / "
              f"{summary['raw_cpu_s_median']} s CPU; inside the framework trial: AutoQuant "
              f"{summary['framework_autoquant_s_median']} s, curve {summary['framework_curve_s_median']} s, "
              f"evaluation {summary['framework_evaluation_s_median']} s, everything but AutoQuant "
              f"{summary['extra_s_median']} s (wall)")
        print(f"{name}: everything but AutoQuant, median per stage (wall s): curve "
              f"{summary['framework_curve_s_median']}, evaluation "
              f"{summary['framework_evaluation_s_median']}, "
              + ", ".join(f"{k[6:-2]} {summary[k + '_median']}" for k in STAGES))
    print(json.dumps(results, indent=1))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
