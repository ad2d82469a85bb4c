"""The study's progress display on a real 3-trial Optuna study: plain lines off a terminal, rich on one."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading

import pytest

from tests import warm

from ..conftest import SENSITIVITY_APP, run_in_process

pytestmark = pytest.mark.integration

# wint8_afp16 is weight-only and per output channel already: two of the three granularities are no-ops
# (the held-out evaluation is not what these tests show: off, it saves each computed trial its eval pass)
STUDY = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "tracking=off", "autoquant.evaluate=false",
         "quant_pair=choice(wint8_afp16)",
         "quant_granularity=choice(default,a_per_token_dynamic,w_per_out_channel)"]
LINE = re.compile(r"^trial (\d)/3 wint8_afp16 x (\w+): (computed|no-op) constrained_score=(\S+) \| best "
                  r"constrained_score (\S+) \(wint8_afp16 x \w+\) \| elapsed \S+, ETA \S+ \| computed (\d), "
                  r"cache hit 0, no-op (\d), refused 0, failed 0$", re.MULTILINE)


def _check_lines(text: str) -> None:
    lines = LINE.findall(text)
    assert [int(m[0]) for m in lines] == [1, 2, 3], text[-3000:]
    kinds = {m[1]: m[2] for m in lines}
    assert kinds == {"default": "computed", "a_per_token_dynamic": "no-op", "w_per_out_channel": "no-op"}
    assert (lines[-1][5], lines[-1][6]) == ("1", "2")  # final counts: 1 computed, 2 no-ops
    # the best so far is the minimum of the values shown so far (all three share one effective config)
    values = [float(m[3]) for m in lines]
    assert [float(m[4]) for m in lines] == [min(values[: i + 1]) for i in range(3)]
    assert "study: 3 trials in " in text and "computed 1, cache hit 0, no-op 2, refused 0, failed 0" in text


def test_plain_line_per_trial_when_stdout_is_not_a_terminal(tmp_path, embedded):
    # in this interpreter: its captured stdout is no terminal, as a log file or a pipe is not
    result = run_in_process(STUDY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_lines(result.stdout)
    assert "\x1b[" not in result.stdout  # no terminal control sequences in a log
    # ModelOpt's per-trial noise is quiet by default: no bars, no 'Inserted N quantizers'
    assert "Estimating auto_quantize scores" not in result.stderr
    assert "Inserted" not in result.stdout
    assert "ModelOpt warns" in result.stdout  # each by-design warning explained once instead


def test_rich_progress_bar_on_a_terminal(tmp_path, embedded):
    main, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "AUTOQUANT_SWEEP_ID"}
    env.update({"HYDRA_FULL_ERROR": "0", "COLUMNS": "400", "TERM": "xterm-256color"})
    proc = warm.Popen([sys.executable, str(SENSITIVITY_APP), *STUDY], cwd=tmp_path, env=env,
                      stdout=secondary, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(secondary)
    chunks: list[bytes] = []

    def drain() -> None:  # a pty's buffer is small: read while the study runs
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO once the child has closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    _, stderr = proc.communicate(timeout=600)
    reader.join(timeout=30)
    os.close(main)
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert "\x1b[" in text  # rich drew on the terminal
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert re.search(r"study .*3/3", plain), plain[-3000:]  # the bar: k of n
    assert "best constrained_score" in plain
    # the bar redraws in place (carriage returns, cursor moves) between the trials' lines
    _check_lines("\n".join(line.strip() for line in re.split(r"[\r\n]", plain)))
