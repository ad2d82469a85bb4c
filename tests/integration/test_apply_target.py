"""``apply`` checks the recipe against the target checkpoint before loading it (issue 17, item 1).

A recipe of the embedded qwen3_tiny (4 layers, hidden 128, INT4 groups of 128) applied with
``--model-path`` to a Qwen3 with 6 layers and hidden 96 exited 0 and wrote a checkpoint in which layers
4-5 were not quantized and 128-blocks were padded over 96-wide rows. Each case: one line naming the first
mismatch, exit 2, no ``--out`` folder; ``--model-path`` problems come before the registry lookup.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CONF, cli_in_process

pytestmark = pytest.mark.integration

NAME = "autoquant-qwen3_tiny-apply_target"
ERROR = "autoquant-sweep: error:"


@pytest.fixture(scope="module")
def registered(tmp_path_factory, embedded, new_mlflow_store) -> dict:
    """One real INT4 run of the tiny model, its recipe registered as version 1."""
    from hydra import compose, initialize_config_dir
    from mlflow import MlflowClient

    from autoquant_sweep.config import register_configs
    from autoquant_sweep.pipeline import run_job

    root = tmp_path_factory.mktemp("apply-target")
    uri = new_mlflow_store(root / "mlflow.db")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("sensitivity", overrides=["quant_pair=wint4_afp16", f"tracking.tracking_uri={uri}",
                                                f"paths.root_dir={root}", "autoquant.evaluate=false"])
    outcome = run_job(cfg, root / "run", record_plan_failures=False)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    run = client.get_run(outcome.run_id)
    version = client.create_model_version(NAME, source=f"{run.info.artifact_uri}/recipe",
                                          run_id=outcome.run_id, tags={"artifact": "recipe/quant_cfg.json"})
    client.set_registered_model_alias(NAME, "best", version.version)
    return {"root": root, "uri": uri, "recipe": outcome.manifest["recipe"], "assets": embedded}


def _checkpoint(folder: Path, assets, **changes) -> Path:
    """A randomly initialised Qwen3 like the embedded one, with ``changes`` to its config."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = json.loads((assets.qwen3_tiny_dir / "config.json").read_text()) | changes
    if "layer_types" in config:  # one per layer
        config["layer_types"] = [config["layer_types"][0]] * config["num_hidden_layers"]
    Qwen3ForCausalLM(Qwen3Config(**config)).save_pretrained(folder)
    return folder


def _apply(registered: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    out = str(cwd / "quantized")
    return cli_in_process(["apply", *args, "--tracking-uri", registered["uri"], "--out", out], cwd=cwd)


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith(ERROR)]
    return line.removeprefix(f"{ERROR} ")


def test_a_recipe_onto_a_narrower_checkpoint_names_the_first_shape_mismatch(registered, tmp_path) -> None:
    target = _checkpoint(tmp_path / "narrow", registered["assets"], num_hidden_layers=6, hidden_size=96)
    result = _apply(registered, tmp_path, NAME, "--model-path", str(target))
    line = _one_line(result)
    assert line.startswith(f"--model-path: the recipe of {NAME} v1 does not fit '{target}/config.json': "
                           "block_sizes[-1]=128 of model.layers.")  # the first quantized layer group's
    assert "does not fit the weight (out, in) = (" in line
    assert "block size 128 is larger than dim -1 (size 96)" in line
    assert not (tmp_path / "quantized").exists()


def test_a_recipe_onto_a_deeper_checkpoint_names_the_first_layer_it_leaves_out(registered, tmp_path) -> None:
    target = _checkpoint(tmp_path / "deep", registered["assets"], num_hidden_layers=6)
    line = _one_line(_apply(registered, tmp_path, NAME, "--model-path", str(target)))
    groups = len(registered["recipe"]["quantized_groups"]) + len(registered["recipe"]["kept_16bit_groups"])
    assert line == (f"--model-path: the recipe of {NAME} v1 does not fit '{target}/config.json': "
                    f"model.layers.4.self_attn.q_proj is in none of the recipe's {groups} layer groups (a "
                    "recipe of another model); it would stay unquantized; apply it to the model it was made "
                    "for, or run a sweep on this checkpoint for its own recipe")
    assert not (tmp_path / "quantized").exists()


def test_model_path_problems_come_before_the_registry_lookup(registered, tmp_path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    line = _one_line(_apply(registered, tmp_path, "autoquant-no-such-model", "--model-path", str(missing)))
    assert line == f"--model-path: '{missing}' does not exist"


def test_the_recipe_still_applies_to_its_own_model(registered, tmp_path) -> None:
    from autoquant_sweep.recipe_fit import recipe_mismatch
    from autoquant_sweep.tracking.registry import lookup_best_config

    recipe = registered["recipe"]
    config = json.loads((registered["assets"].qwen3_tiny_dir / "config.json").read_text())
    fmt = lookup_best_config(NAME, version=1, tracking_uri=registered["uri"])
    assert recipe_mismatch(fmt, config, [*recipe["quantized_groups"], *recipe["kept_16bit_groups"]]) is None
