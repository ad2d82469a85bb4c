"""What a run returns to the sweeper: the objective names and the value(s) Optuna minimises.

``autoquant.objective`` selects the value(s) (design: Objectives; docs/recommendation.md). Pure: no
model, MLflow or ModelOpt import, so plan (which checks the name) and the sweep callback (which ranks
children by the first value) both read it cheaply.
"""

from __future__ import annotations

import math

# autoquant.objective -> the value(s) a sweeper minimises, in order
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "constrained_score": ("constrained_score",),
    "eval_loss_delta": ("eval_loss_delta",),
    "total_sensitivity": ("total_sensitivity",),
    # predicted damage of the recipe at the budget vs the effective bits it achieves; the sweep's
    # Pareto set over every trial's budget curve is on the parent run (tracking/recommendation.py)
    "pareto": ("constrained_score", "effective_bits"),
}


def objective_result(objectives: dict[str, float], objective: str) -> float | list[float]:
    """What the task returns to the sweeper: one float, or a list for multi-objective studies.

    A value the run does not have (``constrained_score`` of a recipe that does not fit the budget,
    ``eval_loss_delta`` of an unevaluated run) is ``inf``: such a trial never wins.

    Example:
        >>> objective_result({"constrained_score": 2.0, "effective_bits": 4.0}, "pareto")
        [2.0, 4.0]
        >>> objective_result({"total_sensitivity": 2.0}, "constrained_score")
        inf
    """
    values = [float(objectives.get(name, math.inf)) for name in OBJECTIVES[objective]]
    return values[0] if len(values) == 1 else values


def primary_metric(objective: str) -> str:
    """The metric a sweep's summary and registry rank by (``pareto`` -> its first objective).

    Example:
        >>> primary_metric("pareto")
        'constrained_score'
    """
    return OBJECTIVES.get(objective, (objective,))[0]


def finite(value: object) -> bool:
    """A metric value that counts: a real number, neither NaN nor infinite (``bool`` is not a number here).

    Example:
        >>> finite(2.5e-7), finite(float("nan")), finite(True), finite("1")
        (True, False, False, False)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
