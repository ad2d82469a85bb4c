"""Paths checked for what they must be before use, names before folders, messages naming the key (issue 17,
items 12-15).

Each command-line case is a fresh ``experiments/sensitivity.py`` or ``autoquant-sweep`` process; they start
together in one module fixture (each stops before a model is loaded). Every case must end with exactly one
``autoquant-sweep: error:`` line on stderr, exit status 2, no traceback, and nothing created, inside the
working folder or outside it.
"""

from __future__ import annotations

import re
import shutil
import socket
import sys
from pathlib import Path

import pytest

from autoquant_sweep.errors import CapabilityRefusedError, UserInputError
from autoquant_sweep.plan import plan_run

from ..conftest import SENSITIVITY_APP, TIMEOUT_SCALE, damaged_sqlite, one_error_line, run_at_once

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "autoquant_sweep.cli"]
APP = [sys.executable, str(SENSITIVITY_APP)]
HEAVY = ("torch", "transformers", "mlflow", "modelopt", "matplotlib")
NOT_UTF8 = b"a cat\xff on a mat .\n"
TIMEOUT = 240 * TIMEOUT_SCALE


@pytest.fixture(scope="module")
def listening_port():
    """A port some other process holds (the test itself), for ``ui --port``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def cases(tmp_path_factory, embedded, listening_port) -> dict[str, dict]:
    """Start every case at once; ``name -> {result, cwd}``."""
    root = tmp_path_factory.mktemp("paths")
    prepared: dict[str, tuple[list[str], Path, dict[str, str]]] = {}

    def case(name: str, command: list[str], make_args, env: dict[str, str] | None = None) -> None:
        cwd = root / name
        cwd.mkdir()
        prepared[name] = ([*command, *make_args(cwd)], cwd, env or {})

    # 12: names that become paths, before any folder or log file exists
    case("run-experiment-escapes", APP, lambda cwd: ["experiment=../../escaped-run", "tracking=off"])
    case("sweep-experiment-escapes", APP,
         lambda cwd: ["-m", "experiment=../../escaped-sweep", "tracking=off"])
    case("run-experiment-slash-space", APP, lambda cwd: ["experiment='a/b c'", "tracking=off"])
    # 13: paths checked for what they must be
    store = ["--tracking-uri", "sqlite:///{cwd}/none.db"]

    def lookup(out: str):
        return lambda cwd: ["lookup", "m", "--out", out.format(cwd=cwd), *[s.format(cwd=cwd) for s in store]]

    def with_file(make):
        def args(cwd: Path) -> list[str]:
            (cwd / "a-file").write_text("x")
            return make(cwd)
        return args

    case("lookup-out-missing-parent", CLI, lookup("{cwd}/missing/r.json"))
    case("lookup-out-is-a-folder", CLI, lookup("{cwd}"))
    case("lookup-out-parent-is-a-file", CLI, with_file(lookup("{cwd}/a-file/r.json")))
    case("lookup-missing-store", CLI, lambda cwd: ["lookup", "m", *[s.format(cwd=cwd) for s in store]])
    case("cache-is-a-file-run", APP, with_file(lambda cwd: ["tracking=off"]),
         env={"AUTOQUANT_SWEEP_CACHE": str(root / "cache-is-a-file-run" / "a-file")})
    case("cache-is-a-file-generate", CLI, with_file(lambda cwd: ["generate"]),
         env={"AUTOQUANT_SWEEP_CACHE": str(root / "cache-is-a-file-generate" / "a-file")})
    case("ui-store-in-missing-folder", CLI, lambda cwd: ["ui", "--tracking-uri", f"sqlite:///{cwd}/no/m.db"])
    case("ui-port-in-use", CLI, lambda cwd: ["ui", "--port", str(listening_port)])

    def apply_onto_source(cwd: Path) -> list[str]:
        shutil.copytree(embedded.qwen3_tiny_dir, cwd / "ckpt")
        return ["apply", "m", "--model-path", str(cwd / "ckpt"), "--out", str(cwd / "ckpt"), "--force",
                *[s.format(cwd=cwd) for s in store]]

    case("apply-out-is-the-source", CLI, apply_onto_source)
    case("report-of-a-file", CLI, with_file(lambda cwd: ["report", str(cwd / "a-file")]))
    case("dataset-path-is-a-folder", APP, lambda cwd: [f"dataset.path={cwd}", "tracking=off"])
    # 14: a damaged embedded cache, by its recorded checksums
    cache = root / "damaged-cache-copy"
    shutil.copytree(embedded.root, cache / embedded.root.name)
    tokenizer = next((cache / embedded.root.name / "tokenizer").glob("*.json"))
    tokenizer.write_bytes(tokenizer.read_bytes()[:-10] + b"0123456789")
    case("damaged-embedded-cache", APP, lambda cwd: ["tracking=off"],
         env={"AUTOQUANT_SWEEP_CACHE": str(cache)})
    # 15: the store, before ModelOpt is imported (``-X importtime`` lists every module imported)
    importtime = [sys.executable, "-X", "importtime", str(SENSITIVITY_APP)]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    case("unreachable-server-run", importtime,
         lambda cwd: ["tracking=server", f"tracking.tracking_uri=http://127.0.0.1:{closed}"])

    def damaged_store(cwd: Path) -> list[str]:
        damaged_sqlite(cwd / "mlflow.db")
        return [f"tracking.tracking_uri=sqlite:///{cwd}/mlflow.db"]

    case("damaged-store-run", importtime, damaged_store)

    return run_at_once(prepared, TIMEOUT)


KEEP = {"a-file", "ckpt", "mlflow.db"}  # what the tests put there


@pytest.mark.parametrize(("name", "pattern"), [
    ("run-experiment-escapes", r"^experiment: '\.\./\.\./escaped-run' cannot name a directory"),
    ("sweep-experiment-escapes", r"^experiment: '\.\./\.\./escaped-sweep' cannot name a directory"),
    ("run-experiment-slash-space", r"^experiment: 'a/b c' cannot name a directory"),
    ("lookup-out-missing-parent", r"^--out: folder '.*/missing' does not exist; create it first"),
    ("lookup-out-is-a-folder", r"^--out: '.*/lookup-out-is-a-folder' is a folder; pass a file path"),
    ("lookup-out-parent-is-a-file", r"^--out: '.*/a-file' is a file, not a folder"),
    ("lookup-missing-store", r"^--tracking-uri: no MLflow store at '.*/none\.db'; run a sweep there first"),
    ("cache-is-a-file-run",
     r"^AUTOQUANT_SWEEP_CACHE: embedded asset cache '.*/a-file' is a file, not a folder"),
    ("cache-is-a-file-generate", r"^AUTOQUANT_SWEEP_CACHE: embedded asset cache '.*/a-file' is a file"),
    ("ui-store-in-missing-folder", r"^--tracking-uri: folder '.*/no' of SQLite store '.*/no/m\.db' does not "
                                   r"exist"),
    ("ui-port-in-use", r"^--port: cannot listen on 127\.0\.0\.1:\d+ \(Address already in use\)"),
    ("report-of-a-file", r"^report: '.*/a-file' is a file; pass the report folder"),
    ("apply-out-is-the-source", r"^--out: '.*/ckpt' is the source checkpoint --model-path"),
    ("dataset-path-is-a-folder",
     r"^dataset\.path: captions file '.*' is a folder; pass the path of a text file"),
    ("damaged-embedded-cache", r"^AUTOQUANT_SWEEP_CACHE: embedded asset cache '.*' is damaged \('tokenizer/"
                               r".*\.json' does not match its recorded sha256 in COMPLETE\.json\); rebuild "
                               r"it: rm -rf '.*' && autoquant-sweep generate$"),
    ("unreachable-server-run", r"^tracking server http://127\.0\.0\.1:\d+ is unreachable"),
    ("damaged-store-run", r"^tracking\.tracking_uri: SQLite store '.*/mlflow\.db' is damaged"),
])
def test_bad_path_or_name_is_one_line_and_creates_nothing(cases, name, pattern):
    case = cases[name]
    message = one_error_line(case)
    assert re.search(pattern, message), message
    cwd = case["cwd"]
    assert sorted(p.name for p in cwd.iterdir() if p.name not in KEEP) == [], sorted(cwd.iterdir())
    # nothing outside the working folder either (``../../escaped-*`` from outputs/ or multirun/)
    assert not list(cwd.parent.glob("escaped-*")), list(cwd.parent.glob("escaped-*"))
    if name == "apply-out-is-the-source":
        assert (cwd / "ckpt" / "config.json").is_file()  # the source checkpoint is untouched


@pytest.mark.parametrize("name", ["unreachable-server-run", "damaged-store-run"])
def test_store_problems_answer_before_modelopt_is_imported(cases, name):
    """Item 15: the single run's store is checked in the plan, before its ModelOpt gate (was 15-27 s)."""
    stderr = cases[name]["result"].stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


@pytest.mark.parametrize(("overrides", "error", "pattern"), [
    (lambda t: [f"dataset.eval_path={t}"], UserInputError,
     r"^dataset\.eval_path: held-out captions file '.*' is a folder; pass the path of a text file"),
    (lambda t: [f"dataset.eval_path={t / 'no.txt'}"], UserInputError,
     r"^dataset\.eval_path: held-out captions file '.*/no\.txt' does not exist$"),
    (lambda t: [f"dataset.eval_path={_file(t, NOT_UTF8)}"], UserInputError,
     r"^dataset\.eval_path: held-out captions file '.*' is not valid UTF-8 \(byte 5\)"),
    (lambda t: [f"dataset.eval_path={_file(t, b'')}"], UserInputError,
     r"^dataset\.eval_path: held-out captions file '.*' is empty$"),
    (lambda t: ["model=qwen3_4b", f"model.path={_file(t, b'x')}"], UserInputError,
     r"^model\.path: '.*' is a file; pass the checkpoint folder"),
    (lambda t: ["quant_pair=wfp4_afp4"], CapabilityRefusedError,
     r"^quant_pair=wfp4_afp4 quant_granularity=default is refused on cpu: format 'NVFP4_DEFAULT_CFG' \+ "
     r"granularity 'default': .*needs CUDA.* \(and 1 more reason\); use quant_pair=wint8_aint8,.* with "
     r"quant_granularity=default instead \(all verdicts: autoquant-sweep validate\)$"),
    (lambda t: ["quant_pair=wfp4_afp16", "quant_granularity=w_per_out_channel"], CapabilityRefusedError,
     r"^quant_pair=wfp4_afp16 quant_granularity=w_per_out_channel is refused on cpu: .*; use "
     r"quant_pair=wint4_afp16,.* with quant_granularity=w_per_out_channel instead"),
], ids=["eval-path-folder", "eval-path-missing", "eval-path-not-utf8", "eval-path-empty", "model-path-file",
        "refused-pair", "refused-pair-granularity"])
def test_messages_name_the_key_the_user_set_and_the_remedy(tmp_path, compose_cfg, embedded, overrides,
                                                           error, pattern):
    with pytest.raises(error) as info:
        plan_run(compose_cfg(overrides(tmp_path)))
    message = str(info.value)
    assert "\n" not in message and re.search(pattern, message), message


def _file(folder: Path, data: bytes) -> Path:
    path = folder / f"f{len(list(folder.iterdir()))}.txt"
    path.write_bytes(data)
    return path
