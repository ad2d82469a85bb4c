"""Loading the options of a config group (``conf/<group>/*.yaml``) as plain dicts, in their ``order``.

Used wherever the project needs every option of a group outside Hydra's composition: the
``validate`` sub-command, the Optuna search space, run names and the generated ``docs/granularity.md``.
Each file is checked against its schema (:mod:`autoquant_sweep.config.schema`) as Hydra would.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any


def _schema(group: str) -> Any:
    from autoquant_sweep.config.schema import GranularityConfig, QuantPairConfig

    return {"quant_pair": QuantPairConfig, "quant_granularity": GranularityConfig}.get(group)


def _order_key(item: dict) -> tuple:
    """Options with an ``order`` first, by it; then the others by name."""
    order = item.get("order")
    return (order is None, order if order is not None else 0, str(item["name"]))


def load_group(group: str, conf_dir: Path | None = None) -> list[dict]:
    """Load every ``conf/<group>/*.yaml`` as a plain dict (OmegaConf, resolved, on its schema's defaults).

    Read once per state of the files (their paths, sizes and modification times): a study name or a search
    space asks for the same groups many times per process (~0.2 s each read). Each call returns its own
    copy, so a caller may change what it gets.

    Raises:
        ValueError: one line naming the file and the key when a file does not fit its schema.
    """
    import copy

    from autoquant_sweep.paths import conf_dir as default_conf_dir

    paths = sorted(((conf_dir or default_conf_dir()) / group).glob("*.yaml"))
    stats = [(str(path), path.stat()) for path in paths]
    state = tuple((name, stat.st_mtime_ns, stat.st_size) for name, stat in stats)
    return copy.deepcopy(_read_group(group, state))


@functools.lru_cache(maxsize=32)
def _read_group(group: str, state: tuple[tuple[str, int, int], ...]) -> list[dict]:
    """The options of ``group`` from the files of ``state`` (what :func:`load_group` keys its reads on)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = _schema(group)
    items = []
    for name, _, _ in state:
        path = Path(name)
        data = OmegaConf.load(path)
        if not OmegaConf.is_dict(data):
            raise ValueError(f"{path}: expected a mapping")
        try:
            if schema is not None:
                data = OmegaConf.merge(OmegaConf.structured(schema), data)
            items.append(OmegaConf.to_container(data, resolve=True, throw_on_missing=True))
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None)
            reason = str(exc).splitlines()[0]
            raise ValueError(f"{path}: {f'{key}: ' if key else ''}{reason}") from exc
    return sorted(items, key=_order_key)


@functools.cache
def _short_granularities() -> dict[str, str]:
    return {str(g["name"]): str(g.get("short") or g["name"]) for g in load_group("quant_granularity")}


def short_granularity(name: str) -> str:
    """The ``short`` name of the project's granularity ``name`` (``w_group64`` -> ``w-g64``), else ``name``.

    Example:
        >>> short_granularity("w_group64"), short_granularity("my_own")
        ('w-g64', 'my_own')
    """
    return _short_granularities().get(name, name)
