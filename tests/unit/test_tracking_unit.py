"""Unit tests of the tracking helpers that need no model and no MLflow store: names, flattening, settings,
summary texts, the callback with tracking off (with a store: ``integration/test_tracking_store.py``)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from autoquant_sweep.errors import UserInputError
from autoquant_sweep.recipe import quantize_config_from_json
from autoquant_sweep.tracking.registry import qualifying, registered_name
from autoquant_sweep.tracking.run_logging import flatten_overrides, quantizer_key
from autoquant_sweep.tracking.store import PARENT_RUN_ENV, settings_from_cfg


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


def _compose_in(folder: Path, overrides: list[str] = ()) -> object:
    """Compose the whole config (Hydra's own node included) as a command run in ``folder`` would."""
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.config import register_configs
    from autoquant_sweep.paths import conf_dir

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return compose("sensitivity", overrides=["hydra/sweeper=optuna", *overrides],
                       return_hydra_config=True)


def test_every_store_and_output_follows_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    from autoquant_sweep.embedded import default_cache_root
    from autoquant_sweep.tracking.store import default_artifact_location, default_tracking_uri

    for name in ("AUTOQUANT_SWEEP_ROOT", "AUTOQUANT_SWEEP_CACHE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = _compose_in(tmp_path)
    assert cfg.paths.root_dir == str(tmp_path)
    assert cfg.tracking.local_store_uri == f"sqlite:///{tmp_path}/mlflow.db" == default_tracking_uri()
    assert cfg.hydra.sweeper.storage == f"sqlite:///{tmp_path}/optuna.db"
    assert cfg.paths.cache_dir == str(default_cache_root()) == f"{tmp_path}/.cache/autoquant_sweep"
    assert cfg.hydra.job.env_set.AUTOQUANT_SWEEP_CACHE == cfg.paths.cache_dir
    assert cfg.hydra.run.dir.startswith(f"{tmp_path}/outputs/sensitivity/")
    assert cfg.hydra.sweep.dir.startswith(f"{tmp_path}/multirun/sensitivity/")
    assert cfg.output_layout.publish_root == f"{tmp_path}/results"
    local = settings_from_cfg({"tracking": OmegaConf.to_container(cfg.tracking, resolve=True)})
    assert (local.tracking_uri, local.source) == (default_tracking_uri(), "paths.mlflow_db")
    assert local.artifact_location == default_artifact_location() == f"{tmp_path}/mlruns"


def test_one_key_or_variable_moves_every_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoquant_sweep.embedded import default_cache_root
    from autoquant_sweep.tracking.store import default_tracking_uri

    monkeypatch.delenv("AUTOQUANT_SWEEP_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = _compose_in(tmp_path, [f"paths.root_dir={tmp_path}/by-key"])
    assert cfg.tracking.local_store_uri == f"sqlite:///{tmp_path}/by-key/mlflow.db"
    assert cfg.hydra.sweeper.storage == f"sqlite:///{tmp_path}/by-key/optuna.db"
    assert cfg.hydra.sweep.dir.startswith(f"{tmp_path}/by-key/multirun/")
    monkeypatch.setenv("AUTOQUANT_SWEEP_ROOT", str(tmp_path / "by-env"))
    cfg = _compose_in(tmp_path)
    assert cfg.tracking.local_store_uri == f"sqlite:///{tmp_path}/by-env/mlflow.db" == default_tracking_uri()
    assert cfg.paths.cache_dir == str(default_cache_root()) == f"{tmp_path}/by-env/.cache/autoquant_sweep"
    assert cfg.output_layout.publish_root == f"{tmp_path}/by-env/results"


def test_mlflow_tracking_uri_is_honoured_by_local_and_loses_to_an_explicit_uri(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env/mlflow.db")
    from_env = settings_from_cfg({"tracking": {"mode": "local", "local_store_uri": default}})
    assert (from_env.tracking_uri, from_env.source) == (f"sqlite:///{tmp_path}/env/mlflow.db",
                                                        "MLFLOW_TRACKING_URI")
    assert from_env.artifact_location == f"{tmp_path}/env/mlruns"  # next to the store it uses
    explicit = settings_from_cfg({"tracking": {"mode": "local", "local_store_uri": default,
                                               "tracking_uri": f"sqlite:///{tmp_path}/x.db"}})
    assert (explicit.tracking_uri, explicit.source) == (f"sqlite:///{tmp_path}/x.db", "tracking.tracking_uri")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    server = settings_from_cfg({"tracking": {"mode": "local", "local_store_uri": default}})
    assert server.artifact_location is None  # the server keeps its artifacts


def test_callback_does_nothing_when_tracking_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from autoquant_sweep.tracking.callbacks import MlflowSweepCallback

    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    cfg = OmegaConf.create({"experiment": "e", "tracking": {"mode": "off"},
                            "autoquant": {"objective": "total_sensitivity"}})
    callback = MlflowSweepCallback()
    callback.on_multirun_start(cfg)
    callback.on_multirun_end(cfg)
    assert callback.client is None and PARENT_RUN_ENV not in __import__("os").environ


def test_summary_texts_and_heatmap_with_failed_cells() -> None:
    from autoquant_sweep.figures import FIGURE_SAVE
    from autoquant_sweep.tracking.summary import heatmap_figure, markdown_text

    rows = [
        {"run_id": "a", "quant_pair": "wint8_aint8", "granularity": "default", "dataset_size": "small",
         "total_sensitivity": 1e-5, "constrained_score": 1e-6, "effective_bits": 10.0, "status": "FINISHED",
         "cache_hit": "false", "failure_reason": ""},
        {"run_id": "b", "quant_pair": "wfp4_afp8", "granularity": "w_per_out_channel",
         "dataset_size": "small",
         "total_sensitivity": math.nan, "constrained_score": math.nan, "effective_bits": math.nan,
         "status": "FAILED", "cache_hit": "false", "failure_reason": "refused | because"},
    ]
    assert "refused \\| because" in markdown_text(rows, "total_sensitivity", "t")
    png = io.BytesIO()
    heatmap_figure(rows, "total_sensitivity", "t").savefig(png, **FIGURE_SAVE)
    assert png.getvalue()[:4] == b"\x89PNG"


def test_sub_commands_find_the_store_a_run_in_the_same_folder_uses(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from autoquant_sweep.tracking.registry_args import tracking_uri

    for name in ("AUTOQUANT_SWEEP_ROOT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    run_store = _compose_in(tmp_path).tracking.local_store_uri
    assert tracking_uri(argparse.Namespace(tracking_uri=None)) == run_store == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(argparse.Namespace(tracking_uri=None)) == "http://127.0.0.1:5000"
    assert tracking_uri(argparse.Namespace(tracking_uri="sqlite:///x.db")) == "sqlite:///x.db"
