"""The report's two PNGs (per-layer bars, budget curve): drawn, sized, byte-stable, any score sign."""

from __future__ import annotations

import struct

import pytest

from autoquant_sweep.figures import PNG_DPI
from autoquant_sweep.report import (
    PER_LAYER_PNG,
    PLOT_FILES,
    RECIPE_CURVE_PNG,
    RECIPE_DIR,
    plot_budget_curve,
    plot_sensitivity,
    render_plots,
)


def _manifest(scores: list[float]) -> dict:
    return {
        "per_layer": [{"group": f"model.layers.{i}.mlp.down_proj", "score": s} for i, s in enumerate(scores)],
        "quantization": {"pair": "wint8_aint8", "granularity": "default"},
        "model": {"name": "qwen3_tiny"},
        "dataset": {"size": "small"},
        "autoquant": {"method": "gradient"},
    }


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("scores", [[3e-8, 1e-6, 2e-7, 5e-9], [0.0, 1e-6, 2e-7], [-1e-9, 2e-9]])
def test_per_layer_png_is_drawn_and_byte_stable(tmp_path, scores):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    plot_sensitivity(first, _manifest(scores))
    plot_sensitivity(second, _manifest(scores))
    assert _png_size(first) == (8 * PNG_DPI, round(max(3.0, 0.28 * len(scores) + 1.2) * PNG_DPI))
    assert first.read_bytes() == second.read_bytes()  # no timestamp / software metadata in the file


@pytest.mark.parametrize("scores", [[1e-6, 3e-7, 0.0], [0.0, 0.0]])
def test_budget_curve_png_is_drawn(tmp_path, scores):
    curve = [{"achieved_effective_bits": 8.8 + 2 * i, "predicted_score": s, "satisfied": i > 0}
             for i, s in enumerate(scores)]
    path = tmp_path / "curve.png"
    plot_budget_curve(path, curve, "qwen3_tiny | wint8_aint8 | default: budget curve", 10.0)
    assert _png_size(path) == (6 * PNG_DPI, round(3.6 * PNG_DPI))


def test_render_plots_draws_a_deferred_reports_pngs_whole(tmp_path):
    """``render_plots`` (for a report written with ``plots=False``) draws the very PNGs of an eager report."""
    manifest = _manifest([3e-8, 1e-6])
    manifest["autoquant"]["effective_bits"] = 10.0
    manifest["budget_curve"] = [{"achieved_effective_bits": 9.8, "predicted_score": 1e-7, "satisfied": True}]
    eager = tmp_path / "eager"
    (eager / RECIPE_DIR).mkdir(parents=True)
    plot_sensitivity(eager / PER_LAYER_PNG, manifest)
    plot_budget_curve(eager / RECIPE_DIR / RECIPE_CURVE_PNG, manifest["budget_curve"],
                      "qwen3_tiny | wint8_aint8 | default: budget curve", 10.0)

    deferred = tmp_path / "deferred"
    (deferred / RECIPE_DIR).mkdir(parents=True)
    written = render_plots(deferred, manifest)
    assert [p.relative_to(deferred).as_posix() for p in written] == list(PLOT_FILES)
    for name in PLOT_FILES:
        assert (deferred / name).read_bytes() == (eager / name).read_bytes()
    # nothing else: no temporary file left behind
    left = sorted(p.name for p in deferred.rglob("*"))
    assert left == sorted([RECIPE_DIR, PER_LAYER_PNG, RECIPE_CURVE_PNG])

    no_recipe = tmp_path / "no_recipe"
    no_recipe.mkdir()
    assert render_plots(no_recipe, manifest) == [no_recipe / PER_LAYER_PNG]


def test_deferred_plots_draw_every_pending_report_and_stop_deferring(tmp_path):
    """A sweep's :class:`DeferredPlots`: reports written without PNGs get them at ``finish``; afterwards
    nothing is deferred any more (a later single run in the process draws its own)."""
    from autoquant_sweep.pipeline import DeferredPlots

    manifest = _manifest([3e-8, 1e-6])
    manifest["autoquant"]["effective_bits"] = 10.0
    manifest["budget_curve"] = [{"achieved_effective_bits": 9.8, "predicted_score": 1e-7, "satisfied": True,
                                 "budget": 10.0}]
    deferred = DeferredPlots()
    assert not deferred.active
    deferred.start()
    folders = [tmp_path / "job0", tmp_path / "job1"]
    for folder in folders:  # report folders as a sweep job leaves them: every file but the PNGs
        (folder / RECIPE_DIR).mkdir(parents=True)
        deferred.add(folder, manifest)
    assert deferred.active and deferred.finish() == 2
    for folder in folders:
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == sorted(PLOT_FILES)
    assert not deferred.active and deferred.finish() == 0
