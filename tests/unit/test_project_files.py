"""The project's own files: pixi tasks mirror the README, CI calls the README's test command."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _console_scripts() -> set[str]:
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


def test_pixi_has_cpu_and_cuda_environments_with_pinned_stack():
    pixi = tomllib.loads((REPO / "pixi.toml").read_text())
    assert set(pixi["environments"]) == {"default", "cuda"}
    assert pixi["feature"]["cpu"]["pypi-dependencies"]["torch"] == "==2.13.0"
    assert "autoquant-sweep" in pixi["pypi-dependencies"]


def test_pixi_tasks_name_real_commands():
    pixi = tomllib.loads((REPO / "pixi.toml").read_text())
    scripts = _console_scripts()
    assert {"main", "test"} <= set(pixi["tasks"])
    for name, task in pixi["tasks"].items():
        command = task if isinstance(task, str) else task["cmd"]
        argv = shlex.split(command)
        if argv[0] == "python":
            if argv[1] == "-m":
                assert argv[2] in {"pytest", "autoquant_sweep.cli"}, name
            else:
                assert (REPO / argv[1]).is_file(), f"task {name}: {argv[1]} does not exist"
        else:
            assert argv[0] in scripts, f"task {name}: {argv[0]} is not a console script"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\s*```(?:bash)?\n(.+?)\n```", readme, re.S)
    assert match, "README must mark its test command with <!-- test-command -->"
    test_command = match.group(1).strip()
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()
    pixi = tomllib.loads((REPO / "pixi.toml").read_text())
    assert pixi["tasks"]["test"] == test_command


def test_readme_main_command_installs_cpu_torch_first():
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- main-command -->\s*```(?:bash)?\n(.+?)\n```", readme, re.S)
    assert match, "README must mark its main command with <!-- main-command -->"
    command = match.group(1)
    assert command.index("pip install torch==2.13.0") < command.index("pip install -e")


def test_every_integration_module_is_marked_integration():
    """The fast loop (``-m "not integration"``) may skip tests/integration whole only while each of its
    modules marks all its tests ``integration``."""
    marked = re.compile(r"^pytestmark = \[?pytest\.mark\.integration\b", re.MULTILINE)
    unmarked = [p.name for p in sorted((REPO / "tests" / "integration").glob("test_*.py"))
                if not marked.search(p.read_text())]
    assert unmarked == []


def test_the_files_scheduled_first_are_integration_modules():
    """A renamed or removed file in ``LONGEST_FIRST`` would silently fall back to collection order."""
    from tests.conftest import INTEGRATION, LONGEST_FIRST

    missing = [name for name in LONGEST_FIRST if not (INTEGRATION / name).is_file()]
    assert not missing, f"LONGEST_FIRST names no file in tests/integration: {missing}"


def test_the_modules_kept_out_of_doctest_collection_hold_no_examples():
    """pyproject's ``--ignore`` keeps modules that import torch + transformers out of ``--doctest-modules``;
    an example written there would never run: move it to a light module, or drop the ``--ignore``."""
    addopts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    ignored = re.findall(r"--ignore=(src/\S+\.py)", addopts)
    assert ignored, addopts
    assert [path for path in ignored if ">>>" in (REPO / path).read_text()] == []
