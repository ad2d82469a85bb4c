"""What the one-process benchmarks share: their command line, the plan of one pair x granularity, the
JSON they write, and running the Hydra app in this process."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def parse_repeat_args(doc: str) -> argparse.Namespace:
    """``--repeat N`` (rounds after a warm-up) and ``--json PATH``; warnings off (they are ModelOpt's, by
    design, on every call: they would drown the numbers)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    return args


def plan_for(pair: str, granularity: str, *overrides: str) -> Any:
    """The :class:`~autoquant_sweep.plan.RunPlan` of one untracked run, composed as the main job does."""
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.config import register_configs
    from autoquant_sweep.paths import conf_dir
    from autoquant_sweep.plan import plan_run

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose("sensitivity", overrides=["tracking=off", f"quant_pair={pair}",
                                                f"quant_granularity={granularity}", *overrides])
    return plan_run(cfg)


def write_json(path: Path | None, data: Any) -> None:
    """``data`` as indented JSON at ``path`` (nothing when ``path`` is None)."""
    if path is not None:
        path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def run_app(app: Callable[[], Any], argv: Sequence[str]) -> None:
    """Run a Hydra app in this process with ``argv`` (a multirun ends in ``SystemExit(0)``), then restore
    ``sys.argv``; a non-zero exit goes on."""
    saved = sys.argv
    sys.argv = list(argv)
    try:
        app()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        sys.argv = saved
