"""Bad input: one clear line naming the key or path, raised before any model is loaded, nothing left."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from autoquant_sweep.errors import CapabilityRefusedError, UserInputError
from autoquant_sweep.plan import plan_run

from ..conftest import run_app

pytestmark = pytest.mark.integration


THREE_LINES = b"a cat .\na dog .\na bird .\n"
NOT_UTF8 = b"a cat\xff\xfe on a mat .\n" * 20


def _captions(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "captions.txt"
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    ("make_overrides", "error", "message"),
    [
        (
            lambda t: ["quant_pair.format_name=INT9_DEFAULT_CFG"],
            UserInputError,
            r"unknown quant format 'INT9_DEFAULT_CFG' \(key quant_pair\.format_name\)",
        ),
        (
            lambda t: ["model=qwen3_4b", "model.path=/nonexistent/qwen3"],
            UserInputError,
            r"^model\.path: '/nonexistent/qwen3' does not exist$",
        ),
        (lambda t: ["model=qwen3_4b", "model.path=null"], UserInputError, r"^model\.path: not set"),
        (
            lambda t: ["model=qwen3_4b", f"model.path={t}"],
            UserInputError,
            r"^model\.path: '.*' is not a model directory \(no config\.json\)$",
        ),
        (
            lambda t: ["dataset.path=/nonexistent/captions.txt"],
            UserInputError,
            r"^dataset\.path: captions file '/nonexistent/captions\.txt' does not exist$",
        ),
        (lambda t: [f"dataset.path={_captions(t, b'')}"], UserInputError, r"^dataset\.path: .* is empty$"),
        (
            lambda t: [f"dataset.path={_captions(t, THREE_LINES)}"],
            UserInputError,
            r"^dataset\.size: captions file .* has 3 lines, fewer than the 16 requested$",
        ),
        (
            lambda t: [f"dataset.path={_captions(t, NOT_UTF8)}"],
            UserInputError,
            r"^dataset\.path: captions file .* is not valid UTF-8 \(byte 5\)",
        ),
        (lambda t: ["dataset.size=huge"], UserInputError, r"^dataset\.size: unknown size 'huge'"),
        (lambda t: ["quant_pair=wfp4_afp16"], CapabilityRefusedError, r"W4A16_NVFP4_CFG.*CUDA"),
        (lambda t: ["quant_pair=wfp8_afp8", "quant_pair.extra=1"], None, None),
        (
            lambda t: ["autoquant.device=cuda"],
            UserInputError,
            r"^autoquant\.device=cuda but torch sees no CUDA device",
        ),
        (
            lambda t: ["autoquant.objective=accuracy"],
            UserInputError,
            r"^autoquant\.objective: unknown objective",
        ),
        (
            lambda t: ["autoquant.effective_bits=17"],
            UserInputError,
            r"^autoquant\.effective_bits: must be in",
        ),
        (lambda t: ["autoquant.batch_size=0"], UserInputError, r"^autoquant\.batch_size: must be a positive"),
        (
            lambda t: ["quant_pair=wint8_aint8", "quant_granularity.name=../escape"],
            UserInputError,
            r"^quant_granularity\.name: '\.\./escape' cannot name a directory",
        ),
    ],
    ids=[
        "unknown-format",
        "missing-checkpoint",
        "unset-checkpoint",
        "not-a-model",
        "missing-captions",
        "empty-captions",
        "too-few-captions",
        "non-utf8-captions",
        "unknown-size",
        "cuda-only-format",
        "unknown-key-in-schema",
        "cuda-device-without-cuda",
        "unknown-objective",
        "budget-out-of-range",
        "zero-batch",
        "path-escaping-name",
    ],
)
def test_bad_input_is_one_line_naming_the_key(
    compose_cfg, tmp_path, embedded, make_overrides, error, message
):
    overrides = make_overrides(tmp_path)
    if error is None:  # the structured schema rejects unknown keys while composing
        with pytest.raises(ConfigCompositionException, match="extra"):
            compose_cfg(overrides)
        return
    with pytest.raises(error, match=message) as info:
        plan_run(compose_cfg(overrides))
    assert "\n" not in str(info.value)


def test_schema_rejects_wrong_types_while_composing(compose_cfg):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["autoquant.batch_size=four"])
    assert "batch_size" in str(info.value.__cause__) or "batch_size" in str(info.value)


def test_cli_bad_input_exits_2_with_one_line_and_leaves_no_directory(tmp_path, embedded):
    result = run_app(["model=qwen3_4b", "model.path=/nonexistent/qwen3", "tracking=off"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("autoquant-sweep: error:")]
    assert errors == ["autoquant-sweep: error: model.path: '/nonexistent/qwen3' does not exist"]
    assert "Traceback" not in result.stderr
    assert "Loading weights" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []


def test_cli_refused_combination_loads_no_model(tmp_path, embedded):
    result = run_app(
        ["quant_pair=wfp4_afp8", "quant_granularity=w_per_out_channel", "tracking=off"], cwd=tmp_path
    )
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("autoquant-sweep: error:")]
    assert "W4A8_NVFP4_FP8_CFG" in line and "w_per_out_channel" in line and "Only support E=4 & M=3" in line
    assert "Loading weights" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []


def test_cli_unknown_group_option_names_it(tmp_path):
    result = run_app(["quant_pair=wint9_aint9"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'quant_pair/wint9_aint9'" in result.stderr
    assert list(tmp_path.iterdir()) == []
