"""Calibration / scoring batches from a captions file (one caption per line)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoquant_sweep.embedded.captions import CAPTION_SUBSET_SIZES
from autoquant_sweep.errors import UserInputError

__all__ = [
    "CAPTION_SUBSET_SIZES",
    "JSONL_FIELD",
    "BatchPlan",
    "parse_samples",
    "plan_batches",
    "read_captions",
    "resolve_caption_path",
    "resolve_eval_captions",
    "tokenize_batches",
]

#: the field of a ``.jsonl`` line that holds its sample
JSONL_FIELD = "text"


def parse_samples(text: str, path: Path, *, key: str = "dataset.path") -> list[str]:
    """The non-empty samples of a file's text: lines, or for ``.jsonl`` each line's ``text`` field.

    Example:
        >>> parse_samples('{"text": "a cat ."}\\n\\n{"text": "a dog ."}\\n', Path("d.jsonl"))
        ['a cat .', 'a dog .']
        >>> parse_samples('{"txt": 1}', Path("d.jsonl"))
        Traceback (most recent call last):
        ...
        autoquant_sweep.errors.UserInputError: dataset.path: 'd.jsonl' line 1 has no string field "text"; write one JSON object per line with a "text" field
    """  # noqa: E501
    if path.suffix.lower() != ".jsonl":
        return [line.strip() for line in text.splitlines() if line.strip()]
    samples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{key}: '{path}' line {number} is not JSON ({exc.msg}); write one JSON "
                                 f"object per line with a \"{JSONL_FIELD}\" field") from exc
        value = record.get(JSONL_FIELD) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise UserInputError(f"{key}: '{path}' line {number} has no string field \"{JSONL_FIELD}\"; "
                                 f"write one JSON object per line with a \"{JSONL_FIELD}\" field")
        if value.strip():
            samples.append(value.strip())
    return samples


def read_captions(path: Path, required: int, *, keep_all: bool = False, key: str = "dataset.path",
                  what: str = "captions file") -> list[str]:
    """Read non-empty caption lines from ``path``; at least ``required`` of them must exist.

    Returns the first ``required`` lines (every line with ``keep_all``). Errors name ``key``, the setting
    the path came from (``dataset.eval_path`` for the held-out file).

    Example:
        >>> read_captions(Path("/"), 1, key="dataset.eval_path", what="held-out captions file")
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        autoquant_sweep.errors.UserInputError: dataset.eval_path: held-out captions file '/' is a folder; ...
    """
    if path.is_dir():
        raise UserInputError(f"{key}: {what} '{path}' is a folder; pass the path of a text file "
                             "(one caption per line)")
    if not path.is_file():
        raise UserInputError(f"{key}: {what} '{path}' does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(
            f"{key}: {what} '{path}' is not valid UTF-8 (byte {exc.start}): "
            "re-encode it as UTF-8"
        ) from exc
    lines = parse_samples(text, path)  # one sample per line; a .jsonl file: each line's "text" field
    if not lines:
        raise UserInputError(f"{key}: {what} '{path}' is empty")
    if len(lines) < required:
        raise UserInputError(
            f"dataset.size: captions file '{path}' has {len(lines)} lines, "
            f"fewer than the {required} requested"
        )
    return lines if keep_all else lines[:required]


def resolve_caption_path(root: str | None, size: str, path: str | None, embedded_dir: Path | None) -> Path:
    """The captions file a dataset config points at (explicit path, else ``<root>/<size>.txt``)."""
    if size not in CAPTION_SUBSET_SIZES:
        raise UserInputError(
            f"dataset.size: unknown size '{size}'; choose one of {', '.join(CAPTION_SUBSET_SIZES)}"
        )
    if path:
        return Path(path).expanduser()
    base = Path(root).expanduser() if root else embedded_dir
    if base is None:
        raise UserInputError("dataset.root: no captions root given and no embedded captions available")
    return base / f"{size}.txt"


EMBEDDED_EVAL_SOURCE = "embedded held-out split (generate_captions(576, seed=0)[512:], 64 captions)"
EVAL_FILE = "eval.txt"


def resolve_eval_captions(
    root: str | None, path: str | None, eval_path: str | None, eval_samples: int | None
) -> tuple[str, list[str]] | None:
    """Held-out captions for the quality evaluation, never used for calibration or scoring.

    ``dataset.eval_path`` when given; else ``<dataset.root>/eval.txt`` when the root has one; else, for
    the embedded captions (no root, no path), the embedded held-out split; else None (a user
    ``dataset.path`` with no ``eval_path``: nothing is known to be held out, so nothing is evaluated).
    Returns ``(source, captions)``; ``eval_samples`` caps the number of captions.

    Example:
        >>> source, captions = resolve_eval_captions(None, None, None, None)
        >>> len(captions)
        64
    """
    if eval_path:
        file = Path(eval_path).expanduser()
        source, lines = str(file), read_captions(file, 1, keep_all=True, key="dataset.eval_path",
                                                 what="held-out captions file")
    elif root and (Path(root).expanduser() / EVAL_FILE).is_file():
        file = Path(root).expanduser() / EVAL_FILE
        source, lines = str(file), read_captions(file, 1, keep_all=True, key="dataset.root",
                                                 what=f"held-out captions file ({EVAL_FILE})")
    elif not root and not path:
        from autoquant_sweep.embedded.captions import generate_heldout_captions

        source, lines = EMBEDDED_EVAL_SOURCE, generate_heldout_captions(0)
    else:
        return None
    if eval_samples:
        lines = lines[: int(eval_samples)]
    return source, lines


@dataclass(frozen=True)
class BatchPlan:
    """How many batches ModelOpt calibrates and scores on."""

    batch_size: int
    num_batches: int
    num_calib_steps: int
    num_score_steps: int


def plan_batches(num_samples: int, batch_size: int, calib_samples: int, score_samples: int) -> BatchPlan:
    """Steps for ``mtq.auto_quantize``: ceil(samples / batch_size), capped by the batches available."""
    for key, value in (
        ("autoquant.batch_size", batch_size),
        ("autoquant.num_calib_samples", calib_samples),
        ("autoquant.num_score_samples", score_samples),
    ):
        if value <= 0:
            raise UserInputError(f"{key}: must be a positive integer, got {value}")
    num_batches = math.ceil(num_samples / batch_size)
    return BatchPlan(
        batch_size=batch_size,
        num_batches=num_batches,
        num_calib_steps=min(math.ceil(calib_samples / batch_size), num_batches),
        num_score_steps=min(math.ceil(score_samples / batch_size), num_batches),
    )


def tokenize_batches(tokenizer: Any, captions: list[str], seq_len: int, batch_size: int) -> list[dict]:
    """Pad/truncate every caption to ``seq_len`` and batch them; padding is masked out of the loss.

    The exact call is ``tokenizer(chunk, padding="max_length", truncation=True, max_length=seq_len,
    return_tensors="pt")`` so that anyone can rebuild the same batches independently.
    """
    if seq_len < 2:
        raise UserInputError(f"dataset.seq_len: must be at least 2, got {seq_len}")
    batches = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        enc = tokenizer(chunk, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        batches.append(
            {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
        )
    return batches
