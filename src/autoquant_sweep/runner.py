"""One sensitivity run from a composed config: validate, load, score, report.

Everything that can be checked without loading a model is checked first (:func:`plan_run`), so bad
input and refused combinations cost well under a second and leave nothing behind.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autoquant_sweep import data as data_mod
from autoquant_sweep.errors import CapabilityRefusedError, UserInputError
from autoquant_sweep.layout import check_name, publish_dir, tmp_report_dir, write_dir_atomically
from autoquant_sweep.modeling import (
    LoadedModel,
    check_checkpoint_dir,
    check_model_settings,
    checkpoint_identity,
    load_model_and_tokenizer,
    read_checkpoint_config,
    resolve_device,
)
from autoquant_sweep.quant.overlay import apply_overlay, canonical_json, config_fingerprint, summarize_format
from autoquant_sweep.report import write_report

log = logging.getLogger(__name__)

# autoquant.objective -> the value(s) a sweeper minimises (design: Objectives; docs/recommendation.md)
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


VERSIONED_PACKAGES = (
    "torch",
    "nvidia-modelopt",
    "transformers",
    "hydra-core",
    "optuna",
    "mlflow",
    "autoquant-sweep",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class RunPlan:
    """Everything about a run that is known before any model is loaded."""

    cfg: dict[str, Any]
    device: str
    checkpoint: Path
    checkpoint_identity: str
    captions_path: Path
    captions: list[str]
    batch_plan: data_mod.BatchPlan
    base_format: dict
    effective_format: dict
    overlay_status: str
    overlay_notes: list[str]
    overrides: dict
    fingerprint: str
    versions: dict[str, str] = field(default_factory=package_versions)
    # lowest autoquant.effective_bits this model reaches with this format, from config.json
    # (None: model_type without shape formulas, see model_shapes)
    min_effective_bits: float | None = None

    @property
    def quantization(self) -> dict[str, Any]:
        """The manifest's ``quantization`` section."""
        pair = self.cfg["quant_pair"]
        return {
            "pair": pair["name"],
            "weight": pair["weight"],
            "activation": pair["activation"],
            "base_format": pair["format_name"],
            "granularity": self.cfg["quant_granularity"]["name"],
            "overrides": json.loads(canonical_json(self.overrides)),
            "status": self.overlay_status,
            "notes": self.overlay_notes,
            "summary": summarize_format(self.effective_format),
            # JSON form: integer block_sizes keys become strings ("-1"); the overlay reads them back
            "effective_quant_cfg": json.loads(canonical_json(self.effective_format)),
            "base_fingerprint": config_fingerprint(self.base_format),
            "fingerprint": config_fingerprint(self.effective_format),
        }


def _embedded_checkpoint(name: str) -> tuple[Path, Path]:
    from autoquant_sweep.embedded import ensure_embedded_assets

    assets = ensure_embedded_assets()
    attr = f"{name}_dir"
    if not hasattr(assets, attr):
        raise UserInputError(
            f"model.embedded: unknown embedded model '{name}'; choose qwen3_tiny or qwen3_vl_tiny"
        )
    return getattr(assets, attr), assets.captions_dir


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_settings(c: dict[str, Any]) -> None:
    """Settings that need neither ModelOpt nor a checkpoint (before this check existed, some of them
    failed only after the model was loaded)."""
    from autoquant_sweep.sensitivity import METHODS

    model_cfg, data_cfg, aq = c["model"], c["dataset"], c["autoquant"]
    if aq["method"] not in METHODS:
        raise UserInputError(
            f"autoquant.method: unknown method '{aq['method']}'; choose one of {', '.join(METHODS)}"
        )
    check_model_settings(model_cfg["kind"], model_cfg["dtype"])
    for key, value in (
        ("autoquant.batch_size", aq["batch_size"]),
        ("autoquant.num_calib_samples", aq["num_calib_samples"]),
        ("autoquant.num_score_samples", aq["num_score_samples"]),
    ):
        if not _is_count(value):
            raise UserInputError(f"{key}: must be a positive integer, got {value}")
    if data_cfg.get("max_samples") is not None and not _is_count(data_cfg["max_samples"]):
        raise UserInputError(
            f"dataset.max_samples: must be a positive integer or null (every line of dataset.size), "
            f"got {data_cfg['max_samples']}"
        )
    seq_len = data_cfg["seq_len"]
    if not _is_count(seq_len) or seq_len < 2:
        raise UserInputError(
            f"dataset.seq_len: must be an integer of at least 2 (tokens per caption, padded), got {seq_len}"
        )
    if model_cfg.get("embedded") and model_cfg.get("path"):
        path = model_cfg["path"]
        raise UserInputError(
            f"model.path: '{path}' is given together with model.embedded={model_cfg['embedded']}, which "
            f"runs the embedded checkpoint and would ignore it; to run the checkpoint at '{path}' pass "
            f"model=qwen3_4b model.path={path} (model=qwen3_vl_4b_instruct for Qwen3-VL), or add "
            f"model.embedded=null"
        )


_WEIGHT_AXES = " (0 = per output channel, 1 = per input channel)"


def _override_source(overrides: dict, quantizer: str, attr: str) -> str | None:
    """The ``quant_cfg_overrides`` entry that set ``attr`` on ``quantizer`` (explicit beats default)."""
    from fnmatch import fnmatchcase

    for pattern, attrs in overrides.items():
        if pattern != "default" and attr in attrs and fnmatchcase(quantizer, pattern):
            return f"quant_cfg_overrides['{pattern}'].{attr}"
    if attr in overrides.get("default", {}):
        return f"quant_cfg_overrides['default'].{attr}"
    return None


def _check_granularity_fits(
    modules: list, fmt: dict, overrides: dict, context: str, format_name: str
) -> None:
    """Every axis / block size of the effective format must fit every searchable module's tensors.

    ModelOpt 0.47 does not reject an axis outside a tensor's dims (it runs per tensor, facts 24),
    ignores a block-size key that names no dim, and pads a block size that does not divide its dim.
    """
    from autoquant_sweep.model_shapes import axis_problem, block_sizes_problem, common_divisors
    from autoquant_sweep.quant.overlay import effective_quantizer_cfg

    for module in modules:
        for tensor, shape in (("weight", module.weight_shape), ("input", module.input_shape)):
            quantizer = f"{module.name}.{tensor}_quantizer"
            cfg = effective_quantizer_cfg(fmt, quantizer)
            stages = cfg if isinstance(cfg, list) else [cfg]
            for stage in stages:
                if not isinstance(stage, dict) or stage.get("enable", True) is False:
                    continue
                if tensor == "weight" and module.kind == "linear":
                    where = f"the weight (out, in) = {module.weight_shape} of {module.name}"
                elif tensor == "input" and module.kind == "linear":
                    where = f"the input (batch, seq, in) = (*, *, {module.weight_shape[1]}) of {module.name}"
                else:
                    where = f"the {len(shape)}-D {tensor} of {module.name}"
                hint = _WEIGHT_AXES if tensor == "weight" and module.kind == "linear" else ""
                problem = axis_problem(stage.get("axis"), shape, hint)
                if problem:
                    source = _override_source(overrides, quantizer, "axis") or (
                        f"the {tensor} quantizer's axis of quant_pair.format_name={format_name}"
                    )
                    raise UserInputError(
                        f"{context}: {source}={stage.get('axis')} does not fit {where}: {problem}"
                    )
                found = block_sizes_problem(stage.get("block_sizes"), shape)
                if not found:
                    continue
                key, problem = found
                source = _override_source(overrides, quantizer, "block_sizes")
                source = f"{source}[{key!r}]" if source else (
                    f"the {tensor} quantizer's block_sizes[{key!r}] of quant_pair.format_name={format_name}"
                )
                message = f"{context}: {source} does not fit {where}: {problem}"
                if "divide" in problem or "larger" in problem:
                    axis = int(key) if not isinstance(key, int) else key
                    sizes = [
                        (m.weight_shape if tensor == "weight" else m.input_shape)[axis]
                        for m in modules
                        if m.kind == module.kind
                    ]
                    divisors = common_divisors([s for s in sizes if s])
                    if divisors:
                        message += (
                            f"; block sizes that divide dim {axis} of every searchable {tensor}: "
                            f"{', '.join(map(str, divisors))}"
                        )
                    raise CapabilityRefusedError(message)
                raise UserInputError(message)


def _check_against_checkpoint(
    c: dict[str, Any], checkpoint: Path, fmt: dict, overrides: dict
) -> float | None:
    """What ``config.json`` decides before loading: it parses, ``dataset.seq_len`` fits the model, the
    granularity fits every searchable Linear, and ``autoquant.effective_bits`` is reachable.

    Returns the minimum achievable effective bits (``None`` when the model's shapes are unknown).
    """
    from autoquant_sweep.model_shapes import (
        KNOWN_MODEL_TYPES,
        ShapeUnknown,
        max_position_embeddings,
        min_effective_bits,
        quantizable_modules,
        searchable_modules,
    )
    from autoquant_sweep.quant.overlay import format_bits

    model_cfg, pair = c["model"], c["quant_pair"]
    config_file = checkpoint / "config.json"
    config = read_checkpoint_config(checkpoint)
    seq_len = int(c["dataset"]["seq_len"])
    max_positions = max_position_embeddings(config)
    if max_positions is not None and seq_len > max_positions:
        raise UserInputError(
            f"dataset.seq_len: {seq_len} is more than max_position_embeddings={max_positions} of "
            f"'{config_file}'; use dataset.seq_len={max_positions} or less"
        )
    try:
        modules = quantizable_modules(config)
    except ShapeUnknown as exc:
        log.warning("%s (%s): granularity shapes and the reachable effective bits are not checked before "
                    "loading", exc, config_file)
        return None
    if modules is None:
        log.warning(
            "model_type %r of '%s' has no shape formulas (known: %s): granularity shapes and the reachable "
            "effective bits are not checked before loading",
            config.get("model_type"), config_file, ", ".join(KNOWN_MODEL_TYPES),
        )
        return None
    disabled = list(model_cfg["disabled_layers"])
    context = f"quant_granularity={c['quant_granularity']['name']} on quant_pair={pair['name']}"
    _check_granularity_fits(
        searchable_modules(modules, disabled), fmt, overrides, context, pair["format_name"]
    )
    bits = format_bits(fmt)
    minimum = min_effective_bits(modules, disabled, bits)
    budget = float(c["autoquant"]["effective_bits"])
    if budget < minimum - 1e-9:
        frozen = sum(m.numel for m in modules) - sum(m.numel for m in searchable_modules(modules, disabled))
        at16 = (
            f"the {frozen:,} weights of model.disabled_layers at 16 bits" if frozen else "no disabled layers"
        )
        raise UserInputError(
            f"autoquant.effective_bits: {budget:g} is below the minimum achievable effective bits "
            f"{minimum:.4f} of {model_cfg['name']} with quant_pair={pair['name']} ({pair['format_name']}, "
            f"{bits:g} bits per weight; every searchable layer at {bits:g} bits, {at16}); use "
            f"autoquant.effective_bits={math.ceil(minimum * 100 - 1e-6) / 100:g} or more, or a lower-bit "
            f"quant_pair"
        )
    return minimum


def plan_run(cfg: DictConfig | dict) -> RunPlan:
    """Validate a composed config and resolve it into a :class:`RunPlan` (no model is loaded).

    Example:
        >>> plan = plan_run(cfg)  # doctest: +SKIP
        >>> plan.quantization["summary"]  # doctest: +SKIP
    """
    from autoquant_sweep.quant.capability import check_combination
    from autoquant_sweep.quant.formats import UnknownFormatError, resolve_format
    from autoquant_sweep.quant.overlay import OverlayError, validate_overrides

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else copy.deepcopy(cfg)
    model_cfg, data_cfg, aq = c["model"], c["dataset"], c["autoquant"]
    pair, gran = c["quant_pair"], c["quant_granularity"]
    for key, value in (
        ("experiment", c["experiment"]),
        ("model.name", model_cfg["name"]),
        ("quant_pair.name", pair["name"]),
        ("quant_granularity.name", gran["name"]),
    ):
        check_name(key, value)
    if aq["objective"] not in OBJECTIVES:
        raise UserInputError(
            f"autoquant.objective: unknown objective '{aq['objective']}'; "
            f"choose one of {', '.join(OBJECTIVES)}"
        )
    if not 0 < float(aq["effective_bits"]) <= 16:
        raise UserInputError(f"autoquant.effective_bits: must be in (0, 16], got {aq['effective_bits']}")
    _check_settings(c)
    device = resolve_device(aq["device"])

    try:
        base = resolve_format(pair["format_name"])
        overrides = validate_overrides(gran.get("quant_cfg_overrides") or {})
        overlay = apply_overlay(base, overrides)
    except UnknownFormatError as exc:
        raise UserInputError(str(exc)) from exc
    except OverlayError as exc:
        raise UserInputError(f"quant_granularity={gran['name']} on quant_pair={pair['name']}: {exc}") from exc
    verdict = check_combination(
        base,
        overrides,
        cuda_available=device == "cuda",
        format_name=pair["format_name"],
        granularity_name=gran["name"],
    )
    if verdict.status == "refused":
        raise CapabilityRefusedError("; ".join(verdict.reasons))

    if model_cfg.get("embedded"):
        checkpoint_path, embedded_captions = _embedded_checkpoint(model_cfg["embedded"])
        checkpoint = check_checkpoint_dir(str(checkpoint_path))
    else:
        checkpoint, embedded_captions = check_checkpoint_dir(model_cfg.get("path")), None
        if data_cfg.get("root") is None and data_cfg.get("path") is None:
            from autoquant_sweep.embedded import ensure_embedded_assets

            embedded_captions = ensure_embedded_assets().captions_dir
    min_bits = _check_against_checkpoint(c, checkpoint, overlay.format, overrides)
    captions_path = data_mod.resolve_caption_path(
        data_cfg.get("root"), data_cfg["size"], data_cfg.get("path"), embedded_captions
    )
    required = data_mod.CAPTION_SUBSET_SIZES[data_cfg["size"]]
    if data_cfg.get("max_samples"):
        required = min(required, int(data_cfg["max_samples"]))
    captions = data_mod.read_captions(captions_path, required)
    batch_plan = data_mod.plan_batches(
        len(captions), int(aq["batch_size"]), int(aq["num_calib_samples"]), int(aq["num_score_samples"])
    )
    identity = checkpoint_identity(checkpoint)
    versions = package_versions()
    fingerprint_source = {
        "checkpoint": identity,
        "model_kind": model_cfg["kind"],
        "dtype": model_cfg["dtype"],
        "disabled_layers": model_cfg["disabled_layers"],
        "captions_sha256": hashlib.sha256("\n".join(captions).encode()).hexdigest(),
        "seq_len": data_cfg["seq_len"],
        "batch_plan": [batch_plan.batch_size, batch_plan.num_calib_steps, batch_plan.num_score_steps],
        "method": aq["method"],
        "effective_bits": float(aq["effective_bits"]),
        "seed": aq["seed"],
        "device": device,
        "effective_format": overlay.format,
        "recipe_and_evaluation": recipe_eval_inputs(c),
        "versions": {k: v for k, v in versions.items() if k != "autoquant-sweep"},
    }
    return RunPlan(
        cfg=c,
        device=device,
        checkpoint=checkpoint,
        checkpoint_identity=identity,
        captions_path=captions_path,
        captions=captions,
        batch_plan=batch_plan,
        base_format=base,
        effective_format=overlay.format,
        overlay_status=verdict.status,
        overlay_notes=[*overlay.notes, *verdict.reasons],
        overrides=overrides,
        fingerprint=config_fingerprint(canonical_json(fingerprint_source)),
        versions=versions,
        min_effective_bits=min_bits,
    )


def eval_captions_used(captions: list[str], batch_size: int) -> list[str]:
    """The held-out captions evaluated: whole batches only.

    Example:
        >>> len(eval_captions_used(["a ."] * 66, 4))
        64
    """
    return captions[: len(captions) - len(captions) % batch_size]


class ModelCache:
    """Pristine models and tokenised batches, kept for the life of a process (one sweep).

    Each run gets a deep copy of the pristine model, so scores never depend on what ran before.
    """

    def __init__(self) -> None:
        self._models: dict[tuple, LoadedModel] = {}
        self._batches: dict[tuple, list[dict]] = {}
        self._unquantized_loss: dict[tuple, float] = {}

    def model(self, plan: RunPlan) -> tuple[LoadedModel, Any]:
        """The pristine model and a deep copy of it for one run."""
        loaded = self.loaded(plan)
        return loaded, copy.deepcopy(loaded.model)

    def loaded(self, plan: RunPlan) -> LoadedModel:
        """The pristine model (loaded once per checkpoint and process); never modify it."""
        m = plan.cfg["model"]
        key = (str(plan.checkpoint), plan.checkpoint_identity, m["kind"], m["dtype"], plan.device)
        if key not in self._models:
            self._models.clear()  # one pristine checkpoint at a time keeps memory at one model
            self._batches.clear()
            self._unquantized_loss.clear()
            self._models[key] = load_model_and_tokenizer(
                plan.checkpoint,
                kind=m["kind"],
                dtype=m["dtype"],
                device=plan.device,
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
            self._unquantized_loss[key] = eval_loss(loaded.model, batches, plan.device)
        return self._unquantized_loss[key]


MODEL_CACHE = ModelCache()


def eval_split(c: dict[str, Any]) -> tuple[str, list[str]] | None:
    """``(source, captions)`` of the held-out split a run evaluates on, None when nothing is evaluated."""
    if not c["autoquant"].get("evaluate", True):
        return None
    d = c["dataset"]
    return data_mod.resolve_eval_captions(
        d.get("root"), d.get("path"), d.get("eval_path"), d.get("eval_samples")
    )


#: bump when a run's manifest gains results a cached run would lack (2: recipe, budget curve, evaluation)
RESULT_SCHEMA = 2


def recipe_eval_inputs(c: dict[str, Any]) -> dict[str, Any]:
    """What the recipe, the budget curve and the evaluation depend on beyond the scoring inputs
    (part of the run fingerprint, so a cached run always carries the same sections)."""
    aq = c["autoquant"]
    split = eval_split(c)
    return {
        "result_schema": RESULT_SCHEMA,
        "budget_grid": [float(b) for b in aq.get("budget_grid") or []],
        "evaluate": split is not None,
        "eval_captions_sha256": hashlib.sha256("\n".join(split[1]).encode()).hexdigest() if split else None,
    }


@dataclass
class RunOutcome:
    """A finished run: where its report is and what it measured."""

    plan: RunPlan
    manifest: dict[str, Any]
    report_dir: Path

    @property
    def objectives(self) -> dict[str, float]:
        return self.manifest["objectives"]


def report_destination(plan: RunPlan, run_dir: Path | None) -> Path:
    """``tmp``: ``<run_dir>/report``; ``publish``: the stable publish tree."""
    c = plan.cfg
    layout = c["output_layout"]
    if layout["name"] == "publish":
        return publish_dir(
            Path(layout["publish_root"]).expanduser(),
            experiment=c["experiment"],
            model=c["model"]["name"],
            quant_pair=c["quant_pair"]["name"],
            weight=c["quant_pair"]["weight"],
            activation=c["quant_pair"]["activation"],
            granularity=c["quant_granularity"]["name"],
            size=c["dataset"]["size"],
        )
    if layout["name"] != "tmp":
        raise UserInputError(f"output_layout.name: unknown layout '{layout['name']}'; choose tmp or publish")
    if run_dir is None:
        raise UserInputError("output_layout=tmp needs a Hydra run directory; use output_layout=publish")
    return tmp_report_dir(run_dir)


def _run_autoquant(plan: RunPlan, cache: ModelCache, batches: list[dict]) -> Any:
    """``run_autoquant`` on a fresh copy of the pristine model at the run's budget.

    A budget below the reachable minimum was refused by :func:`plan_run` already (from ``config.json``);
    for a checkpoint whose shapes the plan cannot derive, ModelOpt's own refusal is a one-line error.
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
        device=plan.device,
    )


def execute_run(plan: RunPlan, run_dir: Path | None, cache: ModelCache = MODEL_CACHE) -> RunOutcome:
    """Load (or reuse) the model, run AutoQuant on the effective format, export the recipe at the budget
    and the budget curve, evaluate the returned (quantized) model on held-out captions, write the report."""
    import torch

    from autoquant_sweep.evaluation import eval_batch_size, evaluate
    from autoquant_sweep.recipe import budget_curve, resolve_budget_grid

    destination = report_destination(plan, run_dir)
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
    t0 = time.perf_counter()
    loaded = cache.loaded(plan)
    batches = cache.batches(plan, loaded)
    load_seconds = time.perf_counter() - t0
    result = _run_autoquant(plan, cache, batches)
    budget = float(aq["effective_bits"])
    t_curve = time.perf_counter()
    grid = resolve_budget_grid(aq.get("budget_grid"), result.format_bits, budget)
    curve = budget_curve(result.search_state, grid, run_budget=round(budget, 4))
    recipe = next(r for r in curve if abs(r.budget - round(budget, 4)) < 1e-9)
    # get_auto_quantize_config always says algorithm "max"; the one format searched here was calibrated
    # with its own algorithm (e.g. awq_lite for W4A8_AWQ_BETA_CFG), which mtq.quantize should repeat
    recipe.quant_cfg["algorithm"] = copy.deepcopy(plan.effective_format.get("algorithm", "max"))
    curve_seconds = time.perf_counter() - t_curve
    evaluation = None
    split = eval_split(c)
    size = eval_batch_size(result.model, plan.batch_plan.batch_size)
    if split is not None and not eval_captions_used(split[1], size):
        size = plan.batch_plan.batch_size  # a short held-out file: whole calibration-size batches
    if split is not None and not eval_captions_used(split[1], size):
        log.warning("held-out split %s has fewer captions than one batch (%d): nothing evaluated",
                    split[0], size)
        split = None
    if split is not None:
        source, captions = split
        t_unq = time.perf_counter()
        unquantized = cache.unquantized_loss(plan, loaded, captions, size)
        unq_seconds = time.perf_counter() - t_unq
        evaluation = evaluate(result.model, cache.eval_batches(plan, loaded, captions, size), unquantized,
                              len(eval_captions_used(captions, size)), plan.device)
        evaluation["batch_size"] = size
        evaluation["source"] = source
        evaluation["unquantized_seconds"] = unq_seconds  # 0 after the first run of a process
    result.model = None  # release the trial's quantized copy before the next trial starts
    result.search_state = None
    if plan.device == "cuda":
        # Quantizer hooks form reference cycles: collect them so the GPU memory really goes back
        # before the next trial. On CPU a full collection costs ~0.4 s per trial (every module of
        # torch / transformers / MLflow is tracked) and Python's own collector gets there anyway.
        gc.collect()
        torch.cuda.empty_cache()
    manifest = build_manifest(plan, result, loaded, load_seconds)
    manifest["recipe"] = recipe.summary()
    manifest["budget_curve"] = [r.curve_point() for r in curve]
    manifest["evaluation"] = evaluation
    manifest["canonical_granularity"] = canonical_granularity(plan)
    manifest["autoquant"]["budget_grid"] = grid
    manifest["autoquant"]["evaluate"] = evaluation is not None
    manifest["seconds"]["budget_curve"] = curve_seconds
    if evaluation is not None:
        manifest["seconds"]["evaluation"] = evaluation["seconds"]
        manifest["objectives"]["eval_loss_delta"] = evaluation["eval_loss_delta"]
    if not recipe.satisfied:  # never a winner of a constrained objective (objective_result -> inf)
        manifest["objectives"].pop("constrained_score", None)
    write_dir_atomically(destination, lambda folder: write_report(folder, manifest, recipe.quant_cfg))
    log.info(
        "total_sensitivity=%.6e recipe at %.4g bits: score %.6e, %.3f effective bits (%s), %d/%d groups "
        "quantized%s -> %s",
        result.total_sensitivity,
        budget,
        recipe.predicted_score,
        recipe.achieved_effective_bits,
        "fits" if recipe.satisfied else "does NOT fit the budget",
        len(recipe.quantized_groups),
        len(recipe.quantized_groups) + len(recipe.kept_16bit_groups),
        f"; eval loss {evaluation['eval_loss_delta']:+.4g} nats" if evaluation else "",
        destination,
    )
    return RunOutcome(plan=plan, manifest=manifest, report_dir=destination)


def canonical_granularity(plan: RunPlan) -> str:
    """The granularity a result is recorded under (:func:`autoquant_sweep.canonical.canonical_name`)."""
    from autoquant_sweep.canonical import canonical_name

    c = plan.cfg
    return canonical_name(c["quant_pair"], c["quant_granularity"]["name"], plan.effective_format, plan.device)


def build_manifest(plan: RunPlan, result: Any, loaded: LoadedModel, load_seconds: float) -> dict[str, Any]:
    """The run's manifest: inputs, settings, versions, per-layer stats and constrained result."""
    c = plan.cfg
    aq = c["autoquant"]
    seconds = dict(result.seconds)
    seconds["load_and_tokenize"] = load_seconds
    device_name = platform.processor() or platform.machine()
    if plan.device == "cuda":
        import torch

        device_name = torch.cuda.get_device_name()
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
            "architecture": (loaded.config.get("architectures") or ["?"])[0],
            "disabled_layers": c["model"]["disabled_layers"],
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
        },
        "versions": plan.versions,
        "device": {"type": plan.device, "name": device_name},
        "per_layer": [layer | {"modules": list(layer["modules"])} for layer in result.to_dict()["layers"]],
        "constrained_result": {
            "score": result.constrained_score,
            "effective_bits": result.constrained_effective_bits,
            "is_satisfied": result.constraint_satisfied,
            "budget_effective_bits": float(aq["effective_bits"]),
            "quantized_groups": [layer.group for layer in result.layers if layer.chosen_in_budget],
        },
        "objectives": result.objectives(),
        "format_bits": result.format_bits,
        "seconds": seconds,
        "peak_memory_mb": result.peak_memory_mb,
        "memory_kind": result.memory_kind,
    }


def run(cfg: DictConfig | dict, run_dir: Path | None = None) -> RunOutcome:
    """Plan and execute one run (the body of ``experiments/sensitivity.py``)."""
    return execute_run(plan_run(cfg), run_dir)
