"""``validate``, the Optuna search space and plan-time validation import neither ModelOpt nor torch.

Importing ``modelopt.torch.quantization`` costs 8-12 s and torch about 2 s; the stored presets
(``quant/preset_data.py``) and a torch-free device view keep these paths well under 2 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

HEAVY = ("modelopt", "torch", "transformers")

# what a fresh interpreter imported, printed as the last line
_REPORT = "import sys, json; print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))"


def _heavy_modules_after(code: str, env: dict | None = None) -> list[str]:
    script = f"{code}\n{_REPORT.format(heavy=HEAVY)}\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_search_space_resolves_pairs_without_modelopt_or_torch():
    code = (
        "from omegaconf import OmegaConf\n"
        "from autoquant_sweep.search.space import register_resolvers, searchable_pairs\n"
        "register_resolvers()\n"
        "cfg = OmegaConf.create({'d': 'auto', 'pairs': '${aqs_search_pairs:${d}}',"
        " 'grans': '${aqs_search_granularities:}'})\n"
        "assert cfg.pairs.startswith('choice(wint8_aint8,'), cfg.pairs\n"
        "assert 'wfp4_afp16' in searchable_pairs('cuda') and 'wfp4_afp16' not in searchable_pairs('cpu')\n"
        "assert cfg.grans.startswith('choice(default,')\n"
    )
    assert _heavy_modules_after(code) == []


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda"])
def test_validate_command_imports_no_modelopt_or_torch(device):
    code = (
        "import contextlib, io, json\n"
        "from autoquant_sweep.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    assert main(['validate', '--json', '--device', '{device}']) == 0\n"
        "rows = json.loads(out.getvalue())\n"
        "assert len(rows) == 90 and {r['status'] for r in rows} == {'ok', 'noop', 'refused'}\n"
    )
    assert _heavy_modules_after(code) == []


def test_validate_command_is_fast():
    """The whole ``autoquant-sweep validate`` process; generous bound: the test machine is shared."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "autoquant_sweep.cli", "validate"], capture_output=True,
                            text=True, check=False)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].endswith("refused")
    assert seconds < 8, f"validate took {seconds:.1f} s (about 1.3 s on 2 idle cores; 25 s with ModelOpt)"
