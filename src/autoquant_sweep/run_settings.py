"""A registered version's own run settings, for ``apply`` and ``export`` (issue 19 item 2).

The run that computed a version wrote them into its manifest (``report/manifest.json``): model kind
and dtype, device, the calibration captions file, ``seq_len``, batch size, calibration steps and the
held-out split. :func:`settings_from_manifest` reads them back, each overridable by a command-line flag
(:func:`with_overrides`), so a Qwen3-VL version is loaded as an image-text-to-text model, a bf16 run
stays bf16 and the checkpoint is calibrated on what the run calibrated on.

Paths in a manifest are the ones of the machine that ran: a path that no longer exists falls back to
the embedded asset of the same name (the embedded models, captions and held-out split are rebuilt
identically from their seed), else the command says which flag to pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from autoquant_sweep.errors import UserInputError

__all__ = ["EMBEDDED_MODELS", "RunSettings", "settings_from_manifest", "with_overrides"]

#: embedded model names -> attribute of :class:`~autoquant_sweep.embedded.EmbeddedAssets`
EMBEDDED_MODELS = {"qwen3_tiny": "qwen3_tiny_dir", "qwen3_vl_tiny": "qwen3_vl_tiny_dir"}


@dataclass(frozen=True)
class RunSettings:
    """What ``apply`` / ``export`` load, calibrate and evaluate with."""

    model_name: str
    model_path: str | None  # None: the embedded model ``model_name``
    kind: str
    dtype: str
    device: str
    calib_path: str | None  # None: the embedded captions of ``size``
    size: str
    num_calib_samples: int  # captions calibrated on (whole batches of batch_size)
    seq_len: int
    batch_size: int
    eval_source: str | None  # a file, "embedded", or None (no held-out split)
    eval_batch_size: int | None
    trust_remote_code: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _existing(path: Any) -> str | None:
    return str(path) if path and Path(str(path)).exists() else None


def settings_from_manifest(manifest: Mapping[str, Any]) -> RunSettings:
    """The run settings a manifest records; paths that no longer exist fall back to embedded assets.

    Example:
        >>> m = {"model": {"name": "qwen3_vl_tiny", "path": "/gone", "kind": "image_text_to_text",
        ...                "dtype": "bfloat16"},
        ...      "dataset": {"size": "small", "path": "/gone/small.txt", "num_samples": 16, "seq_len": 64},
        ...      "autoquant": {"device": "cpu", "batch_size": 8, "num_calib_steps": 2},
        ...      "evaluation": {"source": "embedded held-out split (...)", "batch_size": 8}}
        >>> s = settings_from_manifest(m)
        >>> s.model_path, s.kind, s.dtype, s.num_calib_samples, s.seq_len, s.eval_source
        (None, 'image_text_to_text', 'bfloat16', 16, 64, 'embedded')
    """
    from autoquant_sweep.data import EMBEDDED_EVAL_SOURCE

    model, dataset, aq = manifest.get("model", {}), manifest.get("dataset", {}), manifest.get("autoquant", {})
    name = str(model.get("name", ""))
    path = _existing(model.get("path"))
    if path is None and name not in EMBEDDED_MODELS:
        raise UserInputError(f"export/apply: the run's checkpoint '{model.get('path')}' does not exist here; "
                             "pass --model-path DIR")
    calib = _existing(dataset.get("path"))
    batch_size = int(aq.get("batch_size", 4))
    steps = aq.get("num_calib_steps")
    samples = int(dataset.get("num_samples", 16))
    calib_samples = min(samples, int(steps) * batch_size) if steps else samples
    evaluation = manifest.get("evaluation") or {}
    source = evaluation.get("source")
    eval_source = None
    if source == EMBEDDED_EVAL_SOURCE or (source and str(source).startswith("embedded")):
        eval_source = "embedded"
    elif source:
        eval_source = _existing(source)
    return RunSettings(
        model_name=name,
        model_path=path if not (name in EMBEDDED_MODELS and path is None) else None,
        kind=str(model.get("kind", "causal_lm")),
        dtype=str(model.get("dtype", "float32")),
        device=str(aq.get("device", "auto")),
        calib_path=calib,
        size=str(dataset.get("size", "small")),
        num_calib_samples=calib_samples,
        seq_len=int(dataset.get("seq_len", 32)),
        batch_size=batch_size,
        eval_source=eval_source,
        eval_batch_size=evaluation.get("batch_size"),
    )


#: flag name -> RunSettings field (flags left at None keep the manifest's value)
OVERRIDES = {"model_path": "model_path", "kind": "kind", "dtype": "dtype", "device": "device",
             "calib_path": "calib_path", "calib_samples": "num_calib_samples", "seq_len": "seq_len",
             "batch_size": "batch_size", "eval_path": "eval_source"}


def with_overrides(settings: RunSettings, flags: Mapping[str, Any]) -> RunSettings:
    """``settings`` with every flag that was given (not None) in place of the manifest's value.

    A ``--model-path`` other than the run's checkpoint drops the run's held-out split only when that
    split was a file the checkpoint came with; the embedded split stays (same tokenizer family).

    Example:
        >>> s = RunSettings("qwen3_tiny", None, "causal_lm", "float32", "cpu", None, "small", 16, 32, 4,
        ...                 "embedded", 4)
        >>> with_overrides(s, {"dtype": "bfloat16", "seq_len": None}).dtype
        'bfloat16'
    """
    changes = {field: flags[flag] for flag, field in OVERRIDES.items() if flags.get(flag) is not None}
    for key in ("num_calib_samples", "seq_len", "batch_size"):
        if key in changes and int(changes[key]) <= 0:
            raise UserInputError(f"--{key.replace('num_', '').replace('_', '-')}: must be a positive "
                                 f"integer, got {changes[key]}")
    return replace(settings, **changes)


def default_settings(model_name: str = "qwen3_tiny") -> RunSettings:
    """What ``apply`` did before manifests were read: the embedded model, fp32, small captions, 32 x 4.

    Used for versions whose run has no manifest (registered before reports were logged).
    """
    kind = "image_text_to_text" if "vl" in model_name else "causal_lm"
    return RunSettings(model_name, None, kind, "float32", "auto", None, "small", 16, 32, 4, "embedded", None)
