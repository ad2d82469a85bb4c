"""The ``autoquant-sweep`` sub-commands of the foundation and granularity issues (in-process)."""

from __future__ import annotations

import json

import pytest

from autoquant_sweep.cli import main

pytestmark = pytest.mark.integration


def test_validate_lists_every_pair_by_granularity_with_status_and_reason(capsys):
    assert main(["validate", "--device", "cpu", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 10 * 9
    cell = {(r["pair"], r["granularity"]): r for r in rows}
    assert cell[("wint8_aint8", "w_group64")]["status"] == "ok"
    assert cell[("wint4_afp16", "a_per_token_dynamic")]["status"] == "noop"
    assert "disabled" in cell[("wint4_afp16", "a_per_token_dynamic")]["reason"]
    assert cell[("wfp4_afp16", "default")]["status"] == "refused"
    assert "CUDA" in cell[("wfp4_afp16", "default")]["reason"]
    assert cell[("wint4_afp8", "a_per_token_dynamic")]["status"] == "refused"  # AWQ + per-token inputs


def test_validate_for_cuda_refuses_what_modelopt_rejects_there(capsys):
    assert main(["validate", "--device", "cuda", "--json"]) == 0
    cell = {(r["pair"], r["granularity"]): r for r in json.loads(capsys.readouterr().out)}
    assert cell[("wfp4_afp16", "default")]["status"] == "ok"
    assert cell[("wfp4_afp16", "w_per_out_channel")]["status"] == "refused"
    assert "Only support E=4 & M=3" in cell[("wfp4_afp16", "w_per_out_channel")]["reason"]
    assert cell[("wfp4_afp4", "w_group64")]["status"] == "refused"  # NVFP4 ignores the block size
    counts = {s: sum(r["status"] == s for r in cell.values()) for s in ("ok", "noop", "refused")}
    assert counts == {"ok": 47, "noop": 21, "refused": 22}


def test_validate_table_output(capsys):
    assert main(["validate", "--device", "cpu", "--width", "220"]) == 0
    out = capsys.readouterr().out
    assert "43 ok, 18 noop, 29 refused" in out


def test_generate_prints_paths_and_losses(capsys, embedded):
    assert main(["generate"]) == 0
    out = capsys.readouterr().out
    assert str(embedded.qwen3_tiny_dir) in out
    assert "loss: random init" in out


def test_report_of_a_folder_without_manifest_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    expected = f"autoquant-sweep: error: report: '{tmp_path}' has no manifest.json"
    assert capsys.readouterr().err.strip() == expected
