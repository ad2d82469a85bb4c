"""Granularity overlays through the real runner: collision-free grids, physics, atomic publish."""

from __future__ import annotations

import json
from itertools import combinations

import pytest

from autoquant_sweep.pipeline import run

from ..conftest import run_in_process

pytestmark = pytest.mark.integration

PAIRS = ("wint4_aint8", "wint8_aint8")
GRANULARITIES = ("default", "recipe_match_channel_token", "w_group64", "w_group128")


def test_pair_by_granularity_multirun_gives_eight_distinct_reports(tmp_path, embedded):
    result = run_in_process(
        [
            "-m",
            f"quant_pair={','.join(PAIRS)}",
            f"quant_granularity={','.join(GRANULARITIES)}",
            "dataset.size=small",
            "tracking=off",
            "autoquant.evaluate=false",  # the scores and fingerprints are asserted, not the held-out loss
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifests = sorted(tmp_path.glob("multirun/sensitivity/*/qwen3_tiny/*/*/small/job*/report/manifest.json"))
    assert len(manifests) == 8
    assert len({m.parent.parent for m in manifests}) == 8
    seen = {}
    for path in manifests:
        manifest = json.loads(path.read_text())
        q = manifest["quantization"]
        pair, gran = path.parts[-6], path.parts[-5]
        assert (q["pair"], q["granularity"]) == (pair, gran)
        assert set(q) >= {
            "base_format",
            "overrides",
            "effective_quant_cfg",
            "fingerprint",
            "base_fingerprint",
        }
        seen[(pair, gran)] = (
            q["fingerprint"],
            manifest["objectives"]["total_sensitivity"],
            [layer["score"] for layer in manifest["per_layer"]],
        )
    assert set(seen) == {(p, g) for p in PAIRS for g in GRANULARITIES}
    for (a, (fp_a, _, scores_a)), (b, (fp_b, _, scores_b)) in combinations(seen.items(), 2):
        if fp_a != fp_b:
            assert scores_a != scores_b, f"{a} and {b} have different configs but identical scores"
        else:  # e.g. w_group128 restates the INT4 block-128 preset: same config, same scores
            assert scores_a == scores_b
    # INT4 weights are grouped by 128 in the base format, so w_group128 restates it
    assert seen[("wint4_aint8", "w_group128")][0] == seen[("wint4_aint8", "default")][0]


def test_int4_granularity_physics_on_the_trained_tiny_model(compose_cfg, tmp_path):
    """Finer scales hurt less: per-tensor > per-channel, and group64 < group128 (facts file item 10)."""
    total = {}
    for gran in ("w_per_tensor", "w_per_out_channel", "w_group64", "w_group128"):
        outcome = run(
            compose_cfg(["quant_pair=wint4_afp16", f"quant_granularity={gran}", "autoquant.evaluate=false"]),
            run_dir=tmp_path / gran,
        )
        total[gran] = outcome.objectives["total_sensitivity"]
    assert total["w_per_tensor"] > total["w_per_out_channel"]
    assert total["w_group64"] < total["w_group128"]
    assert total["w_per_tensor"] > 1.5 * total["w_group64"]


def test_publish_rerun_replaces_the_directory_atomically(compose_cfg, tmp_path):
    overrides = [
        "quant_pair=wint8_aint8",
        "quant_granularity=a_per_token_dynamic",
        "output_layout=publish",
        f"output_layout.publish_root={tmp_path / 'results'}",
        "autoquant.evaluate=false",  # the published folder is asserted, not the held-out loss
    ]
    first = run(compose_cfg(overrides))
    expected = (
        tmp_path / "results/sensitivity/weight-int8-act-int8/a_per_token_dynamic/qwen3_tiny_wint8_aint8_small"
    )
    assert first.report_dir == expected
    (expected / "stale.txt").write_text("from an older run")
    second = run(compose_cfg(overrides))
    assert second.report_dir == expected
    assert not (expected / "stale.txt").exists()
    assert sorted(p.name for p in expected.parent.iterdir()) == [expected.name]  # no staging/old leftovers
    manifest = json.loads((expected / "manifest.json").read_text())
    assert manifest["quantization"]["granularity"] == "a_per_token_dynamic"
    assert manifest["quantization"]["effective_quant_cfg"] == json.loads(
        json.dumps(first.manifest["quantization"]["effective_quant_cfg"])
    )


def test_report_regeneration_keeps_the_quantization_section(compose_cfg, tmp_path):
    from autoquant_sweep.report import regenerate_report

    outcome = run(compose_cfg(["quant_granularity=w_group64"]), run_dir=tmp_path)
    before = (outcome.report_dir / "manifest.json").read_text()
    recipe = (outcome.report_dir / "recipe" / "quant_cfg.json").read_bytes()
    (outcome.report_dir / "per_layer.md").unlink()
    regenerate_report(outcome.report_dir)
    assert (outcome.report_dir / "manifest.json").read_text() == before
    assert "w_group64" in (outcome.report_dir / "per_layer.md").read_text()
    assert (outcome.report_dir / "recipe" / "quant_cfg.json").read_bytes() == recipe  # the recipe is kept
