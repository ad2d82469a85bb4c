"""Value domains of a composed config, in one place: :func:`validate_settings`.

The typed schema (``config/schema.py``) checks keys and types while Hydra composes; this module
checks the *values* a run needs (known method / device / model kind / dtype / objective / tracking
mode / output layout, positive counts, ranges) before anything is loaded, and says what is wrong in
one line naming the key, e.g. ``autoquant.method: unknown method 'foo'; choose one of gradient,
kl_div``.

The allowed values come from the modules that define them (``sensitivity.METHODS``,
``modeling.MODEL_KINDS`` / ``DTYPES`` / ``DEVICES``, ``tracking.store.MODES``,
``objectives.OBJECTIVES``), imported when the first config is validated: those modules, and this one,
import neither torch nor ModelOpt, so ``autoquant-sweep validate`` and a refused run stay fast.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from autoquant_sweep.errors import UserInputError

__all__ = ["OUTPUT_LAYOUTS", "validate_settings"]

#: ``output_layout.name``: the Hydra run dir, or the stable publish tree (``layout.publish_dir``)
OUTPUT_LAYOUTS: tuple[str, ...] = ("tmp", "publish")


@functools.cache
def _settings_model() -> type:
    """The pydantic model of the value domains, built on first use (the domains' modules load then)."""
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

    from autoquant_sweep.modeling import DEVICES, DTYPES, MODEL_KINDS
    from autoquant_sweep.objectives import OBJECTIVES
    from autoquant_sweep.quant.cost import COST_MODELS
    from autoquant_sweep.sensitivity import METHODS
    from autoquant_sweep.tracking.store import MODES

    # the composed config holds more keys than the values checked here; the typed schema owns keys
    section = ConfigDict(extra="ignore")
    count = Annotated[StrictInt, Field(gt=0, description="a positive integer")]

    class Model(BaseModel):
        model_config = section
        kind: Literal[MODEL_KINDS] = Field(title="kind")  # type: ignore[valid-type]
        dtype: Literal[DTYPES] = Field(title="dtype")  # type: ignore[valid-type]
        path: str | None = None
        embedded: str | None = None

        @model_validator(mode="after")
        def _path_or_embedded(self) -> Model:
            if self.embedded and self.path:
                raise ValueError(
                    f"model.path: '{self.path}' is given together with model.embedded={self.embedded}, "
                    f"which runs the embedded checkpoint and would ignore it; to run the checkpoint at "
                    f"'{self.path}' pass model=qwen3_4b model.path={self.path} (model=qwen3_vl_4b_instruct "
                    f"for Qwen3-VL), or add model.embedded=null"
                )
            return self

    class Dataset(BaseModel):
        model_config = section
        seq_len: StrictInt = Field(
            ge=2, description="an integer of at least 2 (tokens per caption, padded)"
        )
        max_samples: StrictInt | None = Field(
            default=None, gt=0,
            description="a positive integer or null (every line of dataset.size)",
        )
        eval_samples: StrictInt | None = Field(
            default=None, gt=0,
            description="a positive integer or null (every held-out caption)",
        )

    class AutoQuant(BaseModel):
        model_config = section
        objective: Literal[tuple(OBJECTIVES)] = Field(title="objective")  # type: ignore[misc]
        effective_bits: float = Field(gt=0, le=16, description="in (0, 16]")
        method: Literal[METHODS] = Field(title="method")  # type: ignore[valid-type]
        device: Literal[DEVICES] = Field(title="device")  # type: ignore[valid-type]
        batch_size: count
        num_calib_samples: count
        num_score_samples: count
        cost_model: Literal[COST_MODELS] = Field(default="storage", title="cost model")  # type: ignore[valid-type]
        budget_grid: list[Annotated[float, Field(gt=0, le=16)]] | None = Field(
            default=None,
            description="a list of budgets in (0, 16] or null (the default grid around the format's bits)",
        )

    class Tracking(BaseModel):
        model_config = section
        mode: Literal[MODES] = Field(title="mode")  # type: ignore[valid-type]

    class OutputLayout(BaseModel):
        model_config = section
        name: Literal[OUTPUT_LAYOUTS] = Field(title="layout")  # type: ignore[valid-type]

    class Settings(BaseModel):
        model_config = section
        autoquant: AutoQuant
        model: Model
        dataset: Dataset
        tracking: Tracking | None = None
        output_layout: OutputLayout | None = None

    return Settings


def _field_path(settings_model: type, loc: tuple) -> tuple[list[str], Any]:
    """The leading field names of a pydantic error location, and the field they end on.

    pydantic appends the branch of a union (``int``, ``function-after[...]``) and list indexes to a
    location; the user's key is the part that names fields.
    """
    model: Any = settings_model
    names: list[str] = []
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or not fields or part not in fields:
            break
        names.append(part)
        info = fields[part]
        args = [a for a in typing.get_args(info.annotation) if a is not type(None)]
        candidates = [info.annotation, *args]
        model = next((c for c in candidates if hasattr(c, "model_fields")), None)
    return names, info


def _value_at(c: Mapping, names: list[str]) -> Any:
    value: Any = c
    for name in names:
        value = value.get(name) if isinstance(value, Mapping) else None
    return value


def _message(settings_model: type, error: Mapping, c: Mapping) -> str:
    names, info = _field_path(settings_model, tuple(error.get("loc", ())))
    key = ".".join(names) or "config"
    if error.get("type") == "value_error":  # a cross-field rule: its message names its key
        return str(error.get("msg", "")).removeprefix("Value error, ")
    if error.get("type") == "missing":
        return f"{key}: missing from the config"
    value = _value_at(c, names)
    choices = typing.get_args(info.annotation) if info is not None else ()
    if info is not None and typing.get_origin(info.annotation) is Literal:
        return f"{key}: unknown {info.title or names[-1]} '{value}'; choose one of {', '.join(choices)}"
    if info is not None and info.description:
        return f"{key}: must be {info.description}, got {value}"
    return f"{key}: {error.get('msg')}, got {value!r}"


def validate_settings(c: Mapping[str, Any]) -> None:
    """Check the value domains of a composed, resolved config (a plain dict); first problem wins.

    Raises:
        UserInputError: one line naming the key, the value and what is allowed.

    Example:
        >>> cfg = {"model": {"kind": "causal_lm", "dtype": "float32"}, "dataset": {"seq_len": 32},
        ...        "autoquant": {"method": "foo", "device": "cpu", "batch_size": 4,
        ...                      "num_calib_samples": 16, "num_score_samples": 16,
        ...                      "effective_bits": 10.0, "objective": "constrained_score"}}
        >>> validate_settings(cfg)
        Traceback (most recent call last):
        autoquant_sweep.errors.UserInputError: autoquant.method: unknown method 'foo'; choose one of gradient, kl_div
    """  # noqa: E501
    from pydantic import ValidationError

    settings_model = _settings_model()
    try:
        settings_model.model_validate(c)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise UserInputError(" ".join(_message(settings_model, errors[0], c).split())) from exc
