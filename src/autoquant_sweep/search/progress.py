"""The operator's view of a sweep: one progress display for the study, driven by Hydra's callback API.

Each job leaves one small file in its Hydra job folder (:func:`write_outcome`: computed, cache hit, no-op,
refused or failed, with its objective and pair x granularity); :class:`StudyProgressCallback` reads it in
``on_job_end`` and shows trial k of n, elapsed time, an ETA from the trials so far, the best value so far
with its pair x granularity, and the counts per kind. On a terminal it is a ``rich`` progress bar (each
trial also gets a line above it); elsewhere (CI, SLURM logs, a pipe) one plain line per trial.

With the basic launcher every job runs in the sweep's process, so the display covers the whole study;
with joblib or SLURM each worker prints its own jobs' lines.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "KINDS",
    "OUTCOME_FILE",
    "StudyProgress",
    "StudyProgressCallback",
    "format_duration",
    "read_outcome",
    "write_outcome",
]

#: the file a job leaves in its Hydra job folder for the progress display
OUTCOME_FILE = "outcome.json"
#: what a trial can end as, in display order
KINDS = ("computed", "cache hit", "no-op", "refused", "failed")


def write_outcome(job_dir: Path, kind: str, *, label: str, value: float | None = None,
                  reason: str | None = None) -> None:
    """Record how a job ended for :class:`StudyProgressCallback` (never fails the job: best effort)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    payload = {"kind": kind, "label": label, "value": value, "reason": reason}
    try:
        (job_dir / OUTCOME_FILE).write_text(json.dumps(payload), encoding="utf-8")
    except OSError:  # a full disk or a removed folder loses a progress line, not the trial
        pass


def read_outcome(job_dir: Path | None) -> dict[str, Any] | None:
    """The outcome :func:`write_outcome` left in ``job_dir``, or None."""
    if job_dir is None:
        return None
    try:
        return json.loads((Path(job_dir) / OUTCOME_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` when unknown.

    Example:
        >>> format_duration(42.4), format_duration(185), format_duration(3725), format_duration(None)
        ('42s', '3m05s', '1h02m', '?')
    """
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class StudyProgress:
    """What the display shows, updated trial by trial (pure: no Hydra, no terminal).

    Example:
        >>> p = StudyProgress(total=3, objective="constrained_score", started=0.0)
        >>> p.add({"kind": "computed", "label": "wint8_aint8 x default", "value": 2e-7}, seconds=10.0)
        >>> p.add({"kind": "refused", "label": "wfp4_afp16 x default", "value": None}, seconds=1.0)
        >>> p.line({"kind": "refused", "label": "wfp4_afp16 x default"}, now=11.0)
        'trial 2/3 wfp4_afp16 x default: refused | best constrained_score 2.000e-07 (wint8_aint8 x default) | elapsed 11s, ETA 6s | computed 1, cache hit 0, no-op 0, refused 1, failed 0'
    """  # noqa: E501

    total: int | None
    objective: str
    started: float
    done: int = 0
    counts: Counter = field(default_factory=Counter)
    best_value: float | None = None
    best_label: str | None = None
    durations: list[float] = field(default_factory=list)

    def add(self, outcome: dict[str, Any], seconds: float) -> None:
        self.done += 1
        self.counts[outcome["kind"]] += 1
        self.durations.append(seconds)
        value = outcome.get("value")
        if isinstance(value, (int, float)) and math.isfinite(value) and outcome["kind"] != "failed" and (
            self.best_value is None or value < self.best_value
        ):
            self.best_value, self.best_label = float(value), outcome["label"]

    def eta(self) -> float | None:
        """Seconds left at the mean trial time so far (None without a total or a finished trial)."""
        if self.total is None or not self.durations:
            return None
        return max(self.total - self.done, 0) * sum(self.durations) / len(self.durations)

    def counts_text(self) -> str:
        return ", ".join(f"{kind} {self.counts[kind]}" for kind in KINDS)

    def best_text(self) -> str:
        if self.best_value is None:
            return f"best {self.objective}: none yet"
        return f"best {self.objective} {self.best_value:.3e} ({self.best_label})"

    def line(self, outcome: dict[str, Any], now: float) -> str:
        """One plain line for the trial that just ended."""
        of = f"/{self.total}" if self.total else ""
        what = outcome["kind"]
        if outcome.get("value") is not None and what in ("computed", "cache hit", "no-op"):
            what += f" {self.objective}={outcome['value']:.3e}"
        return (f"trial {self.done}{of} {outcome['label']}: {what} | {self.best_text()} | elapsed "
                f"{format_duration(now - self.started)}, ETA {format_duration(self.eta())} | "
                f"{self.counts_text()}")


def _label(config: DictConfig) -> str:
    pair = OmegaConf.select(config, "quant_pair.name", default="?")
    gran = OmegaConf.select(config, "quant_granularity.name", default="?")
    return f"{pair} x {gran}"


class StudyProgressCallback(Callback):
    """Hydra callback: trial k of n, elapsed, ETA, best so far and counts (``rich`` on a terminal)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self.progress: StudyProgress | None = None
        self._bar: Any = None
        self._task: Any = None
        self._job_started: float | None = None

    def _out(self) -> Any:
        return self.stream if self.stream is not None else sys.stdout

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        n_trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
        objective = str(OmegaConf.select(config, "autoquant.objective", default="objective"))
        self.progress = StudyProgress(total=int(n_trials) if n_trials else None, objective=objective,
                                      started=time.monotonic())
        if self._out().isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("study"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[best]}"),
                                 console=Console(file=self._out()), transient=False)
            self._task = self._bar.add_task("study", total=self.progress.total, eta="?", best="")
            self._bar.start()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._job_started = time.monotonic()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.progress is None:  # a single run: nothing to show progress of
            return
        now = time.monotonic()
        # the job's own folder (hydra.job.chdir is false, so job_return.working_dir is the launch folder)
        job_dir = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)
        outcome = read_outcome(Path(str(job_dir)) if job_dir else None)
        if outcome is None:  # the job ended before it could say (e.g. Hydra failed to start it)
            status = str(getattr(job_return, "status", ""))
            outcome = {"kind": "failed" if "FAILED" in status else "computed", "label": _label(config),
                       "value": None}
        seconds = now - self._job_started if self._job_started is not None else 0.0
        self.progress.add(outcome, seconds)
        line = self.progress.line(outcome, now)
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
            self._bar.update(self._task, completed=self.progress.done, best=self.progress.best_text(),
                             eta=format_duration(self.progress.eta()))
        else:
            print(line, file=self._out(), flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self.progress is not None and self.progress.done:
            elapsed = format_duration(time.monotonic() - self.progress.started)
            print(f"study: {self.progress.done} trials in {elapsed} | {self.progress.counts_text()}",
                  file=self._out(), flush=True)
