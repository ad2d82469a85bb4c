"""Loading checkpoints and tokenizers from local directories, the way a real checkpoint is loaded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoquant_sweep.devices import cuda_available, device_view
from autoquant_sweep.errors import UserInputError

MODEL_KINDS = ("causal_lm", "image_text_to_text")
DTYPES = ("float32", "bfloat16", "float16")
#: ``autoquant.device``: ``auto`` is what torch sees (CUDA when available)
DEVICES = ("auto", "cpu", "cuda")
NO_CUDA_DEVICE = "autoquant.device=cuda but torch sees no CUDA device; use autoquant.device=cpu or auto"
# Files over this size are fingerprinted by their head and tail only (a 4B checkpoint is ~8 GB).
_FULL_HASH_LIMIT = 256 * 2**20
_EDGE_BYTES = 16 * 2**20


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda`` without CUDA is an error."""
    if requested not in DEVICES:
        raise UserInputError(
            f"autoquant.device: unknown device '{requested}'; choose one of {', '.join(DEVICES)}"
        )
    if requested == "cuda" and not cuda_available():
        raise UserInputError(NO_CUDA_DEVICE)
    return device_view(requested)


def check_checkpoint_dir(path: str | None, key: str = "model.path") -> Path:
    """Fail fast (before any loading) when ``path`` is not a Hugging Face checkpoint directory."""
    if not path:
        raise UserInputError(f"{key}: not set; pass {key}=/path/to/checkpoint (a save_pretrained directory)")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserInputError(f"{key}: '{p}' does not exist")
    if not p.is_dir():
        raise UserInputError(f"{key}: '{p}' is a file; pass the checkpoint folder (save_pretrained output)")
    if not (p / "config.json").is_file():
        raise UserInputError(f"{key}: '{p}' is not a model directory (no config.json)")
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise UserInputError(f"{key}: '{p}' has no weights (*.safetensors or *.bin)")
    return p


def check_model_settings(kind: str, dtype: str) -> None:
    """``model.kind`` and ``model.dtype`` must name a loader and a torch dtype this project uses."""
    if kind not in MODEL_KINDS:
        raise UserInputError(f"model.kind: unknown kind '{kind}'; choose one of {', '.join(MODEL_KINDS)}")
    if dtype not in DTYPES:
        raise UserInputError(f"model.dtype: unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")


def read_checkpoint_config(path: Path, key: str = "model.path") -> dict[str, Any]:
    """Parse ``<path>/config.json`` (no weights, no transformers); a broken file names itself.

    Example:
        >>> read_checkpoint_config(Path("/nonexistent"))  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        autoquant_sweep.errors.UserInputError: model.path: '/nonexistent/config.json' is missing; ...
    """
    file = Path(path) / "config.json"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UserInputError(
            f"{key}: '{file}' is missing; a checkpoint directory needs the config.json that "
            "save_pretrained writes"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{key}: cannot read '{file}': {_first_line(exc)}") from exc
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(
            f"{key}: '{file}' is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "restore the checkpoint's config.json"
        ) from exc
    if not isinstance(config, dict):
        raise UserInputError(
            f"{key}: '{file}' holds a JSON {type(config).__name__}, not an object; "
            "restore the checkpoint's config.json"
        )
    return config


def checkpoint_identity(path: Path) -> str:
    """A content fingerprint of a checkpoint directory (config, tokenizer and weight files).

    Large files are hashed by size plus their first and last 16 MiB, which identifies a checkpoint
    without reading gigabytes on every run.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}\n".encode())
        with file.open("rb") as handle:
            if size <= _FULL_HASH_LIMIT:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_EDGE_BYTES))
                handle.seek(size - _EDGE_BYTES)
                digest.update(handle.read(_EDGE_BYTES))
    return digest.hexdigest()[:16]


@dataclass
class LoadedModel:
    """A model and tokenizer loaded from one local directory."""

    model: Any
    tokenizer: Any
    path: Path
    kind: str
    device: str
    identity: str
    config: dict


def load_model_and_tokenizer(
    path: Path, *, kind: str, dtype: str, device: str, trust_remote_code: bool = False
) -> LoadedModel:
    """Load with ``from_pretrained(path)``; repository code runs only with ``trust_remote_code=True``.

    Example:
        >>> loaded = load_model_and_tokenizer(Path("ckpt"), kind="causal_lm", dtype="float32",
        ...                                   device="cpu")  # doctest: +SKIP
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    check_model_settings(kind, dtype)
    config = read_checkpoint_config(path)  # a broken config.json names itself, not "cannot load a tokenizer"
    auto_cls = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForImageTextToText
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types for a broken tokenizer
        raise UserInputError(
            f"model.path: cannot load a tokenizer from '{path}': {_first_line(exc)}"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = auto_cls.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise UserInputError(
            f"model.path: cannot load a {kind} model from '{path}': {_first_line(exc)}"
        ) from exc
    model.to(device).eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        path=path,
        kind=kind,
        device=device,
        identity=checkpoint_identity(path),
        config=config,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
