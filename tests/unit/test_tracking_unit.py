"""Unit tests of the tracking helpers that need no model: names, flattening, settings, summary, callback."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from autoquant_sweep.errors import UserInputError
from autoquant_sweep.tracking.registry import qualifying, quantize_config_from_json, registered_name
from autoquant_sweep.tracking.run_logging import flatten_overrides, quantizer_key
from autoquant_sweep.tracking.store import PARENT_RUN_ENV, connect, settings_from_cfg


def test_flatten_overrides_names_and_values() -> None:
    flat = flatten_overrides({
        "*weight_quantizer": {"axis": 0},
        "*input_quantizer": {"type": "dynamic", "block_sizes": {-1: None}},
        "*mlp*weight_quantizer": {"block_sizes": {-1: 64}},
    })
    assert flat == {
        "override.weight.axis": "0",
        "override.input.type": "dynamic",
        "override.input.block_sizes.-1": "None",
        "override.mlp_weight.block_sizes.-1": "64",
    }
    assert quantizer_key("*") == "all"


def test_registered_name_is_sanitised() -> None:
    assert registered_name("qwen3_tiny", "total_sensitivity") == "autoquant-qwen3_tiny-total_sensitivity"
    expected = "autoquant-Qwen-Qwen3-4B-constrained_score"
    assert registered_name("Qwen/Qwen3 4B", "constrained_score") == expected


def test_failed_refused_and_zero_runs_never_qualify() -> None:
    rows = [
        {"run_id": "a", "status": "FINISHED", "total_sensitivity": 2.0},
        {"run_id": "b", "status": "FAILED", "total_sensitivity": math.nan},
        {"run_id": "c", "status": "FINISHED", "total_sensitivity": 0.0},
        {"run_id": "d", "status": "FINISHED", "total_sensitivity": math.inf},
    ]
    assert [r["run_id"] for r in qualifying(rows, "total_sensitivity")] == ["a"]


def test_quantize_config_from_json_restores_int_block_size_keys() -> None:
    text = ('{"algorithm": "max", "quant_cfg": [{"quantizer_name": "*", "enable": false}, '
            '{"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 4, '
            '"block_sizes": {"-1": 64, "type": "static"}}}]}')
    cfg = quantize_config_from_json(text)
    assert cfg["algorithm"] == "max"
    assert cfg["quant_cfg"][1]["cfg"]["block_sizes"] == {-1: 64, "type": "static"}


def test_settings_off_local_server() -> None:
    assert not settings_from_cfg({"experiment": "e", "tracking": {"mode": "off"}}).enabled
    local = settings_from_cfg({"experiment": "e", "tracking": {"mode": "local"}})
    assert local.tracking_uri.startswith("sqlite:///") and local.tracking_uri.endswith("/mlflow.db")
    assert local.artifact_location.endswith("mlruns") and local.experiment_name == "e"
    with pytest.raises(UserInputError, match="MLFLOW_TRACKING_URI"):
        settings_from_cfg({"experiment": "e", "tracking": {"mode": "server", "tracking_uri": None}})
    with pytest.raises(UserInputError, match=r"tracking\.mode"):
        settings_from_cfg({"experiment": "e", "tracking": {"mode": "cloud"}})


def test_unreachable_server_fails_fast_with_one_line() -> None:
    settings = settings_from_cfg({"experiment": "e", "tracking": {"mode": "server",
                                                                  "tracking_uri": "http://127.0.0.1:9"}})
    t0 = time.perf_counter()
    with pytest.raises(UserInputError, match="unreachable") as info:
        connect(settings)
    assert time.perf_counter() - t0 < 5 and "\n" not in str(info.value)


def test_local_yaml_resolves_to_project_root() -> None:
    from autoquant_sweep.config import register_configs
    from autoquant_sweep.paths import conf_dir, project_root

    register_configs()
    node = OmegaConf.load(conf_dir() / "tracking" / "local.yaml")
    assert node.tracking_uri == f"sqlite:///{project_root()}/mlflow.db"
    assert node.artifact_location == f"{project_root()}/mlruns"


def test_callback_does_nothing_when_tracking_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from autoquant_sweep.tracking.callbacks import MlflowSweepCallback

    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    cfg = OmegaConf.create({"experiment": "e", "tracking": {"mode": "off"},
                            "autoquant": {"objective": "total_sensitivity"}})
    callback = MlflowSweepCallback()
    callback.on_multirun_start(cfg)
    callback.on_multirun_end(cfg)
    assert callback.client is None and PARENT_RUN_ENV not in __import__("os").environ


def test_summary_files_with_failed_cells(tmp_path: Path) -> None:
    from autoquant_sweep.tracking.summary import write_summary

    rows = [
        {"run_id": "a", "quant_pair": "wint8_aint8", "granularity": "default", "dataset_size": "small",
         "total_sensitivity": 1e-5, "constrained_score": 1e-6, "effective_bits": 10.0, "status": "FINISHED",
         "cache_hit": "false", "failure_reason": ""},
        {"run_id": "b", "quant_pair": "wfp4_afp8", "granularity": "w_per_out_channel",
         "dataset_size": "small",
         "total_sensitivity": math.nan, "constrained_score": math.nan, "effective_bits": math.nan,
         "status": "FAILED", "cache_hit": "false", "failure_reason": "refused | because"},
    ]
    paths = write_summary(tmp_path, rows, "total_sensitivity", "t")
    names = ["sweep_summary.csv", "sweep_summary.md", "heatmap_total_sensitivity.png"]
    assert [p.name for p in paths] == names
    assert "refused \\| because" in paths[1].read_text()
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
