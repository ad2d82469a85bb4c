"""One ``mtq.auto_quantize`` call with one candidate format, and the per-layer table it produced.

ModelOpt is asked about exactly one effective format per call: several formats in one call that differ
only in granularity were measured to come back with identical scores (facts file, item 4).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from autoquant_sweep.errors import SensitivityResultError, UserInputError

log = logging.getLogger(__name__)

METHODS = ("gradient", "kl_div")


@dataclass(frozen=True)
class LayerSensitivity:
    """One AutoQuant decision group (e.g. q/k/v of a layer share one recipe)."""

    group: str
    modules: tuple[str, ...]
    score: float
    cost: float
    uncompressed_cost: float
    bits: float
    chosen_in_budget: bool


@dataclass
class SensitivityResult:
    """What ModelOpt computed for one effective format, plus how long it took."""

    format_label: str
    method: str
    layers: list[LayerSensitivity]
    total_sensitivity: float
    constrained_score: float
    constrained_effective_bits: float
    constraint_satisfied: bool
    format_bits: float
    num_calib_steps: int
    num_score_steps: int
    seconds: dict[str, float | None] = field(default_factory=dict)
    # the trial's own peak, measured around the whole trial by compute (trial_memory.TrialMemory)
    peak_memory_mb: float = 0.0
    memory_kind: str = "not_measured"

    def objectives(self) -> dict[str, float]:
        """The values a sweep can optimise (see design: Objectives)."""
        return {
            "total_sensitivity": self.total_sensitivity,
            "constrained_score": self.constrained_score,
            "effective_bits": self.constrained_effective_bits,
            "format_bits": self.format_bits,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = [asdict(layer) | {"modules": list(layer.modules)} for layer in self.layers]
        return data


#: ModelOpt warnings that hold by design on every trial: the project always passes its own (custom)
#: effective format, and AutoQuant's gradient scoring turns on gradient checkpointing of its model copy
BY_DESIGN_WARNINGS = {
    "Received custom quantization formats": "every trial passes the project's own effective format as a "
    "custom format (by design: one overlay-built format per call)",
    "Enabling gradient checkpointing": "AutoQuant's gradient scoring enables gradient checkpointing on the "
    "trial's own model copy, which is discarded after the trial",
}
#: the by-design warnings this process has explained in the log (each once; reset between sweeps run in
#: one interpreter: :mod:`autoquant_sweep.process_state`)
EXPLAINED_WARNINGS: set[str] = set()


@contextlib.contextmanager
def quiet_modelopt() -> Iterator[None]:
    """ModelOpt's per-trial noise off: its tqdm bars and prints (``Inserted 106 quantizers``) go to the
    debug log, and the warnings of :data:`BY_DESIGN_WARNINGS` are explained once per process in the log.
    ``autoquant.verbose=true`` runs without it.

    The bars are ``tqdm``'s, written to ``sys.stderr`` as it is when a bar starts (tqdm reads its
    ``TQDM_DISABLE`` default at import, too early to switch here), so both streams are captured for the
    call; logging handlers keep the real streams, and an exception leaves the block before it is printed.
    """
    captured = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(captured), \
                contextlib.redirect_stderr(captured):
            warnings.simplefilter("always")
            yield
    finally:
        for line in captured.getvalue().replace("\r", "\n").splitlines():
            if line.strip():
                log.debug("modelopt: %s", line)
    for warning in caught:
        text = str(warning.message)
        known = next((key for key in BY_DESIGN_WARNINGS if key in text), None)
        if known is None:  # not known to be harmless: shown as ModelOpt raised it
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        elif known not in EXPLAINED_WARNINGS:
            EXPLAINED_WARNINGS.add(known)
            log.info("ModelOpt warns %r: expected, %s (autoquant.verbose=true shows ModelOpt's output)",
                     text[:80], BY_DESIGN_WARNINGS[known])


class PhaseClock:
    """The batches as an iterable that notes when each pass over them starts.

    ModelOpt iterates ``data_loader`` once to calibrate and once to score, whatever the method
    (``gradient`` and ``kl_div`` alike), so the last pass's start is where scoring began. A clock
    that saw fewer than two passes cannot split the time: the split is then ``None`` (not measured).

    Example:
        >>> clock = PhaseClock([1, 2])
        >>> [list(clock), list(clock)] and len(clock.starts)
        2
        >>> PhaseClock([1]).split(0.0, 1.0)
        (None, None)
    """

    def __init__(self, batches: Sequence[Any]) -> None:
        self.batches = batches
        self.starts: list[float] = []

    def __iter__(self) -> Any:
        self.starts.append(time.perf_counter())
        return iter(self.batches)

    def split(self, start: float, end: float) -> tuple[float | None, float | None]:
        """(calibration, scoring) seconds of a call that ran from ``start`` to ``end``."""
        if len(self.starts) < 2:
            return None, None
        return self.starts[-1] - start, end - self.starts[-1]


def _forward_for(method: str):
    if method == "gradient":
        return lambda model, batch: model(**batch)
    # kl_div compares logits of the quantized and unquantized model
    return lambda model, batch: model(**batch).logits


def run_autoquant(
    model: Any,
    batches: Sequence[dict],
    quant_format: dict,
    *,
    format_label: str,
    method: str = "gradient",
    effective_bits: float = 10.0,
    num_calib_steps: int,
    num_score_steps: int,
    disabled_layers: Sequence[str] = ("*lm_head*",),
    cost_excluded_modules: Sequence[str] = (),
    device: str = "cpu",
    verbose: bool = False,
) -> SensitivityResult:
    """Score every searchable layer group of ``model`` under ``quant_format`` (modifies ``model``).

    ``cost_excluded_modules``: module-name patterns whose groups ModelOpt leaves out of the effective-bits
    cost (``constraints["cost"]["excluded_module_name_patterns"]``), e.g. a VL model's vision tower.

    Raises :class:`SensitivityResultError` when every score is zero (nothing was quantized) or any
    score is non-finite, and :class:`UserInputError` for an infeasible ``effective_bits`` budget
    (ModelOpt checks it before calibration).

    Example:
        >>> result = run_autoquant(model, batches, fmt, format_label="INT8_DEFAULT_CFG",
        ...                        num_calib_steps=4, num_score_steps=4)  # doctest: +SKIP
        >>> result.total_sensitivity  # doctest: +SKIP
    """
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.algorithms import QuantRecipe

    if method not in METHODS:
        raise UserInputError(
            f"autoquant.method: unknown method '{method}'; choose one of {', '.join(METHODS)}"
        )
    clock = PhaseClock([{k: v.to(device) for k, v in b.items()} for b in batches])
    forward = _forward_for(method)

    def loss_func(output: Any, batch: dict) -> Any:
        return output.loss

    constraints: dict[str, Any] = {"effective_bits": float(effective_bits)}
    if cost_excluded_modules:
        constraints["cost"] = {"excluded_module_name_patterns": list(cost_excluded_modules)}

    start = time.perf_counter()
    try:
        with contextlib.nullcontext() if verbose else quiet_modelopt():
            quantized_model, state = mtq.auto_quantize(
                model,
                constraints=constraints,
                quantization_formats=[quant_format],
                data_loader=clock,
                forward_step=forward,
                loss_func=loss_func if method == "gradient" else None,
                disabled_layers=list(disabled_layers),
                num_calib_steps=num_calib_steps,
                num_score_steps=num_score_steps,
                verbose=False,
                method=method,
            )
    except ValueError as exc:
        if "infeasible" in str(exc):
            raise UserInputError(f"autoquant.effective_bits: {exc} (format {format_label})") from exc
        raise
    except AssertionError as exc:
        if "effective_bits" in str(exc):
            raise UserInputError(f"autoquant.effective_bits: {exc}") from exc
        raise
    end = time.perf_counter()

    no_quant = QuantRecipe(quant_cfg=None)
    best_recipe = state["best"].get("recipe", {})
    layers = []
    for name, stats in state["candidate_stats"].items():
        candidates = [i for i, fmt in enumerate(stats["formats"]) if fmt != no_quant]
        if not candidates:
            continue  # a disabled layer: only "do not quantize" was on offer
        if len(candidates) != 1:
            raise SensitivityResultError(
                f"{format_label}: expected one candidate format per group, got {len(candidates)} for {name}"
            )
        i = candidates[0]
        none_idx = [j for j, fmt in enumerate(stats["formats"]) if fmt == no_quant]
        uncompressed = stats.get("uncompressed_cost", stats["costs"][none_idx[0]] if none_idx else 0.0)
        chosen = best_recipe.get(name)
        layers.append(
            LayerSensitivity(
                group=name.removesuffix(".quant_recipe"),
                modules=tuple(stats["module_names"]),
                score=float(stats["scores"][i]),
                cost=float(stats["costs"][i]),
                uncompressed_cost=float(uncompressed),
                bits=float(stats["formats"][i].compression * 16),
                chosen_in_budget=chosen is not None and chosen != no_quant,
            )
        )
    check_scores(layers, format_label)
    calibration_seconds, scoring_seconds = clock.split(start, end)
    best = state["best"]
    result = SensitivityResult(
        format_label=format_label,
        method=method,
        layers=layers,
        total_sensitivity=math.fsum(layer.score for layer in layers),
        constrained_score=float(best["score"]),
        constrained_effective_bits=float(best["constraints"]["effective_bits"]),
        constraint_satisfied=bool(best["is_satisfied"]),
        format_bits=layers[0].bits,
        num_calib_steps=num_calib_steps,
        num_score_steps=num_score_steps,
        seconds={
            "autoquant": end - start,
            "calibration": calibration_seconds,
            "scoring": scoring_seconds,
        },
    )
    # Not dataclass fields (never serialised): the search state re-solves recipes at other budgets
    # (recipe.solve_recipe) and the returned model is quantized + calibrated with the best recipe.
    result.search_state = state
    result.model = quantized_model
    return result


def check_scores(layers: Sequence[LayerSensitivity], format_label: str) -> None:
    """Refuse results that are not sensitivities: no layers, any non-finite or all-zero scores."""
    if not layers:
        raise SensitivityResultError(f"{format_label}: AutoQuant scored no layer group (nothing searchable)")
    bad = [layer.group for layer in layers if not math.isfinite(layer.score)]
    if bad:
        raise SensitivityResultError(
            f"{format_label}: non-finite sensitivity score for {len(bad)} group(s), first {bad[0]}"
        )
    if all(layer.score == 0.0 for layer in layers):
        raise SensitivityResultError(
            f"{format_label}: every per-layer score is 0.0, so nothing was quantized "
            "(a rule that disables every quantizer?); this is not a sensitivity result"
        )
