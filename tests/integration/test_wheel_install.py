"""Installs like a package (issue 19 item 6): a non-editable wheel in a fresh venv runs the Hydra app (one
run and the main job's Optuna sweep) and every sub-command from an empty folder.

The wheel is built offline from a copy of the sources (``pip wheel --no-deps --no-build-isolation
--no-index``: no build, egg-info or dist folder in the checkout). The venv is created *without* system
site packages and reaches the base interpreter's site-packages (torch, ModelOpt, MLflow: nothing is
downloaded) through one ``.pth`` line that names that folder. A path line adds the folder to
``sys.path`` but does not process the ``.pth`` files inside it, so the editable install's
``__editable__.autoquant_sweep-*.pth`` (which puts the checkout's ``src/`` on ``sys.path``) stays out:
``--system-site-packages`` would process it, and the checkout's ``hydra_plugins`` portion would then be
found even if the wheel lacked it. ``PYTHONPATH`` is cleared for the same reason. The test asserts where
``autoquant_sweep`` and the Hydra plugin are imported from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

SMALL_RUN = ["tracking=off", "autoquant.evaluate=false", "autoquant.num_calib_samples=8",
             "autoquant.num_score_samples=8"]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"{' '.join(args)}: exit {result.returncode}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, embedded) -> dict:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(work / "dist"), str(source)], work, env)
    (wheel,) = (work / "dist").glob("autoquant_sweep-*.whl")

    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], work, env)
    python = venv / "bin" / "python"
    venv_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          work, env).stdout.strip())
    (venv_site / "base_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the editable install's metadata is visible through the base folder
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
          str(wheel)], work, env)
    empty = work / "empty"
    empty.mkdir()
    return {"venv": venv, "site": venv_site, "env": env, "cwd": empty, "wheel": wheel}


def test_the_wheel_carries_the_config_tree_and_the_hydra_plugin(installed):
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    conf = REPO / "src" / "autoquant_sweep" / "conf"
    shipped = {f"autoquant_sweep/conf/{p.relative_to(conf).as_posix()}" for p in conf.rglob("*.yaml")}
    assert shipped and shipped <= names
    assert "hydra_plugins/autoquant_sweep_optuna/__init__.py" in names

    where = _run([str(installed["venv"] / "bin" / "python"), "-c",
                  "import json, autoquant_sweep, hydra_plugins.autoquant_sweep_optuna as p; "
                  "from autoquant_sweep.paths import conf_dir; "
                  "print(json.dumps([autoquant_sweep.__file__, p.__file__, str(conf_dir())]))"],
                 installed["cwd"], installed["env"])
    package, plugin, conf_found = json.loads(where.stdout)
    site = str(installed["site"])
    assert package.startswith(site) and plugin.startswith(site) and conf_found.startswith(site), where.stdout


def test_installed_app_runs_one_run_the_main_job_and_every_sub_command_from_an_empty_folder(installed):
    from autoquant_sweep.cli import build_parser

    bin_dir, cwd, env = installed["venv"] / "bin", installed["cwd"], installed["env"]
    single = _run([str(bin_dir / "autoquant-sweep-run"), *SMALL_RUN], cwd, env)
    (report,) = cwd.glob("outputs/sensitivity/qwen3_tiny/wint8_aint8/default/small/*/report")
    manifest = json.loads((report / "manifest.json").read_text())
    assert manifest["objectives"]["constrained_score"] > 0, single.stderr[-2000:]
    assert manifest["model"]["path"].startswith(os.environ["AUTOQUANT_SWEEP_CACHE"])

    # the main job's sweeper (hydra/sweeper=optuna, the wheel's Hydra plugin), one trial
    _run([str(bin_dir / "autoquant-sweep-run"), "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1",
          *SMALL_RUN], cwd, env)
    assert (cwd / "optuna.db").is_file()
    assert len(list(cwd.glob("multirun/sensitivity/*/qwen3_tiny/*/*/small/job0/report/manifest.json"))) == 1

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in sub.choices:
        help_text = _run([str(bin_dir / "autoquant-sweep"), command, "--help"], cwd, env).stdout
        assert help_text.startswith(f"usage: autoquant-sweep {command}"), command
    rows = json.loads(_run([str(bin_dir / "autoquant-sweep"), "validate", "--json"], cwd, env).stdout)
    assert {"ok", "noop", "refused"} <= {row["status"] for row in rows}
    (report / "per_layer.md").unlink()
    rendered = _run([str(bin_dir / "autoquant-sweep"), "report", str(report)], cwd, env)
    assert rendered.stdout.strip() == str(report) and (report / "per_layer.md").is_file()
