"""Which combinations of a grid study are left to run: every combination at most once, across reruns.

hydra-optuna-sweeper caps ``n_trials`` at the size of the grid, not at what is left of it, and Optuna's
``GridSampler`` re-proposes finished combinations once its grid is used up (with a warning). So a rerun of
a finished study recomputed every combination, and a partly finished one repeated some. The sweep asks
for at most the combinations that no trial of the study has taken yet (finished, failed / refused or
running): the sweep callback stops a sweep with none left before anything is created, and the sweeper
caps ``n_trials`` at the rest (:class:`~autoquant_sweep.search.sweeper.AutoquantOptunaSweeper`).

The grid is read the way the plugin reads it: ``hydra.sweeper.params`` followed by the command line's
overrides, parsed by the plugin's own :func:`create_params_from_overrides`; fixed values are not part of it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

GRID_SAMPLER = "optuna.samplers.GridSampler"


def _distributions(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> dict[str, Any]:
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    overrides = [f"{k!s}={v}" for k, v in (params or {}).items()] + [str(a) for a in arguments]
    return create_params_from_overrides(overrides)[0]


def _choices(distribution: Any) -> list[Any] | None:
    """The values of a grid parameter (categorical or integer), None for any other distribution."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    return None


def grid_space(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> dict[str, list[Any]] | None:
    """The grid ``{name: choices}`` of ``hydra.sweeper.params`` plus the command line's ``arguments``;
    None when a parameter has no finite set of values (a float interval: not a grid).

    Example:
        >>> grid_space({"quant_pair": "choice(a,b)"}, ["quant_granularity=choice(x,y)", "dataset.size=small"])
        {'quant_pair': ['a', 'b'], 'quant_granularity': ['x', 'y']}
    """
    space = {name: _choices(dist) for name, dist in _distributions(params, arguments).items()}
    return None if any(choices is None for choices in space.values()) else space  # type: ignore[return-value]


def space_identity(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> dict[str, Any]:
    """The search space as part of a study's identity: ``{name: choices}`` in order (Optuna refuses a
    parameter whose choices change within a study: ``CategoricalDistribution does not support dynamic
    value space``), the distribution's text for a parameter without a finite set of values.

    Example:
        >>> space_identity({"quant_pair": "choice(a,b)"}, ["seed=interval(0,1)"])
        {'quant_pair': ['a', 'b'], 'seed': 'FloatDistribution(high=1.0, log=False, low=0.0, step=None)'}
    """
    distributions = _distributions(params, arguments)
    return {name: _choices(dist) or repr(dist) for name, dist in distributions.items()}


def taken(trials: Iterable[Any], names: Sequence[str]) -> set[tuple[Any, ...]]:
    """The combinations (values of ``names``, in order) that ``trials`` took: finished (complete, failed
    or refused, pruned) or running. A trial without all of ``names`` belongs to another space."""
    import optuna

    states = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE,
              optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
    return {tuple(t.params[n] for n in names) for t in trials
            if t.state in states and all(n in t.params for n in names)}


def combinations_left(space: Mapping[str, Sequence[Any]], trials: Iterable[Any]) -> list[tuple[Any, ...]]:
    """The combinations of ``space`` that no trial in ``trials`` took (:func:`taken`), in grid order.

    Example:
        >>> import optuna
        >>> from optuna.distributions import CategoricalDistribution
        >>> ran = optuna.trial.create_trial(params={"p": "a"}, value=1.0,
        ...                                 distributions={"p": CategoricalDistribution(["a", "b"])})
        >>> combinations_left({"p": ["a", "b"]}, [ran])
        [('b',)]
    """
    names = list(space)
    done = taken(trials, names)
    return [combo for combo in itertools.product(*(space[n] for n in names)) if combo not in done]


def nothing_left_text(study_name: str, space: Mapping[str, Sequence[Any]], trials: Sequence[Any]) -> str:
    """The one line of a grid study with no combination left (what ran, what to do instead)."""
    import optuna

    names = list(space)
    size = len(list(itertools.product(*space.values())))
    complete = len(taken([t for t in trials if t.state == optuna.trial.TrialState.COMPLETE], names)
                   & set(itertools.product(*space.values())))
    return (f"study '{study_name}' has run every combination of its search space ({size} of {size}: "
            f"{complete} complete, {size - complete} failed, refused or running); nothing new was run and "
            "nothing registered. Widen the space (e.g. quant_granularity=choice(...)), or recompute one "
            "combination as a single run with autoquant.cache=false")
