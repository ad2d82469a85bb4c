"""``ensure_embedded_assets``: build-once, cached, lock-protected embedded default assets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .captions import CAPTION_SUBSET_SIZES, generate_captions, generate_training_captions

__all__ = [
    "ASSETS_VERSION",
    "COMPLETE_MARKER",
    "EmbeddedAssets",
    "default_cache_root",
    "ensure_embedded_assets",
]

#: Bump when the generator changes in a way that alters any output byte.
ASSETS_VERSION = 1
COMPLETE_MARKER = "COMPLETE.json"


@dataclass(frozen=True)
class EmbeddedAssets:
    """Paths of one built embedded-assets tree (see :func:`ensure_embedded_assets`)."""

    root: Path
    captions_dir: Path
    tokenizer_dir: Path
    qwen3_tiny_dir: Path
    qwen3_vl_tiny_dir: Path

    @classmethod
    def at(cls, root: Path) -> EmbeddedAssets:
        """Return the (possibly not yet built) layout rooted at ``root``."""
        return cls(
            root=root,
            captions_dir=root / "captions",
            tokenizer_dir=root / "tokenizer",
            qwen3_tiny_dir=root / "qwen3-tiny",
            qwen3_vl_tiny_dir=root / "qwen3-vl-tiny",
        )

    def caption_file(self, size: str) -> Path:
        """Path of the ``small`` / ``medium`` / ``large`` caption subset (one caption per line)."""
        if size not in CAPTION_SUBSET_SIZES:
            raise ValueError(
                f"unknown caption subset size {size!r}; expected one of {sorted(CAPTION_SUBSET_SIZES)}"
            )
        return self.captions_dir / f"{size}.txt"


def default_cache_root() -> Path:
    """Cache root: ``$AUTOQUANT_SWEEP_CACHE`` if set, else ``<root>/.cache/autoquant_sweep``.

    ``<root>`` is :func:`autoquant_sweep.layout.data_root` (the working directory, or
    ``$AUTOQUANT_SWEEP_ROOT``), the rule every store follows; a Hydra job gets ``paths.cache_dir`` through
    ``AUTOQUANT_SWEEP_CACHE`` (``hydra.job.env_set``).
    """
    env = os.environ.get("AUTOQUANT_SWEEP_CACHE")
    if env:
        return Path(env).expanduser()
    from ..layout import data_root

    return data_root() / ".cache" / "autoquant_sweep"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: asset trees whose files matched their recorded checksums in this process (each checked once)
VERIFIED_TREES: set[str] = set()


def _check_cache_root(cache_root: Path, key: str) -> None:
    """The cache root must be a folder (or not exist yet): one line naming ``key`` otherwise."""
    from ..errors import UserInputError

    if cache_root.exists() and not cache_root.is_dir():
        raise UserInputError(f"{key}: embedded asset cache '{cache_root}' is a file, not a folder; point "
                             f"{key} at a folder (or unset it to use <working dir>/.cache/autoquant_sweep)")
    existing = next((p for p in cache_root.absolute().parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserInputError(f"{key}: cannot create the embedded asset cache '{cache_root}': '{existing}' is "
                             f"a file; point {key} at a folder")


def verify_checksums(root: Path, key: str = "AUTOQUANT_SWEEP_CACHE") -> None:
    """Compare every file of a built tree with the sha256 recorded in its ``COMPLETE.json`` (once per
    process, ~10 ms); a missing or changed file is one line saying how to rebuild the tree.

    Example:
        >>> verify_checksums(ensure_embedded_assets(verbose=False).root)  # doctest: +SKIP
    """
    from ..errors import UserInputError

    if str(root) in VERIFIED_TREES:
        return
    files = json.loads((root / COMPLETE_MARKER).read_text(encoding="utf-8"))["files"]
    for rel, digest in sorted(files.items()):
        path = root / rel
        problem = "is missing" if not path.is_file() else (
            "does not match its recorded sha256" if _sha256(path) != digest else None)
        if problem:
            raise UserInputError(
                f"{key}: embedded asset cache '{root}' is damaged ('{rel}' {problem} in {COMPLETE_MARKER}); "
                f"rebuild it: rm -rf '{root}' && autoquant-sweep generate")
    VERIFIED_TREES.add(str(root))


def _remove_stale_builds(cache_root: Path, name: str) -> None:
    """Build folders of earlier builds that did not finish (a killed ``generate``): the caller holds the
    build lock, so no other process is building into them."""
    for stale in cache_root.glob(f".{name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _is_complete(root: Path) -> bool:
    marker = root / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all((root / rel).is_file() for rel in files)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_bytes("".join(f"{line}\n" for line in lines).encode("utf-8"))


def _build(tmp_root: Path, seed: int, verbose: bool) -> None:
    """Generate every asset under ``tmp_root`` (not yet visible under the final name)."""
    import torch
    from transformers.utils import logging as hf_logging

    from .tiny_models import build_qwen3_vl_tiny, save_model, train_qwen3_tiny
    from .tokenizer import train_tokenizer

    layout = EmbeddedAssets.at(tmp_root)
    layout.captions_dir.mkdir(parents=True)
    eval_captions = generate_captions(max(CAPTION_SUBSET_SIZES.values()), seed)
    for size, count in CAPTION_SUBSET_SIZES.items():
        _write_lines(layout.caption_file(size), eval_captions[:count])
    train_captions = generate_training_captions(seed=seed)
    _write_lines(layout.captions_dir / "train.txt", train_captions)

    tokenizer = train_tokenizer(train_captions)
    tokenizer.save_pretrained(layout.tokenizer_dir)

    held_out = eval_captions[: CAPTION_SUBSET_SIZES["medium"]]
    prev_threads = torch.get_num_threads()
    prev_verbosity = hf_logging.get_verbosity()
    prev_progress = hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        lm, lm_result = train_qwen3_tiny(tokenizer, train_captions, held_out, seed, verbose=verbose)
        save_model(lm, tokenizer, layout.qwen3_tiny_dir, seed, lm_result, {"held_out": "captions/medium.txt"})
        vl, vl_result = build_qwen3_vl_tiny(tokenizer, lm, held_out, seed, lm_result.steps, verbose=verbose)
        save_model(
            vl,
            tokenizer,
            layout.qwen3_vl_tiny_dir,
            seed,
            vl_result,
            {"held_out": "captions/medium.txt", "language_model_source": "qwen3-tiny (copied)"},
        )
    finally:
        torch.set_num_threads(prev_threads)
        hf_logging.set_verbosity(prev_verbosity)
        if prev_progress:
            hf_logging.enable_progress_bar()

    files = sorted(p.relative_to(tmp_root).as_posix() for p in tmp_root.rglob("*") if p.is_file())
    manifest = {
        "version": ASSETS_VERSION,
        "seed": seed,
        "files": {rel: _sha256(tmp_root / rel) for rel in files},
    }
    (tmp_root / COMPLETE_MARKER).write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def ensure_embedded_assets(
    cache_root: Path | None = None, seed: int = 0, *, verbose: bool = True
) -> EmbeddedAssets:
    """Return the embedded captions/tokenizer/tiny checkpoints for ``seed``, building them on first use.

    The tree lives at ``<cache_root>/embedded-v1-seed<seed>`` and is byte-identical for a given seed
    (and torch/transformers version). It is built in a temporary sibling directory and renamed into
    place, under an exclusive ``flock`` so concurrent processes build it only once; later calls
    return immediately once ``COMPLETE.json`` exists.

    Example::

        assets = ensure_embedded_assets()
        model = AutoModelForCausalLM.from_pretrained(assets.qwen3_tiny_dir)
        captions = assets.caption_file("small").read_text().splitlines()
    """
    key = "--cache" if cache_root is not None else "AUTOQUANT_SWEEP_CACHE"
    cache_root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    _check_cache_root(cache_root, key)
    root = cache_root / f"embedded-v{ASSETS_VERSION}-seed{seed}"
    assets = EmbeddedAssets.at(root)
    if _is_complete(root):
        verify_checksums(root, key)
        # build folders left by a killed build (nobody builds a tree that is complete)
        if any(cache_root.glob(f".{root.name}.tmp-*")):
            with FileLock(cache_root / f"{root.name}.lock"):
                _remove_stale_builds(cache_root, root.name)
        return assets
    with FileLock(cache_root / f"{root.name}.lock"):
        if _is_complete(root):  # another process finished while we waited
            verify_checksums(root, key)
            return assets
        _remove_stale_builds(cache_root, root.name)
        start = time.perf_counter()
        if verbose:
            print(f"[embedded] building embedded assets (seed={seed}) into {root}")
        tmp_root = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=cache_root))
        try:
            tmp_root.chmod(0o755)  # mkdtemp creates 0o700; the final tree should be readable like any cache
            _build(tmp_root, seed, verbose)
            if root.exists():  # stale, incomplete tree (e.g. created by hand): replace it
                shutil.rmtree(root)
            os.replace(tmp_root, root)
        except BaseException:
            shutil.rmtree(tmp_root, ignore_errors=True)
            raise
        if verbose:
            print(f"[embedded] built embedded assets in {time.perf_counter() - start:.1f} s")
    return assets
