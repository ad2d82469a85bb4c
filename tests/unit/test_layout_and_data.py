"""Pure helpers: directory naming, atomic writes, batch planning, caption reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoquant_sweep.data import plan_batches, read_captions, resolve_caption_path
from autoquant_sweep.errors import UserInputError
from autoquant_sweep.layout import check_name, publish_dir, tmp_report_dir, write_dir_atomically

NAMES = dict(
    experiment="sensitivity",
    model="qwen3_tiny",
    quant_pair="wint4_aint8",
    weight="int4",
    activation="int8",
    granularity="w_group64",
    size="small",
)


def test_publish_dir_includes_dtypes_granularity_and_size():
    path = publish_dir(Path("results"), **NAMES)
    assert (
        path.as_posix() == "results/sensitivity/weight-int4-act-int8/w_group64/qwen3_tiny_wint4_aint8_small"
    )


@pytest.mark.parametrize("field", ["quant_pair", "granularity", "size", "model"])
def test_publish_dirs_never_collide_when_one_field_differs(field):
    other = {**NAMES, field: NAMES[field] + "x"}
    assert publish_dir(Path("r"), **NAMES) != publish_dir(Path("r"), **other)


@pytest.mark.parametrize("bad", ["../up", "a/b", "", ".", "with space"])
def test_unsafe_names_are_refused_with_the_key(bad):
    with pytest.raises(UserInputError, match=r"^quant_granularity\.name: .* cannot name a directory"):
        publish_dir(Path("r"), **{**NAMES, "granularity": bad})
    with pytest.raises(UserInputError, match=r"^k: "):
        check_name("k", bad)


def test_tmp_layout_puts_the_report_in_the_run_dir(tmp_path):
    assert tmp_report_dir(tmp_path) == tmp_path / "report"


def test_atomic_write_keeps_the_old_dir_on_failure(tmp_path):
    target = tmp_path / "out"
    write_dir_atomically(target, lambda d: (d / "a.txt").write_text("one"))

    def broken(folder: Path) -> None:
        (folder / "a.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_dir_atomically(target, broken)
    assert (target / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    write_dir_atomically(target, lambda d: (d / "b.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_atomic_write_into_unwritable_parent_names_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserInputError, match=r"output directory '.*file' is not writable"):
        write_dir_atomically(blocker / "out", lambda d: None)


@pytest.mark.parametrize(
    ("samples", "batch", "calib", "score", "expected"),
    [
        (16, 4, 16, 16, (4, 4, 4)),
        (16, 4, 64, 8, (4, 4, 2)),
        (10, 4, 5, 5, (3, 2, 2)),
        (512, 8, 64, 32, (64, 8, 4)),
    ],
)
def test_batch_plan_steps(samples, batch, calib, score, expected):
    plan = plan_batches(samples, batch, calib, score)
    assert (plan.num_batches, plan.num_calib_steps, plan.num_score_steps) == expected


def test_batch_plan_rejects_non_positive_counts():
    with pytest.raises(
        UserInputError, match=r"^autoquant\.num_score_samples: must be a positive integer, got 0$"
    ):
        plan_batches(16, 4, 16, 0)


def test_caption_reading_skips_blank_lines_and_cuts_to_size(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a cat .\n\n  a dog .  \na bird .\n")
    assert read_captions(path, 2) == ["a cat .", "a dog ."]


def test_caption_path_resolution(tmp_path):
    assert resolve_caption_path(str(tmp_path), "medium", None, None) == tmp_path / "medium.txt"
    assert resolve_caption_path(None, "large", "/x/y.txt", tmp_path) == Path("/x/y.txt")
    assert resolve_caption_path(None, "small", None, tmp_path) == tmp_path / "small.txt"
