"""The canonical granularity name of an effective config: the one results are recorded under.

Several granularities can give a pair the same effective config: an activation overlay on a weight-only
pair is a no-op (``a_per_token_dynamic`` on ``wint4_afp16`` *is* ``default``), and
``recipe_match_channel_token`` on a weight-only pair equals ``w_per_out_channel``. Such a trial is a
cache hit of the computed one, and the registry, the sweep summary and the printed best name it by its
canonical granularity, never by a no-op:

* ``default`` when the effective config is the pair's own format;
* else, among the granularities with this very effective config, the one with the fewest override
  patterns (nothing in it is a no-op), ties broken by the vocabulary order.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any


@functools.lru_cache(maxsize=1)
def _granularities() -> tuple[tuple[str, int, Any], ...]:
    from autoquant_sweep.config.groups import load_group
    from autoquant_sweep.quant.overlay import validate_overrides

    out = []
    for gran in load_group("quant_granularity"):
        raw = gran.get("quant_cfg_overrides") or {}
        try:
            overrides = validate_overrides(raw)
        except ValueError:
            continue
        out.append((str(gran["name"]), len(overrides), overrides))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _fingerprints(format_name: str) -> dict[str, str]:
    from autoquant_sweep.quant.formats import resolve_format
    from autoquant_sweep.quant.overlay import apply_overlay

    base = resolve_format(format_name)
    out = {}
    for name, _, overrides in _granularities():
        try:
            out[name] = _costless_fingerprint(apply_overlay(base, overrides).format)
        except ValueError:
            continue
    out["default"] = _costless_fingerprint(base)
    return out


def _costless_fingerprint(fmt: Mapping[str, Any]) -> str:
    """Fingerprint of a format with its memory cost normalised (``quant.cost``: the cost model's
    ``effective_bits`` say what a format costs, not which granularity it is)."""
    from autoquant_sweep.fingerprints import config_fingerprint
    from autoquant_sweep.quant.cost import with_cost_model

    return config_fingerprint(with_cost_model(fmt, "storage"))


def canonical_name(pair: Mapping[str, Any], granularity: str, effective_format: Mapping[str, Any],
                   device: str = "cpu") -> str:
    """Canonical granularity of ``effective_format`` on ``pair`` (``device`` is kept for callers' symmetry).

    Example:
        >>> canonical_name({"format_name": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"}, "a_per_token_dynamic",
        ...                resolve_format("INT4_BLOCKWISE_WEIGHT_ONLY_CFG"))  # doctest: +SKIP
        'default'
    """
    try:
        prints = _fingerprints(str(pair["format_name"]))
    except Exception:  # an unknown project format: nothing to compare with
        return granularity
    mine = _costless_fingerprint(dict(effective_format))
    if prints.get("default") == mine:
        return "default"
    same = [(patterns, i, name) for i, (name, patterns, _) in enumerate(_granularities())
            if prints.get(name) == mine]
    return min(same)[2] if same else granularity
