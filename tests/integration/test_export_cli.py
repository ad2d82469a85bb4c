"""``apply`` and ``export`` of registered versions, from real sweeps into a throwaway MLflow store.

Two one-job sweeps register two versions: a Qwen3-VL run in bf16 (language model only; the version's
own run settings must be used: image-text-to-text loader, bf16, the run's captions and batches) and a
qwen3_tiny run whose granularity has no deployment label (``w_per_in_channel``: refused before loading).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_in_process, run_in_process

pytestmark = pytest.mark.integration

VL = "autoquant-qwen3_vl_tiny-constrained_score"
REFUSED = "autoquant-qwen3_tiny-total_sensitivity"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, new_mlflow_store) -> dict:
    root = tmp_path_factory.mktemp("export-store")
    uri = new_mlflow_store(root / "mlflow.db")
    common = [f"tracking.tracking_uri={uri}", f"tracking.artifact_location={root / 'mlruns'}",
              "experiment=export_test", "quant_pair=wint8_aint8"]
    for args in (["model=qwen3_vl_tiny", "model.dtype=bfloat16"],
                 ["quant_granularity=w_per_in_channel", "autoquant.objective=total_sensitivity"]):
        result = run_in_process(["-m", *args, *common], cwd=root)
        assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "uri": uri}


def _cli(store: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return cli_in_process([*args, "--tracking-uri", store["uri"]], cwd=cwd)


@pytest.fixture(scope="module")
def client(store: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])


def test_apply_of_a_qwen3_vl_bf16_version_uses_its_run_settings(store, client, tmp_path):
    import modelopt.torch.opt as mto
    import torch
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "vl-applied"
    result = _cli(store, "apply", VL, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    mv = client.get_model_version_by_alias(VL, "best")
    manifest = json.loads(Path(client.download_artifacts(mv.run_id, "report/manifest.json", str(tmp_path)))
                          .read_text())
    settings = json.loads((out / "autoquant_apply.json").read_text())["settings"]
    assert settings["kind"] == manifest["model"]["kind"] == "image_text_to_text"
    assert settings["dtype"] == manifest["model"]["dtype"] == "bfloat16"
    assert settings["seq_len"] == manifest["dataset"]["seq_len"]
    assert settings["batch_size"] == manifest["autoquant"]["batch_size"]
    # same recipe, calibration and held-out batches as the run: its logged held-out loss, in bf16
    info = json.loads((out / "autoquant_apply.json").read_text())
    logged = client.get_run(mv.run_id).data.metrics["eval_loss"]
    assert info["evaluation"]["eval_loss"] == pytest.approx(logged, abs=1e-6)
    mto.enable_huggingface_checkpointing()
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert model.dtype == torch.bfloat16  # a bf16 run stays bf16
    assert not model.lm_head.weight_quantizer.is_enabled
    assert any(m.weight_quantizer.is_enabled for n, m in model.named_modules()
               if n.endswith("q_proj") and "language_model" in n)
    assert not any(getattr(m, "weight_quantizer", None) is not None and m.weight_quantizer.is_enabled
                   for n, m in model.named_modules() if "visual" in n)


def test_export_logs_a_logged_model_that_lookup_prints(store, client, tmp_path):
    from autoquant_sweep.export import EXPORT_REPORT

    out = tmp_path / "vl-export"
    result = _cli(store, "export", VL, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / EXPORT_REPORT).read_text())
    assert report["quant_algo"] == "W8A8_SQ_PER_CHANNEL"
    assert report["settings"]["dtype"] == "bfloat16" and report["settings"]["kind"] == "image_text_to_text"
    assert report["faithfulness"]["max_error_over_tolerance"] <= 1.0
    mv = client.get_model_version_by_alias(VL, "best")
    where = json.loads(mv.tags["export.W8A8_SQ_PER_CHANNEL"])
    logged = client.get_logged_model(where["model_id"])
    assert logged.source_run_id == mv.run_id and str(logged.status) in ("READY", "LoggedModelStatus.READY")
    assert logged.tags["registered_version"] == str(mv.version)
    names = {a.path for a in client.list_logged_model_artifacts(where["model_id"])}
    assert {"hf_quant_config.json", "model.safetensors", EXPORT_REPORT} <= names
    looked = _cli(store, "lookup", VL, "--out", str(tmp_path / "r.json"), cwd=tmp_path)
    assert looked.returncode == 0, looked.stderr[-2000:]
    assert f"export W8A8_SQ_PER_CHANNEL: logged model {where['model_id']} at {where['artifact_location']}" \
        in looked.stdout


def test_export_of_a_recipe_without_a_label_is_refused_before_loading(store, tmp_path):
    out = tmp_path / "refused"
    result = _cli(store, "export", REFUSED, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("autoquant-sweep: error: export: layer group 'model.layers.")
    assert "INT8 per_in_channel weights" in lines[-1] and "no deployment label" in lines[-1]
    assert "Loading weights" not in result.stderr and "run settings" not in result.stdout  # nothing loaded
    assert not out.exists()


def test_apply_flags_override_the_run_settings(store, tmp_path):
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(json.dumps({"text": f"a photo of {i} dogs ."}) + "\n" for i in range(12)))
    out = tmp_path / "vl-fp32"
    result = _cli(store, "apply", VL, "--out", str(out), "--dtype", "float32", "--seq-len", "16",
                  "--batch-size", "2", "--calib-path", str(calib), "--calib-samples", "6", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads((out / "autoquant_apply.json").read_text())
    s = info["settings"]
    assert (s["dtype"], s["seq_len"], s["batch_size"], s["calib_path"], s["num_calib_samples"]) == \
        ("float32", 16, 2, str(calib), 6)
    assert s["kind"] == "image_text_to_text"  # not overridden: the run's own
    assert info["calibration"] == str(calib)
    assert "run settings: qwen3_vl_tiny (image_text_to_text, float32), 6 calibration samples x 16 tokens" \
        in result.stdout
