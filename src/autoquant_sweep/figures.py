"""How the project's PNGs are saved (fixed settings: the same data gives the same bytes) and the
pyplot-free ``Figure`` the tracking side draws on."""

from __future__ import annotations

from typing import Any

PNG_DPI = 100
FIGURE_SAVE = {"dpi": PNG_DPI, "metadata": {"Software": None}}  # no version stamp: reproducible PNG bytes


def new_figure(width: float = 7.0, height: float = 4.5) -> Any:
    """A ``Figure`` on an Agg canvas (no pyplot, no global figure list to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig
