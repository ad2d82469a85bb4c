"""The embedded asset cache: a root that is a file, a damaged tree (recorded checksums), build folders left
by a killed ``generate`` (issue 17, items 11, 13, 14). Works on copies of the built tree, never on the
shared cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autoquant_sweep.embedded import assets as assets_mod
from autoquant_sweep.embedded import ensure_embedded_assets
from autoquant_sweep.errors import UserInputError


@pytest.fixture
def cache_copy(tmp_path) -> Path:
    """A copy of the built tree under a fresh cache root (the shared cache is never changed)."""
    built = ensure_embedded_assets(verbose=False).root
    root = tmp_path / "cache"
    shutil.copytree(built, root / built.name)
    assets_mod.VERIFIED_TREES.discard(str(root / built.name))  # checked once per process
    return root


def test_a_damaged_file_is_found_by_its_recorded_checksum(cache_copy):
    weights = next(cache_copy.glob("*/qwen3-tiny/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern changed, same size: only the checksum can tell
    weights.write_bytes(bytes(data))
    with pytest.raises(UserInputError) as info:
        ensure_embedded_assets(cache_copy, verbose=False)
    tree = cache_copy / "embedded-v1-seed0"
    assert str(info.value) == (
        f"--cache: embedded asset cache '{tree}' is damaged ('qwen3-tiny/{weights.name}' does not match its "
        f"recorded sha256 in COMPLETE.json); rebuild it: rm -rf '{tree}' && autoquant-sweep generate")


def test_an_intact_copy_passes_and_is_returned(cache_copy):
    assert ensure_embedded_assets(cache_copy, verbose=False).root == cache_copy / "embedded-v1-seed0"


def test_build_folders_of_a_killed_generate_are_removed(cache_copy):
    stale = cache_copy / ".embedded-v1-seed0.tmp-abc123"
    (stale / "captions").mkdir(parents=True)
    ensure_embedded_assets(cache_copy, verbose=False)
    assert not stale.exists()


def test_a_cache_root_that_is_a_file_is_one_line(tmp_path):
    root = tmp_path / "cache"
    root.write_text("x")
    with pytest.raises(UserInputError, match=r"^--cache: embedded asset cache '.*/cache' is a file, not a "
                                             r"folder; point --cache at a folder"):
        ensure_embedded_assets(root, verbose=False)
    below = root / "deeper"
    with pytest.raises(UserInputError, match=r"^--cache: cannot create the embedded asset cache '.*/deeper': "
                                             r"'.*/cache' is a file"):
        ensure_embedded_assets(below, verbose=False)
