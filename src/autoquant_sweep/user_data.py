"""Data of real runs: samples from local files, the held-out-split policy, captions without the models.

- :func:`eval_split`: the held-out split a run evaluates on (the samples themselves are read by
  :func:`autoquant_sweep.data.parse_samples`);
- :func:`check_evaluation`: an objective that needs the measured held-out loss (``eval_loss_delta``:
  ``search=measured``) without a held-out split is refused in the plan, in one line, instead of a
  study of ``inf`` trials; otherwise a run without one logs once that evaluation is off and why;
- :func:`captions_only_dir`: a real checkpoint without its own data calibrates on the embedded
  captions, which are generated text: they are written on their own, without building or training the
  embedded models and tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoquant_sweep.errors import UserInputError

log = logging.getLogger(__name__)

__all__ = ["NEEDS_EVALUATION", "captions_only_dir", "check_evaluation", "check_sweep_evaluation",
           "eval_split"]

#: objectives whose value is the measured held-out loss increase
NEEDS_EVALUATION = ("eval_loss_delta",)
#: why evaluation is off, for each reason this process has logged (once each)
EVALUATION_OFF_LOGGED: set[str] = set()


def eval_split(c: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    """``(source, captions)`` of the held-out split a run evaluates on, None when nothing is evaluated."""
    from autoquant_sweep.data import resolve_eval_captions

    if not c["autoquant"].get("evaluate", True):
        return None
    d = c["dataset"]
    return resolve_eval_captions(d.get("root"), d.get("path"), d.get("eval_path"), d.get("eval_samples"))


def check_evaluation(c: Mapping[str, Any], split: Any) -> None:
    """Refuse an evaluation objective without held-out data; log once per reason that evaluation is off.

    Example:
        >>> c = {"autoquant": {"objective": "eval_loss_delta", "evaluate": True},
        ...      "dataset": {"path": "/data/cal.txt", "eval_path": None}}
        >>> check_evaluation(c, None)
        Traceback (most recent call last):
        ...
        autoquant_sweep.errors.UserInputError: autoquant.objective=eval_loss_delta needs the measured held-out loss, but dataset.path=/data/cal.txt has no held-out split: set dataset.eval_path=FILE (held-out text, never calibrated on), or rank by constrained_score
    """  # noqa: E501
    if split is not None:
        return
    aq, d = c["autoquant"], c["dataset"]
    objective = str(aq.get("objective"))
    if not aq.get("evaluate", True):
        why = "autoquant.evaluate=false"
    else:
        why = f"dataset.path={d.get('path')} has no held-out split" if d.get("path") else \
            f"dataset.root={d.get('root')} has no eval.txt"
    if objective in NEEDS_EVALUATION:
        raise UserInputError(f"autoquant.objective={objective} needs the measured held-out loss, but {why}: "
                             "set dataset.eval_path=FILE (held-out text, never calibrated on), or rank by "
                             "constrained_score")
    if why not in EVALUATION_OFF_LOGGED:
        EVALUATION_OFF_LOGGED.add(why)
        log.warning("held-out evaluation is off (%s): eval_loss / eval_loss_delta are not measured; set "
                    "dataset.eval_path=FILE to measure them", why)


def check_sweep_evaluation(config: Any) -> None:
    """:func:`check_evaluation` of a sweep's composed config, before its first trial: a study of an
    evaluation objective without held-out data stops at once (one line) instead of failing every trial."""
    from omegaconf import OmegaConf

    if "autoquant" not in config or "dataset" not in config:
        return
    c = {"autoquant": OmegaConf.to_container(config.autoquant, resolve=True),
         "dataset": OmegaConf.to_container(config.dataset, resolve=True)}
    check_evaluation(c, eval_split(c))


def captions_only_dir(cache_root: Path | None = None, seed: int = 0) -> Path:
    """The embedded captions (``small`` / ``medium`` / ``large`` files) without the embedded models.

    The full embedded tree's captions when it exists; else the same files written on their own into
    ``<cache>/embedded-captions-v1-seed<seed>/`` (generated text, milliseconds; no tokenizer or model
    is built or trained for a real checkpoint's run).
    """
    from autoquant_sweep.embedded import CAPTION_SUBSET_SIZES, default_cache_root, generate_captions
    from autoquant_sweep.embedded.assets import ASSETS_VERSION, EmbeddedAssets, _is_complete
    from autoquant_sweep.layout import write_dir_atomically

    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    full = root / f"embedded-v{ASSETS_VERSION}-seed{seed}"
    if _is_complete(full):
        return EmbeddedAssets.at(full).captions_dir
    target = root / f"embedded-captions-v{ASSETS_VERSION}-seed{seed}"
    if all((target / f"{size}.txt").is_file() for size in CAPTION_SUBSET_SIZES):
        return target
    captions = generate_captions(max(CAPTION_SUBSET_SIZES.values()), seed)

    def write(folder: Path) -> None:
        for size, count in CAPTION_SUBSET_SIZES.items():
            (folder / f"{size}.txt").write_bytes("".join(f"{line}\n" for line in captions[:count]).encode())

    root.mkdir(parents=True, exist_ok=True)
    write_dir_atomically(target, write)
    return target
