"""The Optuna study name holds everything that changes what its objective means (issue 17, item 3)."""

from __future__ import annotations

import pytest

from tests.conftest import study_name

SPACE = ["quant_pair=choice(wint8_aint8,wint4_aint8)"]


@pytest.mark.parametrize("change", [
    ["autoquant.effective_bits=8"],
    ["autoquant.method=kl_div"],
    ["autoquant.num_score_samples=8"],  # fewer scoring steps
    ["autoquant.num_calib_samples=8"],
    ["autoquant.batch_size=2"],
    ["autoquant.seed=1"],
    ["dataset.size=medium"],
    ["dataset.seq_len=16"],
    ["dataset.max_samples=8"],
    ["dataset.path=/data/other.txt"],
    ["autoquant.objective=total_sensitivity"],
    ["model=qwen3_vl_tiny"],
    ["model.disabled_layers=[]"],
])
def test_what_changes_the_objective_changes_the_study(change: list[str]) -> None:
    assert study_name(change, SPACE) != study_name((), SPACE)


def test_another_search_space_is_another_study() -> None:
    # Optuna refuses changed choices of a parameter within one study ("dynamic value space")
    assert study_name((), SPACE) != study_name((), ["quant_pair=choice(wint8_aint8)"])
    assert study_name((), SPACE) != study_name()


@pytest.mark.parametrize("same", [
    ["autoquant.cache=false"],
    ["autoquant.evaluate=false"],
    ["tracking=off"],
    ["output_layout=publish"],
    ["autoquant.effective_bits=10.0"],
    ["hydra.sweeper.n_trials=3"],
    ["dataset.eval_samples=8"],  # held-out data: only part of the identity of eval_loss_delta
])
def test_what_leaves_the_objective_alone_resumes_the_same_study(same: list[str]) -> None:
    assert study_name(same, SPACE) == study_name((), SPACE)


def test_the_held_out_data_is_part_of_a_measured_study() -> None:
    measured = ["autoquant.objective=eval_loss_delta"]
    assert study_name([*measured, "dataset.eval_samples=8"]) != study_name(measured)


def test_the_name_says_budget_method_and_objective() -> None:
    name = study_name(["autoquant.effective_bits=9.5", "autoquant.method=kl_div"], SPACE)
    assert name.startswith("sensitivity-qwen3_tiny-captions-small-b9.5-kl_div-")
    assert name.endswith("-constrained_score")
