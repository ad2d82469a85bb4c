#!/usr/bin/env bash
# GPU check (issue 6), one prepared script for a CUDA machine; not run in CI:
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (bounded by GPU_CHECK_TIMEOUT, default 540 s)
# 1. builds the embedded tiny model; 2. runs the default Optuna study on CUDA (NVFP4 / FP8 pairs are in
# the CUDA search space), plus a grid over the NVFP4 and FP8 pairs; 3. runs a few combinations the
# capability rules refuse *raw* through mtq.auto_quantize (bypassing the rules) and records what ModelOpt
# does; 4. the benchmark table (benchmarks/bench_sweep.py). Paste the output into benchmarks/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_check_out}}
LIMIT=${GPU_CHECK_TIMEOUT:-540}
mkdir -p "$OUT"
START=$(date +%s)
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
step() { local t; t=$(left); if [ "$t" -le 5 ]; then echo "[gpu_check] out of time before: $1"; return 124; fi
         echo "=== [gpu_check] $1 (${t}s left)"; shift; timeout "$t" "$@"; local rc=$?; echo "=== rc=$rc"; return 0; }
S="hydra.sweeper.storage=sqlite:///$PWD/$OUT/optuna.db tracking.tracking_uri=sqlite:///$PWD/$OUT/mlflow.db tracking.artifact_location=$PWD/$OUT/mlruns"

step "environment" python - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch, modelopt
print("torch", torch.__version__, "cuda", torch.version.cuda, "modelopt", modelopt.__version__)
print("devices", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
      "capability", torch.cuda.get_device_capability() if torch.cuda.is_available() else None)
PY
step "embedded assets" autoquant-sweep generate 2>&1 | tail -4
step "capability rules on cuda" autoquant-sweep validate --device cuda --json > "$OUT/validate_cuda.json"
step "default Optuna study on CUDA (12 trials)" python experiments/sensitivity.py -m hydra/sweeper=optuna \
  autoquant.device=cuda $S 2>&1 | tee "$OUT/study.log" | tail -6
step "NVFP4 / FP8 pairs on CUDA (grid)" python experiments/sensitivity.py -m hydra/sweeper=optuna \
  hydra/sweeper/sampler=grid autoquant.device=cuda 'quant_pair=choice(wfp4_afp16,wfp4_afp8,wfp4_afp4,wfp8_afp8,wfp8_afp16)' \
  'quant_granularity=choice(default,w_per_out_channel,w_group64)' hydra.sweeper.n_trials=15 $S 2>&1 \
  | tee "$OUT/fp4_fp8.log" | tail -6
step "trial states" python - "$OUT" <<'PY'
import sys, optuna
from collections import Counter
storage = f"sqlite:///{sys.argv[1]}/optuna.db"
for s in optuna.get_all_study_summaries(storage):
    study = optuna.load_study(study_name=s.study_name, storage=storage)
    print(s.study_name, Counter(t.state.name for t in study.trials))
    for t in study.trials:
        print(f"  #{t.number} {t.state.name:8s} {t.params} {t.value}")
PY
step "refusals vs raw ModelOpt" python - "$OUT" <<'PY' 2>&1 | tee "$OUT/refusals_vs_modelopt.txt"
"""Run refused combinations straight through mtq.auto_quantize (no capability rules) and compare."""
import copy, json, sys
from pathlib import Path
import torch
from omegaconf import OmegaConf
from autoquant_sweep.cli import validation_rows
from autoquant_sweep.data import read_captions, resolve_caption_path, tokenize_batches
from autoquant_sweep.embedded import ensure_embedded_assets
from autoquant_sweep.modeling import load_model_and_tokenizer
from autoquant_sweep.paths import conf_dir
from autoquant_sweep.quant.formats import resolve_format
from autoquant_sweep.sensitivity import run_autoquant

def raw_overlay(fmt, overrides):
    """Merge the overrides into the matching quant_cfg entries with no validation (what a user could do)."""
    fmt = copy.deepcopy(fmt)
    for pattern, attrs in overrides.items():
        for entry in fmt["quant_cfg"]:
            if entry.get("quantizer_name") == pattern and isinstance(entry.get("cfg"), dict):
                entry["cfg"].update({k: ({int(kk) if str(kk).lstrip("-").isdigit() else kk: vv
                                          for kk, vv in v.items()} if isinstance(v, dict) else v)
                                     for k, v in attrs.items()})
    return fmt


rows = [r for r in validation_rows("cuda") if r["status"] == "refused"]
print(f"{len(rows)} combinations refused on cuda; running up to 6 of them raw")
assets = ensure_embedded_assets()
loaded = load_model_and_tokenizer(assets.qwen3_tiny_dir, kind="causal_lm", dtype="float32", device="cuda")
captions = read_captions(resolve_caption_path(None, "small", None, assets.captions_dir), 16)
batches = tokenize_batches(loaded.tokenizer, captions, 32, 4)
seen, results = set(), []
for row in rows:
    if len(results) >= 6 or row["reason"] in seen:
        continue
    seen.add(row["reason"])
    pair = OmegaConf.to_container(OmegaConf.load(conf_dir() / "quant_pair" / f"{row['pair']}.yaml"))
    gran = OmegaConf.to_container(OmegaConf.load(conf_dir() / "quant_granularity" / f"{row['granularity']}.yaml"))
    outcome = {"pair": row["pair"], "granularity": row["granularity"], "rule": row["reason"][:160]}
    try:
        fmt = raw_overlay(resolve_format(pair["format_name"]), gran.get("quant_cfg_overrides") or {})
        res = run_autoquant(copy.deepcopy(loaded.model), batches, fmt, format_label=row["pair"],
                            num_calib_steps=2, num_score_steps=2, device="cuda")
        outcome["modelopt"] = f"ran: total_sensitivity={res.total_sensitivity:.3e}"
    except Exception as exc:  # the point: record what ModelOpt does
        outcome["modelopt"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    torch.cuda.empty_cache()
    results.append(outcome)
    print(json.dumps(outcome))
Path(sys.argv[1], "refusals_vs_modelopt.json").write_text(json.dumps(results, indent=2))
PY
step "benchmark table" python benchmarks/bench_sweep.py --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" | tail -30
echo "[gpu_check] done in $(( $(date +%s) - START ))s; outputs in $OUT/"
