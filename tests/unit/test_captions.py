"""Unit tests for the deterministic caption generator."""

from __future__ import annotations

import pytest

from autoquant_sweep.embedded import CAPTION_SUBSET_SIZES, generate_captions, generate_training_captions


def test_deterministic_for_seed() -> None:
    assert generate_captions(64, 0) == generate_captions(64, 0)
    assert generate_captions(64, 3) == generate_captions(64, 3)


def test_differs_across_seeds() -> None:
    assert generate_captions(64, 0) != generate_captions(64, 1)


def test_prefix_stable_so_subsets_nest() -> None:
    large = generate_captions(CAPTION_SUBSET_SIZES["large"], 0)
    for size, n in CAPTION_SUBSET_SIZES.items():
        subset = generate_captions(n, 0)
        assert len(subset) == n, size
        assert subset == large[:n]


def test_subset_sizes() -> None:
    assert CAPTION_SUBSET_SIZES == {"small": 16, "medium": 128, "large": 512}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_lines_are_nonempty_lowercase_ascii(seed: int) -> None:
    for caption in generate_captions(512, seed):
        assert caption.strip() == caption and caption
        assert caption.isascii()
        assert "\n" not in caption and "\r" not in caption
        assert caption == caption.lower()
        assert caption.endswith(" .")


def test_corpus_is_varied() -> None:
    captions = generate_captions(512, 0)
    assert len(set(captions)) > 450
    assert len({w for c in captions for w in c.split()}) > 100


def test_training_stream_is_separate_and_deterministic() -> None:
    train = generate_training_captions(200, 0)
    assert train == generate_training_captions(200, 0)
    assert train != generate_captions(200, 0)
    assert len(generate_training_captions(seed=0)) >= 4000


def test_negative_n_rejected() -> None:
    with pytest.raises(ValueError):
        generate_captions(-1, 0)
