"""Real-checkpoint runs (issue 19 item 3): the preset, user data from local files (plain text and JSONL),
the held-out-split policy, and no embedded model built for a real checkpoint. Plan-level: real Hydra
composition, nothing loaded but ``config.json``; one app run for the exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autoquant_sweep.errors import UserInputError
from autoquant_sweep.plan import plan_run

from ..conftest import run_app

pytestmark = pytest.mark.integration


def _texts(n: int, tag: str) -> list[str]:
    return [f"a {tag} photo of {i} cats on a mat ." for i in range(n)]


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def test_preset_real_has_hf_ptq_sizes_and_reads_jsonl_calibration_and_held_out_files(compose_cfg, tmp_path):
    calib = _jsonl(tmp_path / "calib.jsonl", _texts(600, "calib"))
    held = _jsonl(tmp_path / "held.jsonl", _texts(40, "held"))
    overrides = ["preset=real", f"dataset.path={calib}", f"dataset.eval_path={held}"]
    cfg = compose_cfg(overrides)
    assert cfg.dataset.seq_len >= 512 and cfg.dataset.size == "large"
    assert cfg.autoquant.num_calib_samples == 512 and cfg.autoquant.num_score_samples == 128
    # the tiny checkpoint stands in for a real one: it has 256 positions
    plan = plan_run(compose_cfg([*overrides, "dataset.seq_len=256"]))
    assert plan.captions == _texts(512, "calib")  # the "text" field of the first 512 lines
    assert plan.batch_plan.num_calib_steps == 512 // plan.batch_plan.batch_size
    source, held_out = plan.eval_split
    assert source == str(held) and held_out == _texts(40, "held")


def test_plain_text_file_is_one_sample_per_line(compose_cfg, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(_texts(20, "plain")) + "\n\n")
    plan = plan_run(compose_cfg([f"dataset.path={calib}", f"dataset.eval_path={calib}"]))
    assert plan.captions == _texts(16, "plain")


def test_measured_objective_without_held_out_data_is_refused_in_the_plan(compose_cfg, tmp_path):
    calib = _jsonl(tmp_path / "calib.jsonl", _texts(20, "calib"))
    with pytest.raises(UserInputError) as info:
        plan_run(compose_cfg(["autoquant.objective=eval_loss_delta", f"dataset.path={calib}"]))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("autoquant.objective=eval_loss_delta needs the measured held-out loss")
    assert f"dataset.path={calib} has no held-out split" in message and "dataset.eval_path=FILE" in message


def test_search_measured_without_held_out_data_exits_2_with_one_line(tmp_path):
    calib = _jsonl(tmp_path / "calib.jsonl", _texts(20, "calib"))
    result = run_app(["-m", "search=measured", "hydra.sweeper.n_trials=1", f"dataset.path={calib}",
                      "tracking=off"], cwd=tmp_path, timeout=240)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("autoquant-sweep: error:")]
    assert len(errors) == 1 and "objective=eval_loss_delta needs the measured held-out loss" in errors[0]
    assert "Inserted" not in result.stderr + result.stdout  # refused before any trial quantized anything


def test_constrained_objective_without_held_out_data_logs_once_that_evaluation_is_off(compose_cfg, tmp_path,
                                                                                        caplog):
    calib = _jsonl(tmp_path / "calib-once.jsonl", _texts(20, "calib"))
    with caplog.at_level("WARNING", logger="autoquant_sweep.user_data"):
        for _ in range(2):
            plan = plan_run(compose_cfg([f"dataset.path={calib}"]))
    assert plan.eval_split is None
    warnings = [r.getMessage() for r in caplog.records if "held-out evaluation is off" in r.getMessage()]
    assert len(warnings) == 1 and f"dataset.path={calib} has no held-out split" in warnings[0]


def test_real_checkpoint_without_data_never_builds_the_embedded_models(compose_cfg, embedded, tmp_path,
                                                                         monkeypatch):
    checkpoint = tmp_path / "real-ckpt"
    shutil.copytree(embedded.qwen3_tiny_dir, checkpoint)
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("AUTOQUANT_SWEEP_CACHE", str(cache))
    plan = plan_run(compose_cfg(["model=qwen3_4b", f"model.path={checkpoint}", "model.dtype=float32"]))
    assert plan.captions == embedded.caption_file("small").read_text().splitlines()
    # captions only: no embedded model or tokenizer was built or trained
    assert sorted(p.name for p in cache.iterdir()) == ["embedded-captions-v1-seed0"]
