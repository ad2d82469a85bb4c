"""The MLflow UI as a person sees it: rendered pages in headless Chromium, and `autoquant-sweep ui` stopping.

The browser test builds a two-run sweep of the tiny Qwen3 on CPU into temp stores, starts
``autoquant-sweep ui`` on 127.0.0.1 and checks the rendered text (not the REST API) of the pages the
README sends people to. It is skipped when no ``chromium`` is installed (``.ci/run`` installs Debian's).
The signal test needs no browser: the UI serves the study's runs (REST API), then Ctrl-C (SIGINT) and SIGTERM
stop it and its server process group.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_in_process

sys.path.insert(0, str(REPO / "scripts"))

from ui_browser import Chromium, find_chromium
from ui_screenshots import (
    UiServer,
    open_run,
    open_runs_table,
    open_version,
    prepare,
    store_overrides,
    study_facts,
)

pytestmark = pytest.mark.integration

NO_CHROMIUM = (
    "no chromium on PATH: the rendered-UI checks need Debian's chromium (apt-get install -y chromium)"
)


@pytest.fixture(scope="module")
def ui_study(tmp_path_factory: pytest.TempPathFactory, embedded) -> Path:
    """The two-run sweep of scripts/ui_screenshots.py's ``build_study``, in this interpreter (it is about
    stores): its folder, holding ``mlflow.db`` and ``mlruns/``."""
    root = tmp_path_factory.mktemp("ui-study")
    result = run_in_process(["-m", "quant_pair=wint8_aint8", "quant_granularity=default,w_group64",
                             *store_overrides(root)[:2]], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def ui(ui_study: Path):
    if find_chromium() is None:
        pytest.skip(NO_CHROMIUM)
    with UiServer(ui_study) as server:
        yield server, study_facts(server)


# the runs grid's rows as the browser draws them: name, every cell's text and whether it is cut off
ROWS_JS = """(() => {
  const out = [];
  for (const row of document.querySelectorAll('.ag-center-cols-container [role=row]')) {
    const cells = {};
    for (const cell of row.querySelectorAll('[role=gridcell]')) {
      const inner = cell.querySelector('span,div') || cell;
      cells[cell.getAttribute('col-id')] = {text: cell.innerText.trim(),
        cut: cell.scrollWidth > cell.clientWidth + 1 || inner.scrollWidth > inner.clientWidth + 1};
    }
    out.push({index: Number(row.getAttribute('row-index')), cells});
  }
  const names = [...document.querySelectorAll('.ag-pinned-left-cols-container [role=row]')].map(
    r => ({index: Number(r.getAttribute('row-index')), name: r.innerText.trim()}));
  return JSON.stringify({out, names});
})()"""


def test_pages_show_the_winner_readable_numbers_and_the_registered_run(ui) -> None:
    server, facts = ui
    objective, best = facts["objective"], facts["best_name"]

    async def look() -> dict:
        seen: dict = {}
        async with Chromium(width=1500, height=860) as browser:
            await prepare(browser, server.base, facts)
            await open_run(browser, server.base, facts, facts["parent_id"], "Best:")
            seen["parent"] = await browser.text()
            await open_runs_table(browser, server.base, facts)
            await browser.wait_for(
                f"document.body.innerText.includes({json.dumps(str(facts['best_log10']))})",
                30,
                "the log10 column",
            )
            seen["table"] = json.loads(await browser.eval(ROWS_JS))
            await open_version(browser, server.base, facts)
            seen["version"] = await browser.text()
            seen["version_links"] = await browser.eval(
                "[...document.querySelectorAll('a')].map(a => a.getAttribute('href') || '')"
            )
        return seen

    seen = asyncio.run(look())
    # the parent's description names the winner, first
    winner = f"Best: {facts['best_pair']} / {facts['best_granularity']}"
    assert winner in seen["parent"], seen["parent"][:2000]
    assert f"{objective} = {facts['best_value']:.3e}" in seen["parent"]
    # the runs table, sorted by log10_<objective>: the best run first, its value shown whole
    names = {r["index"]: r["name"] for r in seen["table"]["names"]}
    rows = sorted(seen["table"]["out"], key=lambda r: r["index"])
    assert rows and names, seen["table"]
    assert best in names[rows[0]["index"]], (names, best)
    log10_cells = [c for k, c in rows[0]["cells"].items() if k and f"log10_{objective}" in k]
    assert log10_cells, rows[0]["cells"].keys()
    assert log10_cells[0]["text"] == str(facts["best_log10"]) and not log10_cells[0]["cut"], log10_cells
    texts = [next((c["text"] for k, c in r["cells"].items() if f"log10_{objective}" in k), "") for r in rows]
    values = [float(t) for t in texts if t not in ("", "-")]  # the parent has no value: "-"
    assert values == sorted(values) and len(values) >= 2  # it sorts the way it reads
    # the registry alias resolves to the run that computed the result
    assert "Aliases\n:\n@ best\n" in seen["version"], seen["version"][:1500]
    assert best in seen["version"]
    assert facts["version_run_id"] == facts["best_id"]
    assert any(f"/runs/{facts['best_id']}" in href for href in seen["version_links"]), seen["version_links"]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ui_serves_the_runs_then_stops_its_server_on_ctrl_c_and_sigterm(sig: int, ui_study: Path) -> None:
    from mlflow import MlflowClient

    server = UiServer(ui_study).__enter__()  # started and answering /health; stopped by the signal below
    proc, port = server.proc, server.port
    assert proc is not None
    try:
        # it serves the store's runs (every run id the store holds, over MLflow's REST API)
        uri = f"sqlite:///{ui_study / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment_id = client.get_experiment_by_name("sensitivity").experiment_id
        runs = server.api("runs/search", {"experiment_ids": [experiment_id], "max_results": 1000})["runs"]
        expected = {run.info.run_id for run in client.search_runs([experiment_id], max_results=1000)}
        assert {run["info"]["run_id"] for run in runs} == expected and len(expected) >= 3  # parent, 2 trials
        server_side = _descendants(proc.pid)
        assert server_side, "mlflow server runs as a child of the ui command"
        # MLflow's job runner (seven huey consumers, one interpreter each, for GenAI jobs) is left off
        runners = [pid for pid in server_side if "mlflow.server.jobs" in _cmdline(pid)]
        assert not runners, [_cmdline(pid) for pid in runners]
        proc.send_signal(sig)  # to the ui command only, as a terminal's Ctrl-C / a service manager would
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in server_side) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in server_side if _alive(pid)], "server processes outlived the ui command"
        with socket.socket() as s:
            # the port is free again: nothing listens on it. SO_REUSEADDR, because the server's closed
            # connections may sit in TIME_WAIT for a while, which is not a server still running.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
    finally:
        # a failed check before the signal: SIGTERM, so the ui command stops its server's own process group
        # too (a SIGKILL of the ui command alone left the server and its job consumers running)
        server.__exit__()
