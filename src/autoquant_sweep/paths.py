"""Where the project's own folders are: the source checkout's root, the package's ``conf/`` tree."""

from __future__ import annotations

from pathlib import Path


def project_root() -> Path | None:
    """The source checkout holding this package (``pyproject.toml`` next to ``src/``), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def conf_dir() -> Path:
    """The Hydra config tree, shipped inside the package (``autoquant_sweep/conf``, package data)."""
    return Path(__file__).resolve().parent / "conf"
