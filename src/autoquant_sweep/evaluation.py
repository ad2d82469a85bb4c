"""Measured quality: held-out loss of the quantized model against the unquantized one.

The model ``mtq.auto_quantize`` returns is already quantized and calibrated with the best recipe at
the run's budget (facts 21), so evaluating it costs forward passes only. The held-out captions are
never used for calibration or scoring (see :func:`autoquant_sweep.data.resolve_eval_captions`).

Loss = mean next-token cross-entropy over every non-padding target token of the held-out batches
(each batch's ``loss`` weighted by its number of target tokens), in nats.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

#: largest held-out batch (captions); the quantized forward's cost is mostly per call on small models
MAX_EVAL_BATCH = 16


def eval_batch_size(model: Any, calib_batch_size: int) -> int:
    """Captions per held-out batch: ``MAX_EVAL_BATCH`` (at least the calibration batch size), unless a
    calibrated quantizer keeps an amax with the calibration batch's leading dimension (a per-token
    static quantizer, amax of shape (batch, seq, 1)): then exactly the calibration batch size.

    ``autoquant-sweep apply`` uses the same rule, so it evaluates on the very same batches.
    """
    from autoquant_sweep.quant.realized import realize

    for quantizer in realize(model):  # enabled weight / input quantizers; amax from the public .amax
        shape = quantizer.amax_shape
        if shape is not None and len(shape) >= 3 and shape[0] == calib_batch_size:
            return calib_batch_size
    return max(calib_batch_size, MAX_EVAL_BATCH)


def target_tokens(batch: dict) -> int:
    """Number of tokens a causal-LM loss averages over in ``batch`` (shifted labels != -100)."""
    return int((batch["labels"][:, 1:] != -100).sum())


def eval_loss(model: Any, batches: Sequence[dict], device: str = "cpu") -> float:
    """Token-weighted mean loss of ``model`` on ``batches`` (forward passes only, no gradients)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in batches:
                n = target_tokens(batch)
                if n == 0:
                    continue
                out = model(**{k: v.to(device) for k, v in batch.items()})
                total += float(out.loss) * n
                count += n
    finally:
        model.train(was_training)
    if count == 0:
        from autoquant_sweep.errors import UserInputError

        raise UserInputError("dataset.eval_path: the held-out captions hold no target token to evaluate")
    return total / count


def evaluation_section(
    quantized: float, unquantized: float, num_samples: int, seconds: float
) -> dict[str, Any]:
    """The manifest's ``evaluation`` section.

    Example:
        >>> e = evaluation_section(1.3509, 1.3497, 64, 0.2)
        >>> round(e["eval_loss_delta"], 4), round(e["ppl_increase_pct"], 3)
        (0.0012, 0.12)
    """
    delta = quantized - unquantized
    return {
        "eval_loss": quantized,
        "eval_loss_unquantized": unquantized,
        "eval_loss_delta": delta,
        "ppl_increase_pct": (math.exp(delta) - 1.0) * 100.0,
        "num_samples": num_samples,
        "seconds": seconds,
    }


def evaluate(model: Any, batches: Sequence[dict], unquantized: float, num_samples: int,
             device: str = "cpu") -> dict[str, Any]:
    """Evaluate ``model`` and compare with the (cached) unquantized loss."""
    t0 = time.perf_counter()
    loss = eval_loss(model, batches, device)
    return evaluation_section(loss, unquantized, num_samples, time.perf_counter() - t0)
