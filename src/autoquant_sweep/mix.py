"""One answer from a whole study: the per-layer choice among every format it scored, at a budget.

Each trial scored every layer group under one format (:mod:`autoquant_sweep.scoring`). Trials with the
same scoring fingerprint scored them on the same model, batches, method, steps, seed, disabled layers,
cost model and package versions, so their candidates can be put side by side: per group, every trial's
candidate with its **own** score and cost, plus "keep 16 bits", in ModelOpt's order. ModelOpt's own
solver (``mtq.get_auto_quantize_config``) then picks, per group, the format (or 16 bits) that
minimises the summed score within the budget, as one joint ``mtq.auto_quantize`` call over all the
formats would (facts 25, 27), but without its clamp of a same-bits candidate's score to the previous
one's (facts 26).

Trials with another scoring fingerprint are left out, by name, with the reason; so is a second trial
of a format already in the mix (a cache hit, the same format from another sweep of the study).

**Solver precision.** ModelOpt's solver (PuLP/CBC, ``modelopt.torch.opt.searcher.LPS``) minimises the
summed score with CBC's default absolute tolerances. The tiny model's scores are 1e-8..1e-5, and there
CBC stops early: INT8 alone at 10 bits came back at 9.8 bits with 2.7x the score of the optimum it finds
once the scores are scaled up (the selection is invariant to a positive scale). So the mix, and the
single-format recipes it is compared with, are solved on scores scaled to a summed maximum of
:data:`SCORE_SCALE_TOTAL` (``rescale=True``); every reported score is unscaled. ``rescale=False`` is
ModelOpt's own answer on the raw scores (what one joint ``mtq.auto_quantize`` call would return).

This module only computes: reading the trials from MLflow and recording the mix is
:mod:`autoquant_sweep.tracking.mix_run`'s job.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from autoquant_sweep.recipe import BITS_TOLERANCE

KEEP_16 = "16-bit"
#: the scores are scaled so that the per-group maxima sum to this before ModelOpt's solver runs
SCORE_SCALE_TOTAL = 1e6


@dataclass
class MixTrial:
    """One trial's scoring record and where it came from."""

    record: dict[str, Any]
    run_id: str | None = None
    source: str = ""  # a path or an MLflow run, for messages
    requested: str = ""  # the run's own ``<pair>+<granularity>`` (a cache hit's may differ from the label)

    @property
    def label(self) -> str:
        """The format's name in the mix: ``<pair>+<granularity>`` (canonical when read from MLflow)."""
        return str(self.record["format_label"])

    @property
    def name(self) -> str:
        """The trial as asked for, and the run it came from."""
        what = self.requested or self.label
        return f"{what} (run {self.run_id})" if self.run_id else f"{what} ({self.source})"


@dataclass
class Excluded:
    """A trial left out of the mix, and why."""

    name: str
    reason: str


@dataclass
class MixPoint:
    """The mixed recipe at one budget, with what it achieves."""

    budget: float
    achieved_effective_bits: float
    satisfied: bool
    predicted_score: float
    choice: dict[str, str]  # group -> format label, or KEEP_16
    quant_cfg: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def counts(self) -> dict[str, int]:
        """How many groups take each format (``16-bit`` included), most first."""
        return dict(Counter(self.choice.values()).most_common())

    def curve_point(self) -> dict[str, Any]:
        """One entry of ``mix/budget_curve.json``."""
        data = asdict(self)
        data.pop("quant_cfg")
        data["counts"] = self.counts
        return data


def select_mixable(trials: Sequence[MixTrial], key: str | None = None
                   ) -> tuple[list[MixTrial], list[Excluded], str]:
    """The trials that mix under scoring fingerprint ``key`` (default: the one most trials share,
    ties to the first trial's), the ones left out with their reason, and the key.

    Example:
        >>> t = [MixTrial({"format_label": "a", "scoring_fingerprint": "k", "config_fingerprint": "1"}),
        ...      MixTrial({"format_label": "b", "scoring_fingerprint": "k", "config_fingerprint": "2"}),
        ...      MixTrial({"format_label": "c", "scoring_fingerprint": "z", "config_fingerprint": "3"}, "r3")]
        >>> mixed, left, key = select_mixable(t)
        >>> [m.label for m in mixed], key
        (['a', 'b'], 'k')
        >>> left[0].name, left[0].reason
        ('c (run r3)', 'scored on other inputs: scoring fingerprint z, the mix is k')
    """
    if not trials:
        return [], [], key or ""
    if key is None:
        counts = Counter(t.record["scoring_fingerprint"] for t in trials)
        top = max(counts.values())
        key = next(t.record["scoring_fingerprint"] for t in trials
                   if counts[t.record["scoring_fingerprint"]] == top)
    mixed: list[MixTrial] = []
    excluded: list[Excluded] = []
    seen: dict[str, MixTrial] = {}
    for trial in trials:
        fp = trial.record["scoring_fingerprint"]
        if fp != key:
            excluded.append(Excluded(trial.name, f"scored on other inputs: scoring fingerprint {fp}, "
                                                 f"the mix is {key}"))
            continue
        same = seen.get(trial.record["config_fingerprint"])
        if same is not None:
            excluded.append(Excluded(trial.name, f"the same effective format as {same.name}"))
            continue
        seen[trial.record["config_fingerprint"]] = trial
        mixed.append(trial)
    return mixed, excluded, key


def merged_state(trials: Sequence[MixTrial]) -> dict[str, Any]:
    """ModelOpt's search state over every trial's candidates (``scoring.search_state``)."""
    from autoquant_sweep.scoring import search_state

    return search_state([t.record for t in trials])


def _labels(state: Mapping[str, Any], trials: Sequence[MixTrial]) -> dict[str, str]:
    """Candidate signature -> the trial's format label."""
    from autoquant_sweep.scoring import candidate

    return {candidate(t.record["format"], t.label).checkpoint_signature: t.label for t in trials}


def _best(state: Mapping[str, Any], budget: float) -> dict[str, Any]:
    """ModelOpt's choice per group at ``budget``: the solver step of the public
    ``mtq.get_auto_quantize_config`` (the same private helper :func:`autoquant_sweep.recipe._selection`
    uses; ``tests/integration/test_mix.py`` checks the quantized modules against the public config)."""
    from modelopt.torch.quantization.algorithms import _resolve_best_recipe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _resolve_best_recipe(state, {"effective_bits": float(budget)})


def rescaled(state: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``state`` whose scores are scaled so that the per-group maxima sum to
    :data:`SCORE_SCALE_TOTAL` (module docstring: solver precision); the formats are the same objects.

    Example:
        >>> s = rescaled({"candidate_stats": {"a": {"scores": [2e-7, 0.0]}, "b": {"scores": [3e-7, 0.0]}}})
        >>> [v["scores"][0] for v in s["candidate_stats"].values()]
        [400000.0, 600000.0]
    """
    total = math.fsum(max(s["scores"], default=0.0) for s in state["candidate_stats"].values())
    factor = SCORE_SCALE_TOTAL / total if total > 0 else 1.0
    out = dict(state)
    out["candidate_stats"] = {name: {**s, "scores": [float(x) * factor for x in s["scores"]]}
                              for name, s in state["candidate_stats"].items()}
    return out


def solve_mix(state: Mapping[str, Any], budget: float, labels: Mapping[str, str], *,
              with_config: bool = True, solver_state: Mapping[str, Any] | None = None) -> MixPoint:
    """Re-solve the merged state at ``budget`` and measure it the way :mod:`autoquant_sweep.recipe` does:
    achieved bits from the chosen candidates' costs over ModelOpt's cost denominator, predicted score the
    sum of the chosen candidates' (unscaled) scores, ``satisfied`` when the bits fit.

    ``solver_state``: what ModelOpt's solver and ``mtq.get_auto_quantize_config`` run on (default
    ``state``; :func:`rescaled` for the precise answer)."""
    import modelopt.torch.quantization as mtq

    solver_state = state if solver_state is None else solver_state
    best = _best(solver_state, budget)
    stats = state["candidate_stats"]
    total = float(state.get("cost_denominator") or 0.0) or math.fsum(
        float(s["uncompressed_cost"]) for s in stats.values())
    cost, score, choice = [], [], {}
    for name, s in stats.items():
        group = name.removesuffix(".quant_recipe")
        fmt = best.get(name)
        signature = getattr(fmt, "checkpoint_signature", None)
        index = next((i for i, f in enumerate(s["formats"]) if f.checkpoint_signature == signature), None)
        label = labels.get(signature) if signature is not None else None
        if index is None or label is None:  # "keep 16 bits" (or a group with nothing on offer)
            cost.append(float(s["uncompressed_cost"]))
            if any(f.checkpoint_signature in labels for f in s["formats"]):
                choice[group] = KEEP_16
            continue
        cost.append(float(s["costs"][index]))
        score.append(float(s["scores"][index]))
        choice[group] = label
    achieved = math.fsum(cost) / total * 16 if total > 0 else 16.0
    cfg: dict[str, Any] = {}
    if with_config:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = mtq.get_auto_quantize_config(solver_state, {"effective_bits": float(budget)})
    return MixPoint(budget=float(budget), achieved_effective_bits=achieved,
                    satisfied=achieved <= float(budget) + BITS_TOLERANCE, predicted_score=math.fsum(score),
                    choice=choice, quant_cfg=cfg)


def mix_curve(trials: Sequence[MixTrial], budgets: Iterable[float], run_budget: float | None = None, *,
              rescale: bool = True, with_config: bool = True) -> list[MixPoint]:
    """The mix at every budget; with ``run_budget`` only that point builds its ``mtq.quantize`` config
    (``with_config=False``: none does). ``rescale``: solve on :func:`rescaled` scores."""
    state = merged_state(trials)
    labels = _labels(state, trials)
    solver_state = rescaled(state) if rescale else state
    return [solve_mix(state, b, labels, solver_state=solver_state,
                      with_config=with_config and (run_budget is None or abs(b - run_budget) < 1e-9))
            for b in sorted({round(float(b), 4) for b in budgets})]


def single_curves(trials: Sequence[MixTrial], budgets: Iterable[float], *, rescale: bool = True
                  ) -> dict[str, list[MixPoint]]:
    """Each trial's own single-format recipe at every budget, by format label, solved exactly as the mix
    is (so the gain is the mix's, not the solver's): what the mix is compared with."""
    return {t.label: mix_curve([t], budgets, rescale=rescale, with_config=False) for t in trials}


def gain_table(curve: Sequence[MixPoint], singles: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Per budget: the best satisfied single-format recipe, the mix, and how much lower the mix is.

    ``ratio`` = best single's predicted score / the mix's (None when either does not fit or the mix
    scores 0).
    """
    rows = []
    for i, point in enumerate(curve):
        fits = [(label, recipes[i]) for label, recipes in singles.items() if recipes[i].satisfied]
        label, single = min(fits, key=lambda f: f[1].predicted_score) if fits else (None, None)
        ratio = None
        if single is not None and point.satisfied and point.predicted_score > 0:
            ratio = single.predicted_score / point.predicted_score
        rows.append({
            "budget": point.budget,
            "best_single": label,
            "best_single_score": single.predicted_score if single else None,
            "best_single_bits": single.achieved_effective_bits if single else None,
            "mix_score": point.predicted_score,
            "mix_bits": point.achieved_effective_bits,
            "mix_satisfied": point.satisfied,
            "mix_counts": point.counts,
            "ratio": ratio,
        })
    return rows


def gain_lines(rows: Sequence[Mapping[str, Any]], run_budget: float | None = None) -> list[str]:
    """The gain table as Markdown."""
    lines = ["| budget | best single format (predicted score, bits) | mix (predicted score, bits, groups per "
             "format) | mix is lower by |", "|---|---|---|---|"]
    for r in rows:
        b = f"{r['budget']:g}" + (" (run budget)" if run_budget is not None
                                  and abs(r["budget"] - run_budget) < 1e-9 else "")
        single = (f"{r['best_single']}, {r['best_single_score']:.3e} ({r['best_single_bits']:.3f})"
                  if r["best_single"] else "none fits")
        counts = ", ".join(f"{k} {v}" for k, v in r["mix_counts"].items())
        mix = (f"{r['mix_score']:.3e} ({r['mix_bits']:.3f}; {counts})" if r["mix_satisfied"]
               else f"does not fit ({r['mix_bits']:.3f} bits)")
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        lines.append(f"| {b} | {single} | {mix} | {ratio} |")
    return lines


def calibration_algorithm(point: MixPoint, trials: Sequence[MixTrial]) -> tuple[Any, dict[str, Any]]:
    """The one ``algorithm`` ``mtq.quantize`` calibrates the mixed recipe with, and what it means.

    ``mtq.quantize`` takes one calibration algorithm per call. When every format the recipe uses has the
    same one, that is it; otherwise the recipe is calibrated with ``max`` and the note names the formats
    whose own algorithm (``awq_lite``, ``smoothquant``, ...) is not applied, so the measured loss is of
    the recipe as exported, calibrated as it says.
    """
    used = {label for label in point.choice.values() if label != KEEP_16}
    algos = {t.label: t.record["format"].get("algorithm", "max") for t in trials if t.label in used}
    distinct = {str(a) for a in algos.values()}
    if len(distinct) <= 1:
        algo = next(iter(algos.values())) if algos else "max"
        return copy.deepcopy(algo), {"algorithm": algo, "per_format": algos, "not_applied": {}}
    not_applied = {k: v for k, v in algos.items() if v != "max"}
    return "max", {"algorithm": "max", "per_format": algos, "not_applied": not_applied}


def mix_description(point: MixPoint, excluded: Sequence[Excluded], trials: Sequence[MixTrial]) -> str:
    """How many groups take each format, at which bits and predicted score; what was left out."""
    counts = ", ".join(f"{label} {n}" for label, n in point.counts.items())
    lines = [f"Mix of {len(trials)} formats at {point.budget:g} bits: {counts} groups; "
             f"{point.achieved_effective_bits:.3f} effective bits "
             f"({'fits' if point.satisfied else 'does NOT fit'}), "
             f"predicted score {point.predicted_score:.4e}."]
    lines += [f"left out: {e.name}: {e.reason}" for e in excluded]
    return "\n".join(lines)


def mix_quant_cfg(point: MixPoint, trials: Sequence[MixTrial]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The mixed recipe as ``mtq.quantize`` takes it (the calibration algorithm set), and the calibration
    note (:func:`calibration_algorithm`)."""
    algorithm, note = calibration_algorithm(point, trials)
    cfg = copy.deepcopy(point.quant_cfg)
    cfg["algorithm"] = algorithm
    return cfg, note


def measure_mix(quant_cfg: Mapping[str, Any], plan: Any, cache: Any = None) -> dict[str, Any] | None:
    """``mtq.quantize`` a fresh copy of the plan's pristine model with the mixed recipe, calibrated on the
    batches the trials calibrated on (the first ``num_calib_steps``), and measure its held-out loss the
    way a trial's is measured (:func:`autoquant_sweep.compute.evaluate_model`). None: nothing evaluated.

    ``plan``: a :class:`~autoquant_sweep.plan.RunPlan` of one mixed trial (the scoring fingerprint
    guarantees they share model, batches and device).
    """
    import time

    import modelopt.torch.quantization as mtq
    import torch

    from autoquant_sweep.compute import MODEL_CACHE, evaluate_model

    cache = cache or MODEL_CACHE
    loaded, model = cache.model(plan)
    calib = cache.batches(plan, loaded)[: plan.batch_plan.num_calib_steps]

    def forward_loop(m: Any) -> None:
        with torch.no_grad():
            for batch in calib:
                m(**{k: v.to(plan.device) for k, v in batch.items()})

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = mtq.quantize(model, copy.deepcopy(dict(quant_cfg)), forward_loop)
    calibrate_s = time.perf_counter() - t0
    evaluation = evaluate_model(plan, quantized, cache)
    if evaluation is not None:
        evaluation["calibration_seconds"] = calibrate_s
    return evaluation
