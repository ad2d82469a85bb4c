"""``validate``, the Optuna search space and plan-time validation import neither ModelOpt nor torch.

Importing ``modelopt.torch.quantization`` costs 8-12 s and torch about 2 s; the stored presets
(``quant/preset_data.py``) and a torch-free device view keep these paths well under 2 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.unit.test_validation import VALID

HEAVY = ("modelopt", "torch", "transformers")

# Each check is a snippet whose assertions must hold and after which none of its heavy modules may be
# imported. They all run in ONE fresh interpreter, one after another (each in its own namespace): a
# snippet that imported a heavy module would leave it in sys.modules, so it is reported by that snippet
# and by every later one (the first failing test names the culprit); the earlier snippets only leave
# light modules behind, which hide no heavy import from a later one.
_VALIDATE = (
    "import contextlib, io, json\n"
    "from autoquant_sweep.cli import main\n"
    "out = io.StringIO()\n"
    "with contextlib.redirect_stdout(out):\n"
    "    assert main(['validate', '--json', '--device', '{device}']) == 0\n"
    "rows = json.loads(out.getvalue())\n"
    "assert len(rows) == 90 and {{r['status'] for r in rows}} == {{'ok', 'noop', 'refused'}}\n"
)
CHECKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "search_space": (
        "from omegaconf import OmegaConf\n"
        "from autoquant_sweep.search.space import register_resolvers, searchable_pairs\n"
        "register_resolvers()\n"
        "cfg = OmegaConf.create({'d': 'auto', 'pairs': '${aqs_search_pairs:${d}}',"
        " 'grans': '${aqs_search_granularities:}'})\n"
        "assert cfg.pairs.startswith('choice(wint8_aint8,'), cfg.pairs\n"
        "assert 'wfp4_afp16' in searchable_pairs('cuda') and 'wfp4_afp16' not in searchable_pairs('cpu')\n"
        "assert cfg.grans.startswith('choice(default,')\n",
        HEAVY),
    **{f"validate_{device}": (_VALIDATE.format(device=device), HEAVY) for device in ("auto", "cpu", "cuda")},
    "validation": (
        "from autoquant_sweep.config.validation import validate_settings\n"
        f"validate_settings({VALID!r})\n",
        ("torch", "modelopt", "transformers", "mlflow")),
}

_RUNNER = """
import json, sys, traceback
checks = json.loads(sys.stdin.read())
report = {}
for name, (code, heavy) in checks.items():
    try:
        exec(compile(code, name, "exec"), {"__name__": "__check__"})
        error = None
    except BaseException:
        error = traceback.format_exc()[-2000:]
    report[name] = {"error": error, "heavy": sorted(m for m in heavy if m in sys.modules)}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def import_report() -> dict:
    """What each check raised and which of its heavy modules were imported after it: one interpreter."""
    result = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(CHECKS), capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _check(report: dict, name: str) -> list[str]:
    assert report[name]["error"] is None, report[name]["error"]
    return report[name]["heavy"]


def test_search_space_resolves_pairs_without_modelopt_or_torch(import_report):
    assert _check(import_report, "search_space") == []


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda"])
def test_validate_command_imports_no_modelopt_or_torch(import_report, device):
    assert _check(import_report, f"validate_{device}") == []


def test_validation_imports_neither_torch_nor_modelopt(import_report):
    """(was in test_validation.py: its own interpreter; now the same snippet in the shared one)"""
    assert _check(import_report, "validation") == []


def test_validate_command_is_fast():
    """The whole ``autoquant-sweep validate`` process; generous bound: the test machine is shared."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "autoquant_sweep.cli", "validate"], capture_output=True,
                            text=True, check=False)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].endswith("refused")
    assert seconds < 8, f"validate took {seconds:.1f} s (about 1.3 s on 2 idle cores; 25 s with ModelOpt)"
