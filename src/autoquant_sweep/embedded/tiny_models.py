"""Build, briefly train and save the tiny Qwen3 causal LM and the tiny Qwen3-VL model.

Everything runs on CPU in float32 with ``torch.set_num_threads(1)`` and explicit seeds, so the
saved bytes are identical across runs (and across machines with the same torch/transformers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

__all__ = [
    "INFO_FILENAME",
    "TrainResult",
    "build_qwen3_vl_tiny",
    "qwen3_tiny_config",
    "qwen3_vl_tiny_config",
    "train_qwen3_tiny",
]

INFO_FILENAME = "embedded_info.json"

HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 4
NUM_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = 32
MAX_POSITIONS = 256
ROPE_THETA = 10000.0
# Qwen3-VL's interleaved M-RoPE splits the head_dim // 2 = 16 rotary frequencies into (t, h, w) sections.
MROPE_SECTION = [6, 5, 5]

TRAIN_STEPS = 200
BATCH_SIZE = 16
SEQ_LEN = 40
LEARNING_RATE = 3e-3
WARMUP_STEPS = 20
HELD_OUT_SIZE = 128


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one training run (losses are mean token cross-entropy on the held-out batch)."""

    steps: int
    initial_loss: float
    final_loss: float
    random_reference: float


def qwen3_tiny_config(vocab_size: int, eos_token_id: int, pad_token_id: int) -> Qwen3Config:
    """Return the tiny float32 ``Qwen3Config`` used by the embedded default model."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=False,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        dtype="float32",
    )


def qwen3_vl_tiny_config(tokenizer: PreTrainedTokenizerFast) -> Qwen3VLConfig:
    """Return a tiny ``Qwen3VLConfig`` whose text tower matches :func:`qwen3_tiny_config`.

    Notes on transformers' Qwen3-VL config: rotary settings live in ``text_config.rope_parameters``
    and must carry ``mrope_section`` summing to ``head_dim // 2`` (the default ``[24, 20, 20]`` is for
    head_dim 128 and would silently mis-index); ``vision_config.out_hidden_size`` must equal the text
    ``hidden_size``; every ``deepstack_visual_indexes`` entry must be < ``depth``; and the
    ``image/video/vision_start/vision_end`` token ids must be real ids of the tokenizer.
    """
    ids = tokenizer.convert_tokens_to_ids
    text = qwen3_tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id).to_dict()
    text_config = {
        key: text[key]
        for key in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
            "rms_norm_eps",
            "hidden_act",
            "pad_token_id",
        )
    }
    text_config["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": ROPE_THETA,
        "mrope_section": list(MROPE_SECTION),
        "mrope_interleaved": True,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 8,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "in_channels": 3,
        "out_hidden_size": HIDDEN_SIZE,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [1],
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


def _encode(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize ``texts`` as ``caption + eos``, right-padded to ``SEQ_LEN``; returns (ids, labels)."""
    eos = tokenizer.eos_token_id
    ids = torch.full((len(texts), SEQ_LEN), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(texts), SEQ_LEN), -100, dtype=torch.long)
    for row, text in enumerate(texts):
        seq = [*tokenizer(text, add_special_tokens=False)["input_ids"], eos][:SEQ_LEN]
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(seq)] = torch.tensor(seq)
    return ids, labels


@torch.no_grad()
def held_out_loss(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean next-token loss of ``model`` on a text-only batch (padding masked)."""
    was_training = model.training
    model.eval()
    loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
    model.train(was_training)
    return float(loss)


def train_qwen3_tiny(
    tokenizer: PreTrainedTokenizerFast,
    train_texts: Sequence[str],
    held_out_texts: Sequence[str],
    seed: int,
    steps: int = TRAIN_STEPS,
    verbose: bool = True,
) -> tuple[Qwen3ForCausalLM, TrainResult]:
    """Initialise the tiny Qwen3 with ``seed`` and train it with AdamW for ``steps`` steps on CPU.

    The caller is responsible for ``torch.set_num_threads(1)`` if bit-exactness across machines matters.
    """
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(
        qwen3_tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    )
    model.to(torch.float32)
    train_ids, train_labels = _encode(tokenizer, train_texts)
    eval_ids, eval_labels = _encode(tokenizer, held_out_texts)
    initial = held_out_loss(model, eval_ids, eval_labels)

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / WARMUP_STEPS) * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
        ),
    )
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, train_ids.shape[0], (BATCH_SIZE,), generator=generator)
        ids, labels = train_ids[batch], train_labels[batch]
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    model.eval()
    final = held_out_loss(model, eval_ids, eval_labels)
    result = TrainResult(
        steps=steps, initial_loss=initial, final_loss=final, random_reference=math.log(len(tokenizer))
    )
    if verbose:
        print(
            f"[embedded] qwen3-tiny: held-out loss {initial:.4f} -> {final:.4f} after {steps} steps "
            f"(random reference ln(vocab={len(tokenizer)}) = {result.random_reference:.4f})"
        )
    return model, result


def build_qwen3_vl_tiny(
    tokenizer: PreTrainedTokenizerFast,
    trained_lm: Qwen3ForCausalLM,
    held_out_texts: Sequence[str],
    seed: int,
    steps: int,
    verbose: bool = True,
) -> tuple[Qwen3VLForConditionalGeneration, TrainResult]:
    """Build the tiny Qwen3-VL and copy the trained tiny Qwen3 language model into it.

    Parameter names line up one-to-one (``model.X`` -> ``model.language_model.X``, ``lm_head`` kept),
    and for text-only input M-RoPE uses identical (t, h, w) positions, i.e. plain RoPE, so the copied
    decoder is numerically the trained Qwen3. The vision tower (``model.visual.*``) stays randomly
    initialised from ``seed``; ``steps`` records the training steps of the copied language model.
    """
    torch.manual_seed(seed + 1)
    model = Qwen3VLForConditionalGeneration(qwen3_vl_tiny_config(tokenizer))
    model.to(torch.float32)
    eval_ids, eval_labels = _encode(tokenizer, held_out_texts)
    initial = held_out_loss(model, eval_ids, eval_labels)

    source = trained_lm.state_dict()
    mapped = {}
    for name, tensor in source.items():
        target = (
            name if name.startswith("lm_head.") else "model.language_model." + name.removeprefix("model.")
        )
        mapped[target] = tensor
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or any(not name.startswith("model.visual.") for name in missing):
        raise RuntimeError(
            f"Qwen3 -> Qwen3-VL weight copy mismatch: missing={missing} unexpected={unexpected}"
        )
    model.eval()
    final = held_out_loss(model, eval_ids, eval_labels)
    result = TrainResult(
        steps=steps, initial_loss=initial, final_loss=final, random_reference=math.log(len(tokenizer))
    )
    if verbose:
        print(
            f"[embedded] qwen3-vl-tiny: held-out loss {initial:.4f} -> {final:.4f} "
            f"(language model copied from qwen3-tiny; random reference {result.random_reference:.4f})"
        )
    return model, result


def save_model(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    seed: int,
    result: TrainResult,
    extra: dict[str, object] | None = None,
) -> None:
    """Save ``model`` (safetensors) + tokenizer + a deterministic ``embedded_info.json`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info = {
        "seed": seed,
        "steps": result.steps,
        "initial_loss": round(result.initial_loss, 4),
        "final_loss": round(result.final_loss, 4),
        "random_reference_loss": round(result.random_reference, 4),
        **(extra or {}),
    }
    (out_dir / INFO_FILENAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
