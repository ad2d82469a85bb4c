"""Where the project's own folders are: the source checkout's root, its ``conf/`` tree."""

from __future__ import annotations

from pathlib import Path


def project_root() -> Path | None:
    """The source checkout holding this package (``pyproject.toml`` next to ``src/``), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def conf_dir() -> Path:
    """The Hydra config tree ``conf/`` of the checkout."""
    root = project_root()
    if root is None or not (root / "conf").is_dir():
        raise FileNotFoundError(
            "autoquant-sweep: conf/ not found; run from a source checkout (pip install -e .)"
        )
    return root / "conf"
