"""The run's manifest (``manifest.json``): what ran, on what, with which versions, and what it measured.

Built from the plan and the compute stage's result; the write stage puts it on disk with the per-layer
files and the recipe, the record stage logs it to MLflow. A cache hit reuses its source run's manifest.
"""

from __future__ import annotations

import platform
from typing import Any

from autoquant_sweep.compute import Computed
from autoquant_sweep.fingerprints import RESULT_SCHEMA, package_versions
from autoquant_sweep.plan import RunPlan

__all__ = ["build_manifest", "canonical_granularity", "package_versions"]


def canonical_granularity(plan: RunPlan) -> str:
    """The granularity a result is recorded under (:func:`autoquant_sweep.canonical.canonical_name`)."""
    from autoquant_sweep.canonical import canonical_name

    c = plan.cfg
    return canonical_name(c["quant_pair"], c["quant_granularity"]["name"], plan.effective_format, plan.device)


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()


def build_manifest(plan: RunPlan, computed: Computed) -> dict[str, Any]:
    """The run's manifest: inputs, settings, versions, per-layer stats, constrained result, recipe,
    budget curve, evaluation and timings."""
    c = plan.cfg
    aq = c["autoquant"]
    result, recipe, evaluation = computed.result, computed.recipe, computed.evaluation
    seconds = dict(result.seconds)
    seconds["load_and_tokenize"] = computed.load_seconds
    seconds["budget_curve"] = computed.curve_seconds
    seconds["realized_check"] = computed.realized["seconds"]
    objectives = result.objectives()
    if evaluation is not None:
        seconds["evaluation"] = evaluation["seconds"]
        objectives["eval_loss_delta"] = evaluation["eval_loss_delta"]
    if not recipe.satisfied:  # never a winner of a constrained objective (objective_result -> inf)
        objectives.pop("constrained_score", None)
    return {
        "schema_version": RESULT_SCHEMA,
        "experiment": c["experiment"],
        "fingerprint": plan.fingerprint,
        "model": {
            "name": c["model"]["name"],
            "path": str(plan.checkpoint),
            "kind": c["model"]["kind"],
            "dtype": c["model"]["dtype"],
            "checkpoint_identity": plan.checkpoint_identity,
            "architecture": (computed.model_config.get("architectures") or ["?"])[0],
            "disabled_layers": c["model"]["disabled_layers"],
            "cost_excluded_modules": list(c["model"].get("cost_excluded_modules") or []),
        },
        "dataset": {
            "name": c["dataset"]["name"],
            "size": c["dataset"]["size"],
            "path": str(plan.captions_path),
            "num_samples": len(plan.captions),
            "seq_len": c["dataset"]["seq_len"],
        },
        "quantization": plan.quantization,
        "autoquant": {
            "method": aq["method"],
            "device": plan.device,
            "batch_size": plan.batch_plan.batch_size,
            "num_calib_steps": plan.batch_plan.num_calib_steps,
            "num_score_steps": plan.batch_plan.num_score_steps,
            "effective_bits": float(aq["effective_bits"]),
            "objective": aq["objective"],
            "seed": aq["seed"],
            "budget_grid": computed.budget_grid,
            "evaluate": evaluation is not None,
        },
        "versions": plan.versions,
        "device": {"type": plan.device, "name": _device_name(plan.device)},
        "per_layer": [layer | {"modules": list(layer["modules"])} for layer in result.to_dict()["layers"]],
        "constrained_result": {
            "score": result.constrained_score,
            "effective_bits": result.constrained_effective_bits,
            "is_satisfied": result.constraint_satisfied,
            "budget_effective_bits": float(aq["effective_bits"]),
            "quantized_groups": [layer.group for layer in result.layers if layer.chosen_in_budget],
        },
        "objectives": objectives,
        "format_bits": result.format_bits,
        "seconds": seconds,
        "peak_memory_mb": result.peak_memory_mb,
        "memory_kind": result.memory_kind,
        "recipe": recipe.summary(),
        "budget_curve": [r.curve_point() for r in computed.curve],
        "evaluation": evaluation,
        "realized": computed.realized,
        "canonical_granularity": canonical_granularity(plan),
    }
