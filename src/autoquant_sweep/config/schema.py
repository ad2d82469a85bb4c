"""Typed schemas for every config group.

The primary config ``conf/sensitivity.yaml`` extends :class:`SensitivityConfig`, so Hydra validates
each group option against these dataclasses while composing: an unknown key or a value of the wrong
type stops the run before anything is loaded, with Hydra's message naming the key.

They are registered with Hydra by :func:`autoquant_sweep.config.registration.register_configs`.

Example:
    >>> from hydra import compose, initialize_config_dir
    >>> from autoquant_sweep.config import register_configs
    >>> register_configs()  # doctest: +SKIP
    >>> with initialize_config_dir(config_dir="/path/to/conf", version_base="1.3"):  # doctest: +SKIP
    ...     cfg = compose("sensitivity", overrides=["quant_pair=wint4_afp16"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """A checkpoint on disk, loaded with ``from_pretrained(path)``.

    ``embedded`` names a tiny checkpoint the project generates (``qwen3_tiny``, ``qwen3_vl_tiny``);
    then ``path`` stays null and is filled from the embedded cache.
    """

    name: str = MISSING
    path: str | None = None
    embedded: str | None = None
    # causal_lm -> AutoModelForCausalLM; image_text_to_text -> AutoModelForImageTextToText (LM-only scoring)
    kind: str = "causal_lm"
    dtype: str = "float32"
    trust_remote_code: bool = False
    # Never quantized nor scored (fnmatch patterns on module names), e.g. lm_head and the vision tower.
    disabled_layers: list[str] = field(default_factory=lambda: ["*lm_head*"])
    # Left out of the effective-bits cost (fnmatch patterns; a decision group whose every module matches
    # weighs 0), e.g. a VL model's vision tower, so the budget is the language model's: ModelOpt's
    # constraints["cost"]["excluded_module_name_patterns"] of mtq.auto_quantize.
    cost_excluded_modules: list[str] = field(default_factory=list)


@dataclass
class DatasetConfig:
    """Caption lines used for calibration and scoring (one sample per line)."""

    name: str = "captions"
    # null -> the embedded, generated captions; else a folder holding <size>.txt files
    root: str | None = None
    size: str = "small"
    # explicit file; null -> <root>/<size>.txt
    path: str | None = None
    max_samples: int | None = None
    seq_len: int = 32
    # held-out captions for the quality evaluation (never calibration / scoring); null -> <root>/eval.txt
    # when it exists, the embedded held-out split for the embedded captions, else no evaluation
    eval_path: str | None = None
    eval_samples: int | None = None


@dataclass
class QuantPairConfig:
    """A (weight dtype, activation dtype) pair and the ModelOpt format that realises it."""

    name: str = MISSING
    # place among the pairs in tables, the search space and the validate matrix (none: after them, by name)
    order: int | None = None
    weight: str = MISSING
    activation: str = MISSING
    format_name: str = MISSING
    description: str = ""


@dataclass
class GranularityConfig:
    """A named overlay of quantizer attributes (axis / block_sizes / type) keyed by quantizer pattern."""

    name: str = MISSING
    # place among the granularities in tables, the search space and the validate matrix (none: after them,
    # by name)
    order: int | None = None
    # the name in MLflow run names, distinct from the others' within the first few characters (none: name)
    short: str | None = None
    description: str = ""
    quant_cfg_overrides: dict[str, Any] = field(default_factory=dict)
    # what the name promises ModelOpt instantiates, per role (weight / input) the overlay changes, in the
    # vocabulary of quant.realized (per_out_channel, group64, per_token_dynamic, ...); checked in plan
    # against the effective format and after calibration against the quantizers ModelOpt built
    realizes: dict[str, str] = field(default_factory=dict)


@dataclass
class AutoQuantConfig:
    """Settings of the ``mtq.auto_quantize`` call."""

    method: str = "gradient"
    device: str = "auto"
    batch_size: int = 4
    num_calib_samples: int = 16
    num_score_samples: int = 16
    effective_bits: float = 10.0
    objective: str = "constrained_score"
    seed: int = 0
    cache: bool = True
    # budgets the recipe is re-solved at (the budget curve); null -> recipe.default_budget_grid
    budget_grid: list[float] | None = None
    # held-out loss of the returned (quantized) model vs the unquantized one
    evaluate: bool = True
    # ModelOpt's own progress bars, prints and by-design warnings (quiet by default)
    verbose: bool = False
    # memory cost of a format: storage (bits incl. scales, quant/cost.py) | modelopt (num_bits only)
    cost_model: str = "storage"
    # at a sweep's end, mix every format it scored (autoquant_sweep.mix; a run "mix ..." under the parent)
    mix: bool = True


@dataclass
class OutputLayoutConfig:
    """Where a run's report lands: ``tmp`` (the Hydra run dir) or ``publish`` (a stable tree)."""

    name: str = "tmp"
    publish_root: str = "results"


@dataclass
class PathsConfig:
    """Where stores and outputs live (``conf/paths/default.yaml``): all under ``root_dir``, the working
    directory of the command unless ``$AUTOQUANT_SWEEP_ROOT`` or ``paths.root_dir=...`` says otherwise."""

    root_dir: str = MISSING
    output_dir: str = "${paths.root_dir}"
    cache_dir: str = "${paths.root_dir}/.cache/autoquant_sweep"
    mlflow_db: str = "${paths.root_dir}/mlflow.db"
    optuna_db: str = "${paths.root_dir}/optuna.db"


@dataclass
class TrackingConfig:
    """MLflow tracking: ``off``, ``local`` (embedded SQLite store) or ``server`` (URI from the env)."""

    mode: str = "off"
    # explicit store; for ``local`` null means $MLFLOW_TRACKING_URI when set, else ``local_store_uri``
    tracking_uri: str | None = None
    local_store_uri: str | None = None
    artifact_location: str | None = None
    experiment_name: str | None = None
    registry: bool = True


@dataclass
class SensitivityConfig:
    """The whole run: one (model, dataset, pair, granularity, AutoQuant settings) combination."""

    experiment: str = "sensitivity"
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    quant_pair: QuantPairConfig = field(default_factory=QuantPairConfig)
    quant_granularity: GranularityConfig = field(default_factory=GranularityConfig)
    autoquant: AutoQuantConfig = field(default_factory=AutoQuantConfig)
    output_layout: OutputLayoutConfig = field(default_factory=OutputLayoutConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
