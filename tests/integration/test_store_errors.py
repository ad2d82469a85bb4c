"""Unusable stores and output folders, and harmless input that used to leave things behind (issue 12).

Each case is a fresh ``experiments/sensitivity.py`` or ``autoquant-sweep`` process; they start together
in one module fixture (about 2 s each: every one stops before a model, ModelOpt or MLflow is imported).
Every case must end with exactly one ``autoquant-sweep: error:`` line on stderr, exit status 2, no
traceback, and nothing created: no sweep or run folder, no new store file, damaged stores unchanged.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from ..conftest import SENSITIVITY_APP, TIMEOUT_SCALE, damaged_sqlite, one_error_line, run_at_once

pytestmark = pytest.mark.integration

SPACE = ["quant_pair=choice(wint8_aint8,wint4_aint8)", "quant_granularity=choice(default,w_group128)"]


def _stores(cwd: Path) -> list[str]:
    return [f"hydra.sweeper.storage=sqlite:///{cwd}/optuna.db", f"tracking.tracking_uri=sqlite:///{cwd}/mlflow.db",
            f"tracking.artifact_location={cwd}/mlruns"]


def _sweep(cwd: Path, *extra: str) -> list[str]:
    return ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", "dataset.size=small", *SPACE,
            *_stores(cwd), *extra]


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, dict]:
    """Start every case at once; ``name -> {result, cwd, seconds, hashes}``."""
    root = tmp_path_factory.mktemp("store-errors")
    prepared: dict[str, tuple[list[str], Path, dict[str, str]]] = {}

    def case(name: str, make_args, script: list[str] | None = None) -> None:
        cwd = root / name
        cwd.mkdir()
        hashes: dict[str, str] = {}
        args = make_args(cwd, hashes)
        prepared[name] = ([*(script or [sys.executable, str(SENSITIVITY_APP)]), *args], cwd, hashes)

    def damaged(cwd: Path, hashes: dict[str, str], name: str) -> Path:
        path = cwd / name
        hashes[name] = damaged_sqlite(path)
        return path

    case("storage-in-missing-folder",
         lambda cwd, h: [*_sweep(cwd), "hydra.sweeper.storage=sqlite:////nonexistent_dir/x.db"])
    case("n-trials-0", lambda cwd, h: [*_sweep(cwd), "hydra.sweeper.n_trials=0"])
    case("damaged-optuna-db", lambda cwd, h: (damaged(cwd, h, "optuna.db"), _sweep(cwd))[1])
    case("damaged-mlflow-db-sweep", lambda cwd, h: (damaged(cwd, h, "mlflow.db"), _sweep(cwd))[1])
    case("damaged-mlflow-db-run",
         lambda cwd, h: (damaged(cwd, h, "mlflow.db"), [f"tracking.tracking_uri=sqlite:///{cwd}/mlflow.db",
                                                         f"tracking.artifact_location={cwd}/mlruns"])[1])
    case("unwritable-run-dir", lambda cwd, h: ["hydra.run.dir=/proc/forbidden", "tracking=off"])
    case("unwritable-sweep-dir",
         lambda cwd, h: ["-m", "hydra.sweep.dir=/proc/forbidden/sweep", "tracking=off"])

    cli = [sys.executable, "-m", "autoquant_sweep.cli"]

    def report_args(cwd: Path, hashes: dict[str, str]) -> list[str]:
        folder = cwd / "report"
        folder.mkdir()
        (folder / "manifest.json").write_text('{"quantization": {"base_format": ')  # cut short
        return ["report", str(folder)]

    def apply_to_file(cwd: Path, hashes: dict[str, str]) -> list[str]:
        (cwd / "ckpt").write_text("keep me")
        return ["apply", "autoquant-qwen3_tiny-total_sensitivity", "--out", str(cwd / "ckpt"),
                "--tracking-uri", f"sqlite:///{cwd}/no-such-store.db"]

    def apply_to_non_empty(cwd: Path, hashes: dict[str, str]) -> list[str]:
        (cwd / "ckpt").mkdir()
        (cwd / "ckpt" / "config.json").write_text('{"unrelated": true}')
        (cwd / "ckpt" / "notes.txt").write_text("keep me")
        return ["apply", "autoquant-qwen3_tiny-total_sensitivity", "--out", str(cwd / "ckpt"),
                "--tracking-uri", f"sqlite:///{cwd}/no-such-store.db"]

    case("report-manifest-not-json", report_args, cli)
    case("apply-out-is-a-file", apply_to_file, cli)
    case("apply-out-not-empty", apply_to_non_empty, cli)

    commands = {name: (cmd, cwd, {}) for name, (cmd, cwd, _) in prepared.items()}
    results = run_at_once(commands, 240 * TIMEOUT_SCALE)
    for name, (_, _, hashes) in prepared.items():
        results[name]["hashes"] = hashes
    return results


def _created(cwd: Path, keep: set[str]) -> list[str]:
    """What the process left in its working folder, besides what the test put there."""
    return sorted(p.name for p in cwd.iterdir() if p.name not in keep)


@pytest.mark.parametrize(("name", "pattern", "keep"), [
    ("storage-in-missing-folder",
     r"^hydra\.sweeper\.storage: cannot create SQLite store '/nonexistent_dir/x\.db': folder "
     r"'/nonexistent_dir' does not exist", set()),
    ("n-trials-0", r"^hydra\.sweeper\.n_trials: 0 asks for no trial; pass hydra\.sweeper\.n_trials=N with "
                   r"N >= 1 \(nothing was started\)$", set()),
    ("damaged-optuna-db",
     r"^hydra\.sweeper\.storage: SQLite store '.*/optuna\.db' is damaged \(database disk image is "
     r"malformed\); nothing was written\. Restore it from a backup, or move it aside .*: mv '.*/optuna\.db' "
     r"'.*/optuna\.db\.damaged'$", {"optuna.db"}),
    ("damaged-mlflow-db-sweep",
     r"^tracking\.tracking_uri: SQLite store '.*/mlflow\.db' is damaged \(database disk image is "
     r"malformed\); nothing was written\. .*mv '.*/mlflow\.db'", {"mlflow.db"}),
    ("damaged-mlflow-db-run",
     r"^tracking\.tracking_uri: SQLite store '.*/mlflow\.db' is damaged \(database disk image is malformed\)",
     {"mlflow.db"}),
    ("unwritable-run-dir", r"^hydra\.run\.dir: cannot create output directory '/proc/forbidden': No such "
                           r"file or directory; pass a writable hydra\.run\.dir=\.\.\.$", set()),
    ("unwritable-sweep-dir", r"^hydra\.sweep\.dir: cannot create output directory '/proc/forbidden/sweep'",
     set()),
    ("report-manifest-not-json",
     r"^report: '.*/report/manifest\.json' is not valid JSON \(line 1 column \d+: Expecting value\); the "
     r"report folder is damaged", {"report"}),
    ("apply-out-is-a-file", r"^--out: '.*/ckpt' is a file; pass a new or empty folder$", {"ckpt"}),
    ("apply-out-not-empty", r"^--out: folder '.*/ckpt' is not empty \(2 entries: config\.json, notes\.txt\); "
                            r"pass a new or empty folder, or --force to replace it as a whole$", {"ckpt"}),
])
def test_unusable_store_or_output_is_one_line_before_anything_is_created(cases, name, pattern, keep):
    import re

    case = cases[name]
    message = one_error_line(case)
    assert re.search(pattern, message), message
    # nothing created: no sweep / run folder, no store file, no MLflow artifacts, no parent run
    assert _created(case["cwd"], keep) == [], (name, _created(case["cwd"], keep))
    for file, digest in case["hashes"].items():  # the damaged store was not written to
        assert hashlib.sha256((case["cwd"] / file).read_bytes()).hexdigest() == digest
    if name == "n-trials-0":
        assert "best" not in case["result"].stdout.lower()  # no old best printed


def test_apply_refusals_leave_the_target_untouched(cases):
    assert (cases["apply-out-is-a-file"]["cwd"] / "ckpt").read_text() == "keep me"
    target = cases["apply-out-not-empty"]["cwd"] / "ckpt"
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "notes.txt"]
    assert json.loads((target / "config.json").read_text()) == {"unrelated": True}
    manifest = cases["report-manifest-not-json"]["cwd"] / "report" / "manifest.json"
    assert manifest.read_text() == '{"quantization": {"base_format": '  # the damaged report is left as is
