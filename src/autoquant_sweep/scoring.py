"""What one trial scored, kept so that it can be merged later: ``recipe/scoring.json``.

ModelOpt's own ``checkpoint=`` file is a ``torch.save`` of the search state (``QuantRecipe`` objects,
every calibrated quantizer's state): it needs ModelOpt and ``weights_only=False`` to read and weighs
what the calibration weighs. The solver needs far less, so every computed trial writes this documented
JSON instead (a few kB on the tiny model), and :func:`search_state` rebuilds ModelOpt's search state
from one or several of them. It travels with the report (report folder, the run's MLflow ``recipe/``
artifacts, which a cache hit restores and logs again), so any process that can read an MLflow store
(SQLite, PostgreSQL, a server) can read it.

Schema ``autoquant-sweep/scoring/1`` (a test pins it against a live ``mtq.auto_quantize`` state)::

    {"schema": "autoquant-sweep/scoring/1",
     "format_label": "wint4_afp16+w_group64",     # pair + granularity
     "quant_pair": ..., "quant_granularity": ...,
     "scoring_fingerprint": ..., "run_fingerprint": ..., "config_fingerprint": ...,
     "format": {...},            # the effective format (JSON form: block_sizes keys "-1"), the one
                                 # candidate of the call; QuantRecipe(format) has the state's signature
     "format_bits": 4.25,        # ModelOpt's cost of the format, bits per weight
     "method": "gradient", "cost_model": "weight", "cost": {}, "active_moe_expert_ratio": null,
     "cost_denominator": 655360.0, "disabled_layers": ["*lm_head*"],
     "groups": {"<module>.quant_recipe": {
         "module_names": [...], "quantizer_attrs": {"<module>": [...]}, "cost_weight": 1.0,
         "allow_no_quant": true, "is_fixed": false, "uncompressed_cost": 32768.0,
         "score": 2.9e-05,       # null: no candidate (a disabled group: only "keep 16 bits")
         "cost": 8704.0}}}       # the candidate's cost (ModelOpt's, weights x bits / 16)

Scores are ModelOpt's own, unclamped: one format per call, so ``initialize_candidate_stats``' clamp to
the previous candidate's score (facts 26) never applies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA = "autoquant-sweep/scoring/1"
SCORING_FILE = "scoring.json"
#: search-state keys the solver (``mtq.get_auto_quantize_config``) reads besides ``candidate_stats``
STATE_KEYS = ("method", "cost_model", "cost", "active_moe_expert_ratio", "cost_denominator",
              "disabled_layers")
GROUP_KEYS = ("module_names", "quantizer_attrs", "cost_weight", "allow_no_quant", "is_fixed",
              "uncompressed_cost")


class ScoringRecordError(ValueError):
    """A scoring record that cannot be read or does not describe its state."""


def _json(value: Any) -> Any:
    from autoquant_sweep.fingerprints import canonical_json

    return json.loads(canonical_json(value))


def scoring_record(state: Mapping[str, Any], quant_format: Mapping[str, Any], *, format_label: str,
                   quant_pair: str, quant_granularity: str, scoring_fingerprint: str,
                   run_fingerprint: str) -> dict[str, Any]:
    """The JSON record of one ``mtq.auto_quantize`` call with the one candidate ``quant_format``.

    Raises :class:`ScoringRecordError` when a group holds another candidate than ``quant_format`` (the
    record would not rebuild the state) or the state has a fixed quantization config.
    """
    from autoquant_sweep.fingerprints import config_fingerprint

    if state.get("fixed_quantization_config") is not None:
        raise ScoringRecordError(f"{format_label}: a search with a fixed_quantization_config is not recorded")
    signature = candidate(quant_format, format_label).checkpoint_signature
    no_quant = _no_quant()
    groups: dict[str, Any] = {}
    bits = None
    for name, stats in state["candidate_stats"].items():
        entry = {key: _json(stats[key]) for key in GROUP_KEYS}
        found = [(fmt, score, cost) for fmt, score, cost in zip(stats["formats"], stats["scores"],
                                                                  stats["costs"], strict=True)
                 if fmt != no_quant]
        if len(found) > 1 or any(fmt.checkpoint_signature != signature for fmt, _, _ in found):
            raise ScoringRecordError(f"{format_label}: group {name} holds another candidate than the "
                                     f"recorded format ({', '.join(str(f) for f, _, _ in found)})")
        if found:
            fmt, score, cost = found[0]
            entry["score"], entry["cost"] = float(score), float(cost)
            bits = fmt.compression * 16
        else:
            entry["score"] = entry["cost"] = None
        groups[name] = entry
    return {
        "schema": SCHEMA,
        "format_label": format_label,
        "quant_pair": quant_pair,
        "quant_granularity": quant_granularity,
        "scoring_fingerprint": scoring_fingerprint,
        "run_fingerprint": run_fingerprint,
        "config_fingerprint": config_fingerprint(quant_format),
        "format": _json(quant_format),
        "format_bits": bits,
        **{key: _json(state.get(key)) for key in STATE_KEYS},
        "groups": groups,
    }


def write_record(folder: Path, record: Mapping[str, Any]) -> Path:
    """``<folder>/scoring.json`` (the report's ``recipe/`` folder)."""
    from autoquant_sweep.report import dump_json

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SCORING_FILE
    path.write_text(dump_json(dict(record)))
    return path


def read_record(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse and check a record; ``where`` names it in the one-line error."""
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise ScoringRecordError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        got = record.get("schema") if isinstance(record, dict) else type(record).__name__
        raise ScoringRecordError(f"{where}: not a scoring record of schema {SCHEMA} (got {got!r})")
    missing = [k for k in ("format", "groups", "scoring_fingerprint", *STATE_KEYS) if k not in record]
    if missing:
        raise ScoringRecordError(f"{where}: scoring record lacks {', '.join(missing)}")
    return record


def format_from_json(fmt: Mapping[str, Any]) -> dict[str, Any]:
    """A record's ``format`` back into the dict ModelOpt took (int ``block_sizes`` keys, rule list)."""
    from autoquant_sweep.recipe import quantize_config_from_json

    return quantize_config_from_json(json.dumps(fmt))


def _no_quant() -> Any:
    from modelopt.torch.quantization.algorithms import QuantRecipe

    return QuantRecipe(quant_cfg=None)


def candidate(quant_format: Mapping[str, Any], label: str) -> Any:
    """ModelOpt's ``QuantRecipe`` of a format, named ``label`` (ModelOpt's own name if it is a preset)."""
    import warnings

    from modelopt.torch.quantization.algorithms import QuantRecipe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return QuantRecipe(quant_cfg=format_from_json(_json(quant_format)), name=label)


def search_state(records: list[Mapping[str, Any]]) -> dict[str, Any]:
    """ModelOpt's search state of the records' candidates together: per group, every record's candidate
    (its own score and cost) and "keep 16 bits", sorted as ModelOpt sorts them (by compression, then
    signature; "no quant" last). ``mtq.get_auto_quantize_config`` takes it.

    The records must share the groups and the solver settings (:mod:`autoquant_sweep.mix` checks the
    scoring fingerprint first); one record gives back that trial's own state.
    """
    if not records:
        raise ScoringRecordError("no scoring record to build a search state from")
    first = records[0]
    for record in records[1:]:
        if set(record["groups"]) != set(first["groups"]):
            raise ScoringRecordError(f"{record['format_label']}: other layer groups than "
                                     f"{first['format_label']}")
        for key in STATE_KEYS:
            if record[key] != first[key]:
                raise ScoringRecordError(f"{record['format_label']}: {key} {record[key]!r} differs from "
                                         f"{first['format_label']}'s {first[key]!r}")
    recipes = [candidate(r["format"], r["format_label"]) for r in records]
    no_quant = _no_quant()
    stats: dict[str, Any] = {}
    for name, group in first["groups"].items():
        entries = {no_quant.checkpoint_signature: (no_quant, 0.0, float(group["uncompressed_cost"]))}
        for recipe, record in zip(recipes, records, strict=True):
            g = record["groups"][name]
            if g["score"] is not None:
                entries[recipe.checkpoint_signature] = (recipe, float(g["score"]), float(g["cost"]))
        ordered = sorted(entries.values(), key=lambda e: e[0])
        stats[name] = {
            "formats": [e[0] for e in ordered],
            "scores": [e[1] for e in ordered],
            "costs": [e[2] for e in ordered],
            "module_names": list(group["module_names"]),
            "quantizer_attrs": {m: tuple(a) for m, a in group["quantizer_attrs"].items()},
            "cost_weight": float(group["cost_weight"]),
            "allow_no_quant": bool(group["allow_no_quant"]),
            "is_fixed": bool(group["is_fixed"]),
            "uncompressed_cost": float(group["uncompressed_cost"]),
        }
    state = {key: first[key] for key in STATE_KEYS}
    state.update(candidate_stats=stats, fixed_quantization_config=None)
    return state
