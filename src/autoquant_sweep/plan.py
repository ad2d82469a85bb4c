"""Plan: everything about a run that can be checked without a model, as a :class:`RunPlan`.

The first stage after Hydra composed the config (docs/architecture.md). In this order, cheapest first:

1. settings: the value domains of the composed config (:func:`~autoquant_sweep.config.validation.
   validate_settings`: method, device, counts, ranges, objective, layout, tracking mode, model source),
   names that become paths, the tracking settings (no MLflow import);
2. device (``auto`` on a machine without a GPU driver is ``cpu`` without importing torch);
3. the effective format: ``quant_pair`` resolved, ``quant_granularity`` overlaid, the capability rules;
4. the checkpoint: its folder, ``config.json`` (``dataset.seq_len``, granularity shapes, reachable
   ``autoquant.effective_bits``), captions, batches, held-out split; the run fingerprint;
5. last gate: ModelOpt's own validation of the effective format (imports ModelOpt, seconds).

Nothing heavy (torch, transformers, MLflow, ModelOpt, matplotlib) is imported before step 5 (except
for a format name the project does not store, looked up in ModelOpt), so a refused or invalid run costs
well under a second in-process and leaves nothing behind. Plan never loads
a model and never writes; :func:`report_destination` only names the report folder.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autoquant_sweep import data as data_mod
from autoquant_sweep.errors import CapabilityRefusedError, UserInputError
from autoquant_sweep.fingerprints import (
    canonical_json,
    config_fingerprint,
    package_versions,
    run_fingerprint,
    scoring_fingerprint,
)
from autoquant_sweep.layout import check_name, publish_dir, tmp_report_dir
from autoquant_sweep.modeling import (
    check_checkpoint_dir,
    checkpoint_identity,
    read_checkpoint_config,
    resolve_device,
)
from autoquant_sweep.quant.overlay import apply_overlay
from autoquant_sweep.quant.summary import summarize_format
from autoquant_sweep.user_data import eval_split

log = logging.getLogger(__name__)


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
    # (source, captions) of the held-out split the run evaluates on; None: nothing is evaluated
    eval_split: tuple[str, list[str]] | None = None
    # per role (weight / input) the granularity kind of each stage the effective format declares
    # (quant.realized.declared_kinds); compute checks the quantizers ModelOpt instantiates against it
    declared_granularity: dict[str, list[str]] = field(default_factory=dict)
    # the run fingerprint without the format: trials with the same one were scored on the same inputs
    # and mix (autoquant_sweep.mix)
    scoring_fingerprint: str = ""

    @property
    def quantization(self) -> dict[str, Any]:
        """The manifest's ``quantization`` section."""
        from autoquant_sweep.quant.cost import DEFAULT_COST_MODEL, with_cost_model

        pair = self.cfg["quant_pair"]
        return {
            "pair": pair["name"],
            "weight": pair["weight"],
            "activation": pair["activation"],
            "base_format": pair["format_name"],
            "granularity": self.cfg["quant_granularity"]["name"],
            "overrides": _json_ready(self.overrides),
            "status": self.overlay_status,
            "notes": self.overlay_notes,
            "summary": summarize_format(self.effective_format),
            "declared": self.declared_granularity,
            # JSON form: integer block_sizes keys become strings ("-1"); the overlay reads them back
            "effective_quant_cfg": _json_ready(self.effective_format),
            # the preset with the run's memory cost (quant/cost.py), so that equal fingerprints still
            # say "the overlay changed nothing"
            "base_fingerprint": config_fingerprint(with_cost_model(
                self.base_format, self.cfg["autoquant"].get("cost_model", DEFAULT_COST_MODEL))),
            "fingerprint": config_fingerprint(self.effective_format),
        }


def _json_ready(value: Any) -> Any:
    import json

    return json.loads(canonical_json(value))


def _embedded_checkpoint(name: str) -> tuple[Path, Path]:
    from autoquant_sweep.embedded import ensure_embedded_assets

    assets = ensure_embedded_assets()
    attr = f"{name}_dir"
    if not hasattr(assets, attr):
        raise UserInputError(
            f"model.embedded: unknown embedded model '{name}'; choose qwen3_tiny or qwen3_vl_tiny"
        )
    return getattr(assets, attr), assets.captions_dir


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
        cost_excluded_groups,
        max_position_embeddings,
        min_effective_bits,
        quant_group,
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
    cost_excluded = list(model_cfg.get("cost_excluded_modules") or [])
    if len(cost_excluded_groups(modules, cost_excluded)) == len({quant_group(m.name) for m in modules}):
        raise UserInputError(
            f"model.cost_excluded_modules: {cost_excluded} takes every quantizable module of "
            f"'{config_file}' out of the effective-bits cost; nothing would be left to count the budget on"
        )
    minimum = min_effective_bits(modules, disabled, bits, cost_excluded)
    budget = float(c["autoquant"]["effective_bits"])
    if budget < minimum - 1e-9:
        excluded_groups = cost_excluded_groups(modules, cost_excluded)
        counted = [m for m in modules if quant_group(m.name) not in excluded_groups]
        frozen = sum(m.numel for m in counted) - sum(m.numel for m in searchable_modules(counted, disabled))
        at16 = (
            f"the {frozen:,} weights of model.disabled_layers at 16 bits" if frozen else "no disabled layers"
        )
        if excluded_groups:
            uncounted = sum(m.numel for m in modules) - sum(m.numel for m in counted)
            at16 += f", the {uncounted:,} weights of model.cost_excluded_modules not counted"
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

    Raises :class:`~autoquant_sweep.errors.UserInputError` (bad input) or
    :class:`~autoquant_sweep.errors.CapabilityRefusedError` (a combination this device cannot run), each
    one line naming the key.

    Example:
        >>> plan = plan_run(cfg)  # doctest: +SKIP
        >>> plan.quantization["summary"]  # doctest: +SKIP
    """
    from autoquant_sweep.config.validation import validate_settings
    from autoquant_sweep.quant.capability import check_combination
    from autoquant_sweep.quant.cost import DEFAULT_COST_MODEL, with_cost_model
    from autoquant_sweep.quant.formats import UnknownFormatError, check_with_modelopt, resolve_format
    from autoquant_sweep.quant.overlay import OverlayError, validate_overrides
    from autoquant_sweep.quant.realized import check_promise, declared_kinds
    from autoquant_sweep.tracking.store import check_store, settings_from_cfg

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else copy.deepcopy(cfg)
    # 1. settings: value domains (method, device, counts, ranges, objective, ...), names, tracking
    validate_settings(c)
    model_cfg, data_cfg, aq = c["model"], c["dataset"], c["autoquant"]
    pair, gran = c["quant_pair"], c["quant_granularity"]
    for key, value in (
        ("experiment", c["experiment"]),
        ("model.name", model_cfg["name"]),
        ("quant_pair.name", pair["name"]),
        ("quant_granularity.name", gran["name"]),
    ):
        check_name(key, value)
    settings = settings_from_cfg(c)  # tracking=server without a URI
    # 2. device
    device = resolve_device(aq["device"])
    # 3. effective format and capability rules
    context = f"quant_granularity={gran['name']} on quant_pair={pair['name']}"
    try:
        base = resolve_format(pair["format_name"])
        overrides = validate_overrides(gran.get("quant_cfg_overrides") or {})
        overlay = apply_overlay(base, overrides)
    except UnknownFormatError as exc:
        raise UserInputError(str(exc)) from exc
    except OverlayError as exc:
        raise UserInputError(f"{context}: {exc}") from exc
    # the memory cost as per-entry effective_bits (quant/cost.py): ModelOpt's search, the reachable
    # budget below and every recipe's achieved bits then count the same bits
    effective = with_cost_model(overlay.format, aq.get("cost_model", DEFAULT_COST_MODEL))
    verdict = check_combination(
        base,
        overrides,
        cuda_available=device == "cuda",
        format_name=pair["format_name"],
        granularity_name=gran["name"],
    )
    if verdict.status == "refused":
        from autoquant_sweep.quant.capability import refusal_message, runnable_alternatives

        try:
            alternatives = runnable_alternatives(pair["name"], gran["name"], cuda_available=device == "cuda",
                                                 resolve=resolve_format)
        except Exception:  # a group option that does not resolve here: the refusal still stands
            alternatives = None
        raise CapabilityRefusedError(refusal_message(verdict, pair["name"], gran["name"], device,
                                                     alternatives))
    check_promise(overlay.format, gran.get("realizes"), where=context)
    # 4. checkpoint, data, fingerprint
    if model_cfg.get("embedded"):
        checkpoint_path, embedded_captions = _embedded_checkpoint(model_cfg["embedded"])
        checkpoint = check_checkpoint_dir(str(checkpoint_path))
    else:
        checkpoint, embedded_captions = check_checkpoint_dir(model_cfg.get("path")), None
        if data_cfg.get("root") is None and data_cfg.get("path") is None:
            from autoquant_sweep.user_data import captions_only_dir

            embedded_captions = captions_only_dir()  # a real run never builds or trains the embedded models
    min_bits = _check_against_checkpoint(c, checkpoint, effective, overrides)
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
    split = eval_split(c)
    from autoquant_sweep.user_data import check_evaluation

    check_evaluation(c, split)  # an evaluation objective without held-out data: refused here, in one line
    identity = checkpoint_identity(checkpoint)
    versions = package_versions()
    fingerprint = run_fingerprint(
        c,
        checkpoint_identity=identity,
        captions=captions,
        batch_plan=batch_plan,
        device=device,
        effective_format=effective,
        eval_split=split,
        versions=versions,
    )
    scoring = scoring_fingerprint(c, checkpoint_identity=identity, captions=captions,
                                  batch_plan=batch_plan, device=device, versions=versions)
    # 5. the run's MLflow store, without MLflow: an unreachable server or a damaged SQLite file answers
    # before the ModelOpt import below (~2 s, not 15-19 s)
    check_store(settings)
    # 6. last gate: ModelOpt's own schema (imports ModelOpt; every cheaper check has passed)
    check_with_modelopt(effective, context)
    return RunPlan(
        cfg=c,
        device=device,
        checkpoint=checkpoint,
        checkpoint_identity=identity,
        captions_path=captions_path,
        captions=captions,
        batch_plan=batch_plan,
        base_format=base,
        effective_format=effective,
        overlay_status=verdict.status,
        overlay_notes=[*overlay.notes, *verdict.reasons],
        overrides=overrides,
        fingerprint=fingerprint,
        scoring_fingerprint=scoring,
        versions=versions,
        min_effective_bits=min_bits,
        eval_split=split,
        declared_granularity=declared_kinds(effective),
    )


def report_destination(plan: RunPlan, run_dir: Path | None) -> Path:
    """Where the report will land: ``tmp``: ``<run_dir>/report``; ``publish``: the stable publish tree.

    Names the folder only (the write stage creates it, atomically).
    """
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
    if run_dir is None:  # tmp (the name was checked by validate_settings)
        raise UserInputError("output_layout=tmp needs a Hydra run directory; use output_layout=publish")
    return tmp_report_dir(run_dir)
