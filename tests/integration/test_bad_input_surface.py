"""Bad input across the rest of the surface, and the safety rules (issue 6).

Complements ``test_bad_input.py`` (unknown format / size / key / objective, missing or non-UTF-8 captions,
unknown group option). The command-line cases run in one module fixture, each the real
``experiments/sensitivity.py`` command line in this interpreter (``run_in_process``: its exit status, stdout
and stderr as a shell sees them); ``test_bad_input.py`` keeps one case in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from autoquant_sweep.errors import UserInputError
from autoquant_sweep.plan import plan_run

from ..conftest import CONF, REPO, run_in_process

pytestmark = pytest.mark.integration

ERROR = "autoquant-sweep: error:"
BAD_GRANULARITIES = {
    "bad_both": {"axis": 0, "block_sizes": {-1: 64}},
    "bad_group_float": {"block_sizes": {-1: 6.5}},
    "bad_group_text": {"block_sizes": {-1: "sixty"}},
}


def _granularity_dir(root: Path) -> Path:
    """A --config-dir with custom quant_granularity options (the way users add their own overlays)."""
    import yaml

    folder = root / "user_conf" / "quant_granularity"
    folder.mkdir(parents=True)
    for name, attrs in BAD_GRANULARITIES.items():
        doc = {"name": name, "quant_cfg_overrides": {"*weight_quantizer": attrs}}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return folder.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corrupt_checkpoint(root: Path, embedded) -> Path:
    copy = root / "corrupt-ckpt"
    shutil.copytree(embedded.qwen3_tiny_dir, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    return copy


@pytest.fixture(scope="module")
def cli_cases(tmp_path_factory, embedded) -> dict[str, tuple[subprocess.CompletedProcess, Path, float]]:
    """Start every command-line case at once; returns ``name -> (result, cwd, seconds)``."""
    root = tmp_path_factory.mktemp("surface")
    user_conf = _granularity_dir(root)
    not_a_dir = root / "a-file"
    not_a_dir.write_text("x")
    optuna_store = [f"hydra.sweeper.storage=sqlite:///{root}/refused-optuna.db", "tracking=off"]
    cases = {
        "malformed-override": ["quant_granularity.quant_cfg_overrides={bad", "tracking=off"],
        "only-refused-space": ["-m", "hydra/sweeper=optuna", "quant_pair=choice(wfp4_afp16,wfp4_afp8)",
                               "hydra.sweeper.n_trials=2", *optuna_store],
        "axis-and-block-sizes": ["--config-dir", str(user_conf), "quant_pair=wint4_aint8",
                                 "quant_granularity=bad_both", "tracking=off"],
        "unreachable-server": ["tracking=server", f"tracking.tracking_uri=http://127.0.0.1:{_free_port()}"],
        "corrupt-weights": ["model=qwen3_4b", f"model.path={_corrupt_checkpoint(root, embedded)}",
                            "model.dtype=float32", "tracking=off"],
        "unwritable-output": ["output_layout=publish", f"output_layout.publish_root={not_a_dir}/results",
                              "tracking=off"],
    }
    results = {}
    for name, args in cases.items():  # in this interpreter: torch and ModelOpt imported once, not per case
        cwd = root / name
        cwd.mkdir()
        t0 = time.monotonic()
        results[name] = (run_in_process(args, cwd=cwd), cwd, time.monotonic() - t0)
    return results

def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0][len(ERROR):].strip()


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("axis-and-block-sizes", r"^quant_granularity=bad_both on quant_pair=wint4_aint8: .*sets both 'axis' "
                                 r"and 'block_sizes'"),
        ("unreachable-server", r"^tracking server http://127\.0\.0\.1:\d+ is unreachable"),
        ("corrupt-weights", r"^model\.path: cannot load a causal_lm model from '.*corrupt-ckpt'"),
        ("unwritable-output", r"^output directory '.*a-file/results/.*' is not writable"),
        ("only-refused-space",
         r"^hydra\.sweeper: no trial of study '.*' completed \(2 failed or refused in this sweep\)"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_nothing_written(cli_cases, case, pattern):
    import re

    result, cwd, seconds = cli_cases[case]
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.search(pattern, _one_error_line(result))
    if case == "only-refused-space":  # a sweep keeps its (empty) sweep dir, but no report anywhere
        assert not list(cwd.rglob("manifest.json"))
    else:
        assert list(cwd.iterdir()) == []
    if case == "unreachable-server":  # health check with a 3 s timeout, no retries
        assert "retry" not in result.stderr.lower() and seconds < 200
    if case == "unwritable-output":
        assert not [p for p in cwd.parent.rglob("*") if ".staging-" in p.name]


def test_cli_malformed_override_names_it(cli_cases):
    """Hydra rejects it while parsing the command line (its own exit status 1), before any run."""
    result, cwd, _ = cli_cases["malformed-override"]
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "string: quant_granularity.quant_cfg_overrides={bad" in result.stderr
    assert "no viable alternative at input '{bad'" in result.stderr
    assert list(cwd.iterdir()) == []


def test_empty_search_space_is_refused_by_the_override_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    with pytest.raises(OverrideParseException, match="empty choice is not legal"):
        OverridesParser.create().parse_overrides(["quant_pair=choice()"])


@pytest.mark.parametrize("name", sorted(BAD_GRANULARITIES))
def test_custom_granularity_yaml_is_validated_before_loading(tmp_path, name):
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.config import register_configs

    register_configs()
    user_conf = _granularity_dir(tmp_path)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("sensitivity", overrides=["tracking=off", f"hydra.searchpath=[file://{user_conf}]",
                                                "quant_pair=wint4_aint8", f"quant_granularity={name}"])
    expected = "sets both 'axis' and 'block_sizes'" if name == "bad_both" else "use a positive int"
    with pytest.raises(UserInputError, match=expected) as info:
        plan_run(cfg)
    assert "\n" not in str(info.value) and "quant_granularity=" in str(info.value)


# ---- safety -------------------------------------------------------------------------------------------

EVIL = """
from pathlib import Path
Path(__file__).with_name("EXECUTED").write_text("repository code ran")
raise SystemExit("repository code ran")
"""


@pytest.mark.parametrize("known_model_type", [True, False], ids=["qwen3-with-auto_map", "custom-model-type"])
def test_repository_code_never_runs_without_trust_remote_code(tmp_path, embedded, known_model_type):
    from autoquant_sweep.modeling import load_model_and_tokenizer

    ckpt = tmp_path / "ckpt"
    shutil.copytree(embedded.qwen3_tiny_dir, ckpt)
    (ckpt / "evil.py").write_text(EVIL)
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}
    if not known_model_type:
        config["model_type"] = "evil_model"
    (ckpt / "config.json").write_text(json.dumps(config))
    tok_cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    tok_cfg["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    if known_model_type:  # the built-in Qwen3 class is used; auto_map is ignored
        loaded = load_model_and_tokenizer(ckpt, kind="causal_lm", dtype="float32", device="cpu")
        assert type(loaded.model).__module__.startswith("transformers.models.qwen3")
    else:
        with pytest.raises(UserInputError, match=r"^model\.path: cannot load"):
            load_model_and_tokenizer(ckpt, kind="causal_lm", dtype="float32", device="cpu")
    assert not (ckpt / "EXECUTED").exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle code ran"))


def test_modelopt_state_is_loaded_with_weights_only(tmp_path):
    """The reload path of ``autoquant-sweep apply`` output refuses a pickle that would run code."""
    import torch
    from modelopt.torch.opt.conversion import load_modelopt_state

    marker = tmp_path / "PWNED"
    state = tmp_path / "modelopt_state.pth"
    with state.open("wb") as handle:
        torch.save({"modelopt_state_dict": [], "modelopt_version": _Payload(marker)}, handle)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_modelopt_state(state)
    assert not marker.exists()
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ


def test_every_torch_load_in_the_project_sets_weights_only_true():
    offenders = []
    for folder in ("src", "benchmarks", "experiments", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            source = path.read_text()
            assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in source or path.name == Path(__file__).name
            for node in ast.walk(ast.parse(source)):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "load" and ast.unparse(node.func.value) == "torch"):
                    kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    if kw.get("weights_only") != "True":
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_servers_bind_localhost_by_default():
    from autoquant_sweep.cli import build_parser

    args = build_parser().parse_args(["ui"])
    assert args.host == "127.0.0.1"
    from autoquant_sweep.tracking.cli import ui_command

    cmd = ui_command("sqlite:///x.db", None, args.host, args.port)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
