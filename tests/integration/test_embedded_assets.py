"""Integration tests: build the embedded assets into a temporary cache; it must equal the suite's shared
cache byte for byte (determinism)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from autoquant_sweep.embedded import CAPTION_SUBSET_SIZES, EmbeddedAssets, ensure_embedded_assets

if TYPE_CHECKING:  # torch is imported by the tests that use it: collecting this module (the fast
    import torch  # loop collects it, then deselects it) does not pay the import

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    yield
    hf_logging.set_verbosity(verbosity)
    if progress:
        hf_logging.enable_progress_bar()


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedded-cache-a")


@pytest.fixture(scope="module")
def assets(cache_root: Path) -> EmbeddedAssets:
    return ensure_embedded_assets(cache_root, seed=0, verbose=False)


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _text_batch(assets: EmbeddedAssets, tokenizer) -> dict[str, torch.Tensor]:
    captions = assets.caption_file("small").read_text(encoding="utf-8").splitlines()
    batch = tokenizer(captions, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def test_layout_and_captions(assets: EmbeddedAssets, cache_root: Path) -> None:
    assert assets.root == cache_root / "embedded-v1-seed0"
    assert (assets.root / "COMPLETE.json").is_file()
    for size, n in CAPTION_SUBSET_SIZES.items():
        raw = assets.caption_file(size).read_bytes()
        assert raw.endswith(b"\n") and b"\r" not in raw
        lines = raw.decode("utf-8").split("\n")[:-1]
        assert len(lines) == n and all(lines)
    with pytest.raises(ValueError, match="huge"):
        assets.caption_file("huge")
    assert not list(cache_root.glob(".*tmp*")), "temporary build dirs must not be left behind"


def test_two_builds_are_byte_identical(assets: EmbeddedAssets, embedded: EmbeddedAssets) -> None:
    # the second build is the suite's shared cache (conftest's `embedded`, built once per checkout by the
    # same code): one build fewer per run than building twice here
    assert embedded.root != assets.root
    first, second = _digests(assets.root), _digests(embedded.root)
    assert len(first) >= 15
    assert first == second
    manifest = json.loads((assets.root / "COMPLETE.json").read_text())["files"]
    assert manifest == {k: v for k, v in first.items() if k != "COMPLETE.json"}


def test_second_call_is_cached(assets: EmbeddedAssets, cache_root: Path) -> None:
    marker_mtime = (assets.root / "COMPLETE.json").stat().st_mtime_ns
    start = time.perf_counter()
    again = ensure_embedded_assets(cache_root, seed=0, verbose=False)
    assert time.perf_counter() - start < 0.5
    assert again == assets
    assert (assets.root / "COMPLETE.json").stat().st_mtime_ns == marker_mtime


def test_qwen3_tiny_loads_and_is_trained(assets: EmbeddedAssets) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.qwen3_tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(assets.qwen3_tiny_dir).eval()
    assert tokenizer.eos_token is not None and tokenizer.pad_token is not None
    assert len(tokenizer) == model.config.vocab_size <= 512
    assert model.config.model_type == "qwen3"
    assert model.dtype == torch.float32

    info = json.loads((assets.qwen3_tiny_dir / "embedded_info.json").read_text())
    assert info["seed"] == 0 and info["steps"] > 0
    assert info["final_loss"] < 0.5 * info["initial_loss"]

    with torch.no_grad():
        loss = model(**_text_batch(assets, tokenizer)).loss
    assert math.isfinite(loss.item()) and loss.item() < 0.5 * math.log(len(tokenizer))

    standalone = AutoTokenizer.from_pretrained(assets.tokenizer_dir)
    text = "a small brown dog running on a sandy beach ."
    assert standalone(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_qwen3_vl_tiny_loads_with_vision_tower(assets: EmbeddedAssets) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(assets.qwen3_vl_tiny_dir)
    model = Qwen3VLForConditionalGeneration.from_pretrained(assets.qwen3_vl_tiny_dir).eval()
    assert any("visual" in name for name, _ in model.named_modules())
    assert model.config.vision_config.out_hidden_size == model.config.text_config.hidden_size

    info = json.loads((assets.qwen3_vl_tiny_dir / "embedded_info.json").read_text())
    assert info["final_loss"] < 0.5 * info["initial_loss"]

    with torch.no_grad():
        loss = model(**_text_batch(assets, tokenizer)).loss
    assert math.isfinite(loss.item()) and loss.item() < 0.5 * math.log(len(tokenizer))
