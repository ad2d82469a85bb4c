"""Value domains of a composed config (config/validation.py): one line naming the key, no heavy imports."""

from __future__ import annotations

import copy
import typing

import pytest

from autoquant_sweep.config.validation import OUTPUT_LAYOUTS, validate_settings
from autoquant_sweep.errors import UserInputError
from autoquant_sweep.modeling import DEVICES

VALID = {
    "model": {"kind": "causal_lm", "dtype": "float32", "embedded": "qwen3_tiny", "path": None},
    "dataset": {"seq_len": 32, "max_samples": None, "eval_samples": None},
    "autoquant": {
        "method": "gradient",
        "device": "auto",
        "batch_size": 4,
        "num_calib_samples": 16,
        "num_score_samples": 16,
        "effective_bits": 10.0,
        "objective": "constrained_score",
        "budget_grid": None,
    },
    "tracking": {"mode": "off"},
    "output_layout": {"name": "tmp"},
}


def _with(section: str, key: str, value) -> dict:
    c = copy.deepcopy(VALID)
    c[section][key] = value
    return c


def test_valid_config_passes_and_extra_keys_are_not_this_modules_business():
    validate_settings(VALID)
    c = copy.deepcopy(VALID)
    c["autoquant"]["seed"] = 3
    c["experiment"] = "x"
    validate_settings(c)


POSITIVE = "must be a positive integer, got"


@pytest.mark.parametrize(
    ("section", "key", "value", "reason"),
    [
        ("autoquant", "method", "foo", "unknown method 'foo'; choose one of gradient, kl_div"),
        ("autoquant", "device", "tpu", "unknown device 'tpu'; choose one of auto, cpu, cuda"),
        ("model", "kind", "seq2seq", "unknown kind 'seq2seq'; choose one of causal_lm, image_text_to_text"),
        ("model", "dtype", "int8", "unknown dtype 'int8'; choose one of float32, bfloat16, float16"),
        ("autoquant", "objective", "accuracy", "unknown objective 'accuracy'; choose one of "
         "constrained_score, eval_loss_delta, total_sensitivity, pareto"),
        ("tracking", "mode", "cloud", "unknown mode 'cloud'; choose one of off, local, server"),
        ("output_layout", "name", "s3", "unknown layout 's3'; choose one of tmp, publish"),
        ("autoquant", "batch_size", 0, f"{POSITIVE} 0"),
        ("autoquant", "batch_size", True, f"{POSITIVE} True"),
        ("autoquant", "num_calib_samples", 2.5, f"{POSITIVE} 2.5"),
        ("autoquant", "num_score_samples", -1, f"{POSITIVE} -1"),
        ("autoquant", "effective_bits", 17, "must be in (0, 16], got 17"),
        ("autoquant", "effective_bits", 0, "must be in (0, 16], got 0"),
        ("dataset", "seq_len", 1, "must be an integer of at least 2 (tokens per caption, padded), got 1"),
        ("dataset", "max_samples", 0,
         "must be a positive integer or null (every line of dataset.size), got 0"),
        ("dataset", "eval_samples", -3,
         "must be a positive integer or null (every held-out caption), got -3"),
    ],
)
def test_bad_value_is_one_line_naming_the_key(section, key, value, reason):
    with pytest.raises(UserInputError) as info:
        validate_settings(_with(section, key, value))
    assert str(info.value) == f"{section}.{key}: {reason}"


@pytest.mark.parametrize("grid", [[0, 12], [4, 17.5]])
def test_budget_grid_values_in_range(grid):
    expected = r"^autoquant\.budget_grid: must be a list of budgets in \(0, 16\]"
    with pytest.raises(UserInputError, match=expected):
        validate_settings(_with("autoquant", "budget_grid", grid))
    validate_settings(_with("autoquant", "budget_grid", [4, 8.5, 16]))


def test_path_next_to_embedded_is_refused():
    expected = r"^model\.path: '/data/q' is given together with model\.embedded="
    with pytest.raises(UserInputError, match=expected):
        validate_settings(_with("model", "path", "/data/q"))
    c = _with("model", "path", "/data/q")
    c["model"]["embedded"] = None
    validate_settings(c)


def test_missing_key_is_named():
    c = copy.deepcopy(VALID)
    del c["autoquant"]["method"]
    with pytest.raises(UserInputError, match=r"^autoquant\.method: missing"):
        validate_settings(c)


def _choices(model: type, section: str, key: str) -> tuple:
    annotation = model.model_fields[section].annotation
    section_model = next(a for a in (annotation, *typing.get_args(annotation)) if hasattr(a, "model_fields"))
    return typing.get_args(section_model.model_fields[key].annotation)


def test_domains_come_from_their_defining_modules():
    from autoquant_sweep.config.validation import _settings_model
    from autoquant_sweep.modeling import DTYPES, MODEL_KINDS
    from autoquant_sweep.objectives import OBJECTIVES
    from autoquant_sweep.sensitivity import METHODS
    from autoquant_sweep.tracking.store import MODES

    model = _settings_model()
    assert _choices(model, "autoquant", "method") == METHODS
    assert _choices(model, "autoquant", "device") == DEVICES
    assert _choices(model, "autoquant", "objective") == tuple(OBJECTIVES)
    assert _choices(model, "model", "kind") == MODEL_KINDS
    assert _choices(model, "model", "dtype") == DTYPES
    assert _choices(model, "tracking", "mode") == MODES
    assert _choices(model, "output_layout", "name") == OUTPUT_LAYOUTS
