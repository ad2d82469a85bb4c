"""The run pipeline's promise (issue 13): everything refused in plan is refused before a model loads and
before anything heavy is imported, and a refused single run leaves nothing behind.

One fresh interpreter runs :func:`autoquant_sweep.pipeline.run_job` on a bad value of every README config
group that plan refuses, with the compute stage's loader replaced by a counter; the command-line cases are
the three of the issue, each a fresh ``experiments/sensitivity.py`` with ``-X importtime``. The one refusal
that needs ModelOpt imported (a format name the project does not store) runs in the test's own process,
which has ModelOpt already: importing it afresh cost ~12 CPU-s of a 2-core suite for no assertion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONF, SENSITIVITY_APP

pytestmark = pytest.mark.integration

ERROR = "autoquant-sweep: error:"
# what plan must not import before it has passed (its last gate, ModelOpt's own check, imports ModelOpt)
HEAVY = ("torch", "transformers", "mlflow", "modelopt", "matplotlib")

# README "Config groups" -> bad values that plan refuses, and a part of each message
BAD_VALUES = {
    "model.kind": (["model.kind=seq2seq"], "model.kind: unknown kind 'seq2seq'"),
    "model.dtype": (["model.dtype=float8"], "model.dtype: unknown dtype 'float8'"),
    "model.path-missing": (["model=qwen3_4b", "model.path=/nonexistent/qwen3"],
                           "model.path: '/nonexistent/qwen3' does not exist"),
    "model.path-with-embedded": (["model.path=/tmp"], "model.path: '/tmp' is given together with"),
    "dataset.seq_len": (["dataset.seq_len=1"], "dataset.seq_len: must be an integer of at least 2"),
    "dataset.max_samples": (["dataset.max_samples=0"], "dataset.max_samples: must be a positive integer"),
    "dataset.path": (["dataset.path=/nonexistent/captions.txt"], "dataset.path"),
    "quant_pair-needs-cuda": (["quant_pair=wfp4_afp4"], "format 'NVFP4_DEFAULT_CFG' + granularity 'default'"),
    "quant_granularity-axis": (["+quant_granularity.quant_cfg_overrides={default: {axis: 5}}"],
                               "quant_granularity=default on quant_pair=wint8_aint8: "
                               "quant_cfg_overrides['default'].axis=5 does not fit"),
    "quant_granularity-fp4-axis": (["quant_pair=wfp4_afp16", "quant_granularity=w_per_out_channel"],
                                   "format 'W4A16_NVFP4_CFG' + granularity 'w_per_out_channel'"),
    "autoquant.method": (["autoquant.method=foo"], "autoquant.method: unknown method 'foo'"),
    "autoquant.device": (["autoquant.device=tpu"], "autoquant.device: unknown device 'tpu'"),
    "autoquant.batch_size": (["autoquant.batch_size=0"], "autoquant.batch_size: must be a positive integer"),
    "autoquant.effective_bits-range": (["autoquant.effective_bits=17"], "autoquant.effective_bits: must be"),
    "autoquant.effective_bits-unreachable": (["autoquant.effective_bits=8.5"],
                                             "autoquant.effective_bits: 8.5 is below the minimum"),
    "autoquant.objective": (["autoquant.objective=accuracy"], "autoquant.objective: unknown objective"),
    "output_layout.name": (["output_layout.name=nested"], "output_layout.name: unknown layout 'nested'"),
    "tracking.mode": (["tracking.mode=cloud"], "tracking.mode: unknown mode 'cloud'"),
    "tracking-server-without-uri": (["tracking=server"], "tracking=server: no tracking URI"),
}
# refused in plan too, but a format name the project does not store is looked up in the installed ModelOpt
# (a newer ModelOpt may have the preset): ModelOpt is imported for it
NEEDS_MODELOPT = {
    "quant_pair.format_name": (["quant_pair.format_name=NOPE_CFG"], "unknown quant format 'NOPE_CFG'"),
}

SCRIPT = r"""
import json, sys
from hydra import compose, initialize_config_dir
import autoquant_sweep.compute
from autoquant_sweep.config import register_configs
from autoquant_sweep.errors import UserInputError
from autoquant_sweep.pipeline import run_job

loads = []
def counting_loader(*args, **kwargs):
    loads.append(args)
    raise AssertionError("a model was loaded")
autoquant_sweep.compute.load_model_and_tokenizer = counting_loader
register_configs()
conf, run_dir, light, heavy = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:5])
messages = {}
def refuse(cases):
    for name, overrides in cases.items():
        with initialize_config_dir(config_dir=conf, version_base=None):
            cfg = compose("sensitivity", overrides=overrides)
        try:
            run_job(cfg, run_dir, record_plan_failures=False)
            messages[name] = "NOT REFUSED"
        except UserInputError as exc:
            messages[name] = str(exc)
refuse(light)
imported = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
print(json.dumps({"messages": messages, "loads": len(loads), "heavy": imported}))
"""


#: what a test process has set that a user's shell would not (a store, a sweep id)
NOT_FROM_THE_SHELL = ("MLFLOW_TRACKING_URI", "AUTOQUANT_SWEEP_ID")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in NOT_FROM_THE_SHELL}


def test_every_group_refused_in_plan_loads_and_imports_nothing_heavy(tmp_path: Path, embedded) -> None:
    """One line naming the key for each bad value; 0 model loads; no torch / transformers / MLflow /
    ModelOpt / matplotlib in the process; no file written (the store included)."""
    light = {name: overrides for name, (overrides, _) in BAD_VALUES.items()}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(CONF), str(tmp_path / "run"), json.dumps(light),
         json.dumps(HEAVY)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name, (_, start) in BAD_VALUES.items():
        message = report["messages"][name]
        assert "\n" not in message and start in message, (name, message)
    assert report["loads"] == 0
    assert report["heavy"] == [], f"imported before plan passed: {report['heavy']}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a refused plan wrote something"


@pytest.mark.parametrize("name", sorted(NEEDS_MODELOPT))
def test_refused_in_plan_after_modelopt_is_imported_loads_nothing(tmp_path: Path, embedded, monkeypatch,
                                                                  name: str) -> None:
    """The cases plan refuses with ModelOpt's help: the same one line and 0 model loads, nothing written to
    the working folder, as the fresh interpreter asserts for the rest (here ModelOpt is already imported)."""
    from hydra import compose, initialize_config_dir

    import autoquant_sweep.compute
    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.config import register_configs
    from autoquant_sweep.errors import UserInputError
    from autoquant_sweep.pipeline import run_job

    loads: list[object] = []

    def counting_loader(*args: object, **kwargs: object) -> None:
        loads.append(args)
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(autoquant_sweep.compute, "load_model_and_tokenizer", counting_loader)
    for key in NOT_FROM_THE_SHELL:
        monkeypatch.delenv(key, raising=False)
    MODEL_CACHE.clear()  # as in a fresh process: a model cached by an earlier test would hide a load
    monkeypatch.chdir(tmp_path)
    overrides, start = NEEDS_MODELOPT[name]
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("sensitivity", overrides=overrides)  # the default tracking=local: a store in cwd
    with pytest.raises(UserInputError) as refused:
        run_job(cfg, tmp_path / "run", record_plan_failures=False)
    assert "\n" not in str(refused.value) and start in str(refused.value), str(refused.value)
    assert loads == [] and not MODEL_CACHE._models
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a refused plan wrote something"


@pytest.mark.parametrize(
    ("override", "start"),
    [
        ("quant_pair=wfp4_afp4", "quant_pair=wfp4_afp4 quant_granularity=default is refused on cpu: "
                                 "format 'NVFP4_DEFAULT_CFG' + granularity 'default'"),
        ("autoquant.method=foo", "autoquant.method: unknown method 'foo'"),
        ("dataset.seq_len=1", "dataset.seq_len: must be an integer of at least 2"),
    ],
)
def test_refused_single_run_is_one_line_exit_2_and_leaves_nothing(tmp_path: Path, embedded, override, start):
    """The issue's commands, with the default ``tracking=local``: no run folder, no MLflow store, no MLflow
    run, and neither MLflow nor torch imported (``-X importtime`` lists every module the process loads)."""
    env = {**_env(), "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run([sys.executable, "-X", "importtime", str(SENSITIVITY_APP), override],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1 and lines[0][len(ERROR):].strip().startswith(start), result.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert list(tmp_path.iterdir()) == []  # no outputs/, no mlflow.db, no mlruns/


def test_a_sweeps_refused_trial_is_a_failed_run_with_its_reason(tmp_path: Path, compose_cfg, embedded,
                                                                new_mlflow_store):
    """``record_plan_failures`` (a sweep's job): the refusal is a FAILED run with its reason and
    ``failure/plan.json``, dated from the job's start; no model loaded, no report."""
    import time

    from mlflow import MlflowClient

    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.errors import CapabilityRefusedError
    from autoquant_sweep.pipeline import run_job

    uri = new_mlflow_store(tmp_path / "mlflow.db")
    cfg = compose_cfg(["tracking=local", f"tracking.tracking_uri={uri}",
                       f"tracking.artifact_location={tmp_path}/mlruns", "quant_pair=wfp4_afp4"])
    MODEL_CACHE.clear()
    started = int(time.time() * 1000)
    with pytest.raises(CapabilityRefusedError):
        run_job(cfg, tmp_path / "run", record_plan_failures=True)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("sensitivity").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["failure_kind"] == "refused"
    assert "needs CUDA" in run.data.tags["failure_reason"]
    assert started <= run.info.start_time <= run.info.end_time
    assert "failure/plan.json" in {a.path for a in client.list_artifacts(run.info.run_id, "failure")}
    assert not MODEL_CACHE._models and not (tmp_path / "run").exists()
