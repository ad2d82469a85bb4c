"""Deterministic byte-level BPE tokenizer trained on the embedded caption corpus."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["EOS_TOKEN", "SPECIAL_TOKENS", "TOKENIZER_VOCAB_SIZE", "train_tokenizer"]

EOS_TOKEN = "<|endoftext|>"
#: Special tokens get ids 0..len-1 in this order (Qwen-style names, incl. the vision placeholders).
SPECIAL_TOKENS: tuple[str, ...] = (
    EOS_TOKEN,
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TOKENIZER_VOCAB_SIZE = 512


def train_tokenizer(
    texts: Sequence[str], vocab_size: int = TOKENIZER_VOCAB_SIZE, model_max_length: int = 256
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Byte-level BPE never produces unknown tokens, and the trainer is single-pass and
    order-dependent only on ``texts``, so the result is byte-for-byte reproducible.
    ``<|endoftext|>`` serves as bos, eos and pad; no bos is inserted automatically (as in Qwen).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
