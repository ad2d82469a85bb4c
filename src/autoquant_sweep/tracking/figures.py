"""The one way the tracking side draws: a matplotlib ``Figure`` without pyplot state, saved with fixed
settings so that the same data gives the same PNG bytes."""

from __future__ import annotations

from typing import Any

FIGURE_SAVE = {"dpi": 100, "metadata": {"Software": None}}  # reproducible PNG bytes


def new_figure(width: float = 7.0, height: float = 4.5) -> Any:
    """A ``Figure`` on an Agg canvas (no pyplot, no global figure list to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig
