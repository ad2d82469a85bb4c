"""Compute: the model-side stage of a run (docs/architecture.md), from a :class:`~autoquant_sweep.plan.
RunPlan` to a :class:`Computed` result. Nothing here writes a file or talks to MLflow.

load the checkpoint and tokenise the captions (once per process: :data:`MODEL_CACHE`; the pristine model
stays on the CPU, :mod:`autoquant_sweep.trial_memory`) ->
``mtq.auto_quantize`` with the one effective format on a fresh copy of it on the run device ->
realized-granularity check (the instantiated quantizers are what the format declares) -> per-layer
table (guards: all-zero / non-finite) -> recipe at the budget and the budget curve
(``mtq.get_auto_quantize_config`` re-solves) -> held-out loss of the returned, quantized model against
the unquantized one.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import time
from dataclasses import dataclass
from typing import Any

from autoquant_sweep import data as data_mod
from autoquant_sweep.modeling import LoadedModel, load_model_and_tokenizer
from autoquant_sweep.plan import RunPlan
from autoquant_sweep.quant.summary import summarize_format
from autoquant_sweep.trial_memory import PRISTINE_DEVICE, TrialMemory, device_copy

log = logging.getLogger(__name__)


def eval_captions_used(captions: list[str], batch_size: int) -> list[str]:
    """The held-out captions evaluated: whole batches only.

    Example:
        >>> len(eval_captions_used(["a ."] * 66, 4))
        64
    """
    return captions[: len(captions) - len(captions) % batch_size]


class ModelCache:
    """Pristine models and tokenised batches, kept for the life of a process (one sweep).

    The pristine model lives on :data:`~autoquant_sweep.trial_memory.PRISTINE_DEVICE` (the CPU); each run
    gets a deep copy of it on the run device, so scores never depend on what ran before and the GPU holds
    one model's worth at a time.
    """

    def __init__(self) -> None:
        self._models: dict[tuple, LoadedModel] = {}
        self._batches: dict[tuple, list[dict]] = {}
        self._unquantized_loss: dict[tuple, float] = {}

    def clear(self) -> None:
        """Forget every model, batch and reference loss (the next run loads its checkpoint again)."""
        self._models.clear()
        self._batches.clear()
        self._unquantized_loss.clear()

    def model(self, plan: RunPlan) -> tuple[LoadedModel, Any]:
        """The pristine model and a deep copy of it on the run device for one run."""
        loaded = self.loaded(plan)
        return loaded, device_copy(loaded.model, plan.device)

    def loaded(self, plan: RunPlan) -> LoadedModel:
        """The pristine model (loaded once per checkpoint and process, on the CPU); never modify it."""
        m = plan.cfg["model"]
        key = (str(plan.checkpoint), plan.checkpoint_identity, m["kind"], m["dtype"], plan.device)
        if key not in self._models:
            self.clear()  # one pristine checkpoint at a time keeps memory at one model
            self._models[key] = load_model_and_tokenizer(
                plan.checkpoint,
                kind=m["kind"],
                dtype=m["dtype"],
                device=PRISTINE_DEVICE,
                trust_remote_code=bool(m["trust_remote_code"]),
            )
        return self._models[key]

    def batches(self, plan: RunPlan, loaded: LoadedModel) -> list[dict]:
        seq_len = int(plan.cfg["dataset"]["seq_len"])
        key = (loaded.identity, tuple(plan.captions), seq_len, plan.batch_plan.batch_size)
        if key not in self._batches:
            self._batches[key] = data_mod.tokenize_batches(
                loaded.tokenizer, plan.captions, seq_len, plan.batch_plan.batch_size
            )
        return self._batches[key]

    def eval_batches(self, plan: RunPlan, loaded: LoadedModel, captions: list[str],
                     size: int | None = None) -> list[dict]:
        """Tokenised held-out batches: the scoring ``seq_len``, ``size`` captions each (default: the
        calibration batch size; :func:`autoquant_sweep.evaluation.eval_batch_size` picks it); a trailing
        partial batch is left out (:func:`eval_captions_used`)."""
        seq_len = int(plan.cfg["dataset"]["seq_len"])
        size = size or plan.batch_plan.batch_size
        used = eval_captions_used(captions, size)
        key = ("eval", loaded.identity, tuple(used), seq_len, size)
        if key not in self._batches:
            self._batches[key] = data_mod.tokenize_batches(loaded.tokenizer, used, seq_len, size)
        return self._batches[key]

    def unquantized_loss(self, plan: RunPlan, loaded: LoadedModel, captions: list[str],
                         size: int | None = None) -> float:
        """Held-out loss of the pristine (unquantized) model: computed once per process, split and
        batching."""
        from autoquant_sweep.evaluation import eval_loss

        seq_len = int(plan.cfg["dataset"]["seq_len"])
        size = size or plan.batch_plan.batch_size
        key = (loaded.identity, tuple(captions), seq_len, size, plan.device)
        if key not in self._unquantized_loss:
            batches = self.eval_batches(plan, loaded, captions, size)
            # on the run device, as the quantized copy is evaluated (a CPU pristine model is evaluated as is)
            model = device_copy(loaded.model, plan.device) if loaded.device != plan.device else loaded.model
            self._unquantized_loss[key] = eval_loss(model, batches, plan.device)
            del model
        return self._unquantized_loss[key]


MODEL_CACHE = ModelCache()


@dataclass
class Computed:
    """What the compute stage measured; the manifest (:func:`autoquant_sweep.manifest.build_manifest`)
    is made from it and the plan."""

    result: Any  # SensitivityResult, its model and search state released
    recipe: Any  # recipe.Recipe at the run's budget (its quant_cfg goes to recipe/quant_cfg.json)
    curve: list  # recipe.Recipe per budget of the grid, the run's budget included
    budget_grid: list[float]
    evaluation: dict[str, Any] | None  # None: nothing evaluated (autoquant.evaluate=false, short split)
    model_config: dict[str, Any]  # the loaded checkpoint's config.json
    load_seconds: float  # loading and tokenising (0-ish when the process had the model already)
    curve_seconds: float
    # what ModelOpt instantiated per role (quant.realized.summarize_realized), checked against the plan
    realized: dict[str, Any]
    scoring: dict[str, Any] | None = None  # recipe/scoring.json: what the mix merges (scoring.py)


def _run_autoquant(plan: RunPlan, cache: ModelCache, batches: list[dict]) -> Any:
    """``run_autoquant`` on a fresh copy of the pristine model at the run's budget.

    A budget below the reachable minimum was refused by the plan already (from ``config.json``); for a
    checkpoint whose shapes the plan cannot derive, ModelOpt's own refusal is a one-line error.
    """
    import torch

    from autoquant_sweep.sensitivity import run_autoquant

    c = plan.cfg
    aq = c["autoquant"]
    _, model = cache.model(plan)
    torch.manual_seed(int(aq["seed"]))
    return run_autoquant(
        model,
        batches,
        copy.deepcopy(plan.effective_format),
        format_label=f"{c['quant_pair']['format_name']}+{c['quant_granularity']['name']}",
        method=aq["method"],
        effective_bits=float(aq["effective_bits"]),
        num_calib_steps=plan.batch_plan.num_calib_steps,
        num_score_steps=plan.batch_plan.num_score_steps,
        disabled_layers=c["model"]["disabled_layers"],
        cost_excluded_modules=c["model"].get("cost_excluded_modules") or (),
        device=plan.device,
        verbose=bool(aq.get("verbose", False)),
    )


def _check_realized(plan: RunPlan, loaded: LoadedModel, quantized: Any,
                    batches: list[dict]) -> dict[str, Any]:
    """Read the quantizers ModelOpt instantiated and calibrated for this trial and stop the run (one line)
    when they are not the granularity the format declares (:mod:`autoquant_sweep.quant.realized`).

    The model ``auto_quantize`` returned carries the run budget's recipe: its quantized groups show the
    format. Where the budget kept every group at 16 bits, a copy of the pristine model is quantized with
    the format on one calibration batch instead, so every trial is checked.
    """
    from autoquant_sweep.quant.realized import check_realized, realize, summarize_realized

    c = plan.cfg
    t0 = time.perf_counter()
    quantizers, source = realize(quantized), "auto_quantize model"
    if not quantizers:
        import modelopt.torch.quantization as mtq

        probe = device_copy(loaded.model, plan.device)
        first = {k: v.to(plan.device) for k, v in batches[0].items()}
        from autoquant_sweep.sensitivity import quiet_modelopt

        verbose = plan.cfg["autoquant"].get("verbose", False)
        with contextlib.nullcontext() if verbose else quiet_modelopt():
            mtq.quantize(probe, copy.deepcopy(plan.effective_format), forward_loop=lambda m: m(**first))
        quantizers, source = realize(probe), "probe: the format on one calibration batch"
        del probe
    where = f"quant_pair={c['quant_pair']['name']} quant_granularity={c['quant_granularity']['name']}"
    check_realized(plan.declared_granularity, quantizers, where=where)
    summary = summarize_realized(quantizers)
    summary["source"] = source
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _eval_size(captions: list[str], preferred: int, calib_batch_size: int) -> int:
    """Captions per held-out batch: ``preferred`` unless the split is shorter than one such batch, then
    the calibration batch size (a short held-out file: whole calibration-size batches)."""
    return preferred if eval_captions_used(captions, preferred) else calib_batch_size


def _reference_before_the_trial(plan: RunPlan, cache: ModelCache, loaded: LoadedModel) -> None:
    """Off the pristine model's device (CUDA), the unquantized reference loss needs a copy of the model on
    the run device: compute it (once per process) before the trial's own copy exists, so the GPU never
    holds two. Computed for the batch size every trial uses unless a static per-token quantizer pins the
    calibration batch size (``evaluation.eval_batch_size``); that case computes its own later."""
    from autoquant_sweep.evaluation import MAX_EVAL_BATCH

    if plan.eval_split is None or loaded.device == plan.device:
        return
    captions = plan.eval_split[1]
    batch = plan.batch_plan.batch_size
    size = _eval_size(captions, max(batch, MAX_EVAL_BATCH), batch)
    if eval_captions_used(captions, size):
        cache.unquantized_loss(plan, loaded, captions, size)


def _evaluate(plan: RunPlan, cache: ModelCache, loaded: LoadedModel, quantized: Any,
              split: tuple[str, list[str]] | None) -> dict[str, Any] | None:
    """Held-out loss of the quantized model against the unquantized one (None: nothing evaluated)."""
    from autoquant_sweep.evaluation import eval_batch_size, evaluate

    if split is None:
        return None
    source, captions = split
    size = _eval_size(captions, eval_batch_size(quantized, plan.batch_plan.batch_size),
                      plan.batch_plan.batch_size)
    if not eval_captions_used(captions, size):
        log.warning("held-out split %s has fewer captions than one batch (%d): nothing evaluated",
                    source, size)
        return None
    t_unq = time.perf_counter()
    unquantized = cache.unquantized_loss(plan, loaded, captions, size)
    unq_seconds = time.perf_counter() - t_unq
    evaluation = evaluate(quantized, cache.eval_batches(plan, loaded, captions, size), unquantized,
                          len(eval_captions_used(captions, size)), plan.device)
    evaluation["batch_size"] = size
    evaluation["source"] = source
    # 0 after the first run of a process, and on CUDA (computed before the trial's copy existed)
    evaluation["unquantized_seconds"] = unq_seconds
    return evaluation


def evaluate_model(plan: RunPlan, quantized: Any, cache: ModelCache = MODEL_CACHE) -> dict[str, Any] | None:
    """Held-out loss of a quantized copy of the plan's model against the unquantized one, exactly as a
    trial's (the mix measures its recipe with it). None: nothing evaluated."""
    return _evaluate(plan, cache, cache.loaded(plan), quantized, plan.eval_split)


def spare_full_collections() -> None:
    """Move every object alive now to the garbage collector's permanent generation, once per process.

    ModelOpt's scoring runs two full ``gc.collect()`` per ``auto_quantize`` call; each walks every object
    of torch / transformers / MLflow / Optuna imported so far (~0.4 s on CPU in a plain process, more in a
    long-lived one), about a third of a tiny model's trial. Frozen before the first trial's model is
    loaded, those collections walk only what the trials create; the objects frozen are the imported
    modules and settings a process keeps anyway (no model, whose memory must come back). A frozen
    process (``gc.get_freeze_count()`` > 0) is left as it is. Not an example here: run by the doctests it
    would freeze the test worker (``tests/unit/test_process_state.py`` checks it in a fresh interpreter).
    """
    if gc.get_freeze_count() == 0:
        gc.collect()  # once: garbage of the imports is freed, not frozen
        gc.freeze()


def compute(plan: RunPlan, cache: ModelCache = MODEL_CACHE) -> Computed:
    """Load (or reuse) the model, run AutoQuant on the effective format, re-solve the recipe at the
    budget and the budget curve, and evaluate the returned (quantized) model on held-out captions."""
    import torch

    from autoquant_sweep.recipe import budget_curve, resolve_budget_grid
    from autoquant_sweep.scoring import scoring_record

    c = plan.cfg
    aq = c["autoquant"]
    log.info(
        "%s | %s (%s) + %s | effective quantizers: %s",
        c["model"]["name"],
        c["quant_pair"]["name"],
        c["quant_pair"]["format_name"],
        c["quant_granularity"]["name"],
        summarize_format(plan.effective_format),
    )
    spare_full_collections()
    t0 = time.perf_counter()
    loaded = cache.loaded(plan)
    batches = cache.batches(plan, loaded)
    load_seconds = time.perf_counter() - t0
    _reference_before_the_trial(plan, cache, loaded)
    memory = TrialMemory(plan.device)
    memory.start()  # before the trial's copy exists: its peak is the trial's own
    result = _run_autoquant(plan, cache, batches)
    realized = _check_realized(plan, loaded, result.model, batches)
    budget = float(aq["effective_bits"])
    t_curve = time.perf_counter()
    grid = resolve_budget_grid(aq.get("budget_grid"), result.format_bits, budget)
    curve = budget_curve(result.search_state, grid, run_budget=round(budget, 4))
    recipe = next(r for r in curve if abs(r.budget - round(budget, 4)) < 1e-9)
    # get_auto_quantize_config always says algorithm "max"; the one format searched here was calibrated
    # with its own algorithm (e.g. awq_lite for W4A8_AWQ_BETA_CFG), which mtq.quantize should repeat
    recipe.quant_cfg["algorithm"] = copy.deepcopy(plan.effective_format.get("algorithm", "max"))
    curve_seconds = time.perf_counter() - t_curve
    pair, gran = c["quant_pair"]["name"], c["quant_granularity"]["name"]
    scoring = scoring_record(result.search_state, plan.effective_format, format_label=f"{pair}+{gran}",
                             quant_pair=pair, quant_granularity=gran,
                             scoring_fingerprint=plan.scoring_fingerprint, run_fingerprint=plan.fingerprint)
    evaluation = _evaluate(plan, cache, loaded, result.model, plan.eval_split)
    result.peak_memory_mb, result.memory_kind = memory.peak_mb()
    result.model = None  # release the trial's quantized copy before the next trial starts
    result.search_state = None
    if plan.device == "cuda":
        # Quantizer hooks form reference cycles: collect them so the GPU memory really goes back
        # before the next trial. On CPU a full collection costs ~0.4 s per trial (every module of
        # torch / transformers / MLflow is tracked) and Python's own collector gets there anyway.
        gc.collect()
        torch.cuda.empty_cache()
    log.info(
        "total_sensitivity=%.6e recipe at %.4g bits: score %.6e, %.3f effective bits (%s), %d/%d groups "
        "quantized%s",
        result.total_sensitivity,
        budget,
        recipe.predicted_score,
        recipe.achieved_effective_bits,
        "fits" if recipe.satisfied else "does NOT fit the budget",
        len(recipe.quantized_groups),
        len(recipe.quantized_groups) + len(recipe.kept_16bit_groups),
        f"; eval loss {evaluation['eval_loss_delta']:+.4g} nats" if evaluation else "",
    )
    return Computed(
        result=result,
        recipe=recipe,
        curve=curve,
        budget_grid=grid,
        evaluation=evaluation,
        model_config=dict(loaded.config),
        load_seconds=load_seconds,
        curve_seconds=curve_seconds,
        realized=realized,
        scoring=scoring,
    )
