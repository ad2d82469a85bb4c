"""Screenshots of the MLflow UI on a small study, taken in headless Chromium (docs/screenshots/).

    python scripts/ui_screenshots.py                 # build a study (tiny Qwen3, CPU, temp stores), shoot
    python scripts/ui_screenshots.py --store DIR     # reuse DIR/mlflow.db + DIR/mlruns from an earlier run
    python scripts/ui_screenshots.py --keep DIR      # build the study into DIR and keep it

What it does: runs ``experiments/sensitivity.py -m hydra/sweeper=optuna`` with ``--trials`` trials into a
temporary MLflow + Optuna store, starts ``autoquant-sweep ui`` on 127.0.0.1 (a free port), opens the
pages a person looks at first and saves them as PNG:

* ``runs_table.png``: the sweep's runs, sorted by ``log10_<objective>`` with the columns the README
  names (Description, ``log10_<objective>``, the raw objective, ``quant_pair``, ``quant_granularity``,
  ``override.status``);
* ``parent_overview.png``: the sweep's parent run, its description (the winner) at the top;
* ``parent_heatmap.png``: the parent's ``summary/heatmap_<objective>.png`` artifact;
* ``child_run.png``: the winning child run (description, params that took effect);
* ``registry.png``: the registered model version with its alias ``best`` and source run.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); no browser is downloaded. The Chromium
driver is :mod:`ui_browser` (DevTools protocol over aiohttp's websocket). The UI's own state (sorting,
columns, closed assistant panel) is set in the page's localStorage the way the UI itself stores it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from ui_browser import Chromium, find_chromium  # noqa: E402

APP = REPO / "experiments" / "sensitivity.py"
EXPERIMENT = "sensitivity"
OBJECTIVE = "total_sensitivity"
ML_VIEW = "workflowType=machine_learning"
WIDTH, HEIGHT = 1500, 860
UI_START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def store_overrides(root: Path) -> list[str]:
    return [
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_location={root / 'mlruns'}",
        f"hydra.sweeper.storage=sqlite:///{root / 'optuna.db'}",
    ]


def build_study(
    root: Path, args: Sequence[str] = ("hydra/sweeper=optuna", "hydra.sweeper.n_trials=8"), timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run one sweep of the embedded tiny Qwen3 on CPU into ``root`` (stores and outputs)."""
    root.mkdir(parents=True, exist_ok=True)
    overrides = store_overrides(root)
    if "hydra/sweeper=optuna" not in args:
        overrides = overrides[:2]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [sys.executable, str(APP), "-m", *args, *overrides],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"study failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result


class UiServer:
    """``autoquant-sweep ui`` on 127.0.0.1 against a store folder, stopped with SIGTERM."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> UiServer:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "autoquant_sweep.cli",
                "ui",
                "--port",
                str(self.port),
                "--tracking-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifact-location",
                str(self.root / "mlruns"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            start_new_session=True,
        )
        deadline = time.monotonic() + UI_START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(
                    f"the MLflow UI did not answer on {self.base} within {UI_START_TIMEOUT_S} s"
                )
            time.sleep(0.3)

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # the ui command stops its server's process group
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def api(self, path: str, body: dict | None = None) -> dict:
        """One call of MLflow's REST API (``/api/2.0/mlflow/...``)."""
        url = f"{self.base}/api/2.0/mlflow/{path}"
        if body is None:
            with urllib.request.urlopen(url, timeout=20) as r:
                return json.loads(r.read())
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=20) as r:
            return json.loads(r.read())


def study_facts(server: UiServer) -> dict[str, Any]:
    """What the pages must show, from the REST API: experiment, parent, winner, registered version."""
    exp = server.api(f"experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"]
    runs = server.api("runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000})["runs"]

    def tags(run: dict) -> dict:
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    parents = [r for r in runs if tags(r).get("sweep") == "true"]
    parent = max(parents, key=lambda r: r["info"]["start_time"])
    objective = next(p["value"] for p in parent["data"]["params"] if p["key"] == "objective")
    objective = OBJECTIVE if objective == "pareto" else objective  # a pareto study ranks by its first
    best_id = tags(parent)["best_run_id"]
    best = next(r for r in runs if r["info"]["run_id"] == best_id)
    metrics = {m["key"]: m["value"] for m in best["data"].get("metrics", [])}
    params = {p["key"]: p["value"] for p in best["data"].get("params", [])}
    name = tags(parent)["registered_model"]
    version = server.api(f"registered-models/alias?name={urllib.parse.quote(name)}&alias=best")[
        "model_version"
    ]
    return {
        "objective": objective,
        "experiment_id": exp["experiment_id"],
        "parent_id": parent["info"]["run_id"],
        "parent_name": parent["info"]["run_name"],
        "best_id": best_id,
        "best_name": best["info"]["run_name"],
        "best_pair": params["quant_pair"],
        "best_granularity": params["quant_granularity"],
        "best_value": metrics[objective],
        "best_log10": metrics[f"log10_{objective}"],
        "registered_model": name,
        "version": version["version"],
        "version_run_id": version["run_id"],
        "children": [r for r in runs if tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]],
    }


def runs_table_state(facts: dict[str, Any]) -> dict[str, Any]:
    """The runs page's UI state as MLflow keeps it in localStorage: sorted by ``log10_<objective>``,
    the README's columns, the sweep's parent expanded."""
    objective = facts["objective"]
    return {
        "orderByKey": f"metrics.`log10_{objective}`",
        "orderByAsc": True,
        "searchFilter": "",
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": [
            "attributes.`Description`",
            f"metrics.`log10_{objective}`",
            f"metrics.`{objective}`",
            "params.`quant_pair`",
            "params.`quant_granularity`",
            "params.`override.status`",
        ],
        "columnOrder": [],
        "columnWidths": {
            "attributes.`Run Name`": 280,
            "attributes.`Description`": 430,
            f"metrics.`log10_{objective}`": 175,
            f"metrics.`{objective}`": 150,
            "params.`quant_granularity`": 200,
        },
        "runsExpanded": {facts["parent_id"]: True},
        "runsPinned": [],
        "runsHidden": [],
        "runsVisibilityMap": {},
        "runListHidden": False,
        "viewMaximized": False,
    }


async def prepare(browser: Chromium, base: str, facts: dict[str, Any]) -> None:
    """Seed the UI's localStorage on a same-origin page that is not the app (the app would overwrite it)."""
    await browser.goto(f"{base}/health")
    await browser.wait_text("OK", 30)
    key = f'MLflowLocalStorage-1.1-ExperimentPage-["{facts["experiment_id"]}"]-ReactComponentState'
    state = json.dumps(runs_table_state(facts))
    await browser.eval(
        f"localStorage.setItem({json.dumps(key)}, {json.dumps(state)});"
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true'); true"
    )


async def settle(browser: Chromium, seconds: float = 1.5) -> None:
    """Let charts, images and late requests finish drawing before a screenshot."""
    await browser.wait_for("document.readyState === 'complete'", 30)
    await asyncio.sleep(seconds)


async def open_runs_table(browser: Chromium, base: str, facts: dict[str, Any]) -> None:
    await browser.goto(f"{base}/#/experiments/{facts['experiment_id']}/runs?{ML_VIEW}")
    await browser.wait_text(facts["best_name"], 60)
    await browser.wait_for("document.querySelector('[role=gridcell]') !== null", 30, "runs grid")


async def open_run(browser: Chromium, base: str, facts: dict[str, Any], run_id: str, text: str) -> None:
    await browser.goto(f"{base}/#/experiments/{facts['experiment_id']}/runs/{run_id}?{ML_VIEW}")
    await browser.wait_text(text, 60)


async def open_version(browser: Chromium, base: str, facts: dict[str, Any]) -> None:
    name = urllib.parse.quote(facts["registered_model"])
    await browser.goto(f"{base}/#/models/{name}/versions/{facts['version']}?{ML_VIEW}")
    await browser.wait_text("Source Run", 60)
    await browser.wait_text(facts["best_name"], 60)
    # the aliases arrive in a request of their own, after the version's page has drawn
    await browser.wait_for(
        "document.body && document.body.innerText.replace(/\\u00a0/g, ' ').includes('@ best')",
        60,
        "the alias @ best",
    )


async def show_more(browser: Chromium) -> None:
    """Unfold a run's description (the UI shows its first lines only)."""
    if await browser.click_text("Show more", selector="button, a, span"):
        await asyncio.sleep(0.5)


async def shoot(base: str, facts: dict[str, Any], out: Path) -> list[Path]:
    """Every screenshot of the module docstring into ``out``."""
    objective = facts["objective"]
    paths = []
    async with Chromium(width=WIDTH, height=HEIGHT) as browser:
        await prepare(browser, base, facts)
        await browser.resize(1760, 600)
        await open_runs_table(browser, base, facts)
        await settle(browser)
        paths.append(await browser.screenshot(out / "runs_table.png"))
        await browser.resize(WIDTH, HEIGHT)
        await open_run(browser, base, facts, facts["parent_id"], "Best:")
        await settle(browser)
        await show_more(browser)
        paths.append(await browser.screenshot(out / "parent_overview.png"))
        await browser.goto(
            f"{base}/#/experiments/{facts['experiment_id']}/runs/{facts['parent_id']}/artifacts/"
            f"summary/heatmap_{objective}.png?{ML_VIEW}"
        )
        await browser.wait_for(
            "[...document.images].some(i => i.complete && i.naturalWidth > 400)", 60, "heatmap image"
        )
        await settle(browser)
        paths.append(await browser.screenshot(out / "parent_heatmap.png"))
        await open_run(browser, base, facts, facts["best_id"], "effective config")
        await settle(browser)
        await show_more(browser)
        paths.append(await browser.screenshot(out / "child_run.png"))
        await browser.resize(WIDTH, 600)
        await open_version(browser, base, facts)
        await settle(browser)
        paths.append(await browser.screenshot(out / "registry.png"))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"), help="folder for the PNGs")
    parser.add_argument("--store", default=None, help="reuse this folder's mlflow.db + mlruns (no new study)")
    parser.add_argument("--keep", default=None, help="build the study into this folder and keep it")
    parser.add_argument("--trials", type=int, default=8, help="Optuna trials of the study (default 8)")
    args = parser.parse_args(argv)
    if not find_chromium():
        print("ui_screenshots: no chromium on PATH; apt-get install -y chromium", file=sys.stderr)
        return 2
    tmp = None
    if args.store:
        root = Path(args.store).resolve()
    elif args.keep:
        root = Path(args.keep).resolve()
    else:
        tmp = tempfile.TemporaryDirectory(prefix="aqs-ui-")
        root = Path(tmp.name)
    try:
        if not args.store:
            t0 = time.perf_counter()
            build_study(root, ("hydra/sweeper=optuna", f"hydra.sweeper.n_trials={args.trials}"))
            print(f"study: {args.trials} trials in {time.perf_counter() - t0:.0f} s -> {root}")
        with UiServer(root) as server:
            facts = study_facts(server)
            for path in asyncio.run(shoot(server.base, facts, Path(args.out))):
                print(f"{path} ({path.stat().st_size // 1024} KB)")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
