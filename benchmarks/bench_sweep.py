"""Framework overhead vs raw ModelOpt, side by side in one process, on the same checkpoint and batches.

    python benchmarks/bench_sweep.py                      # tiny model on CPU (and the CUDA shapes if CUDA)
    python benchmarks/bench_sweep.py --shapes tiny,qwen3_0p6b_shape,qwen3_4b_shape

For each model shape:
  (a) a plain loop: one ``from_pretrained``, batches tokenised once, then per config a deep copy of the
      pristine model and one ``mtq.auto_quantize`` call with that config's effective format;
  (b) the same configs as an Optuna sweep through the framework (``-m hydra/sweeper=optuna`` with the
      grid sampler, MLflow tracking to a temporary store, reports written), in this process;
  (c) the same sweep again: every config is an MLflow cache hit;
plus the time to refuse a combination the capability rules reject. Per-trial wall times come from a
Hydra callback (job start -> job end). The first ``mtq.auto_quantize`` of the process (CUDA extension
builds on GPU) is a warm-up, reported apart.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from bench_common import run_app

REPO = Path(__file__).resolve().parents[1]
PAIRS = ("wint8_aint8", "wint4_aint8")
GRANULARITIES = ("default", "w_group64", "a_per_token_dynamic")
SHAPES = {
    # name: Qwen3Config kwargs for a random model saved with save_pretrained (CUDA only)
    "qwen3_0p6b_shape": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
    ),
    "qwen3_4b_shape": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
    ),
}
TRIAL_SECONDS: list[float] = []


class TrialTimer(Callback):
    """Wall time of each sweep job, from Hydra's job start to job end."""

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        TRIAL_SECONDS.append(time.perf_counter() - self._start)


def random_checkpoint(shape: str, folder: Path, tokenizer_dir: Path) -> Path:
    """A random Qwen3 of the given shape in bf16, saved to disk so that loading time is real."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen3Config(
        vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=False, **SHAPES[shape]
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    path = folder / shape
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return path


def overrides_for(shape: str, checkpoint: Path | None, store: Path, device: str) -> list[str]:
    common = [
        f"autoquant.device={device}",
        "tracking.registry=false",
        f"tracking.tracking_uri=sqlite:///{store}/mlflow.db",
        f"tracking.artifact_location={store}/mlruns",
        f"hydra.sweep.dir={store}/multirun",
        "output_layout=tmp",
    ]
    if shape == "tiny":
        return common
    return [
        *common,
        "model=qwen3_4b",
        f"model.name={shape}",
        f"model.path={checkpoint}",
        "model.dtype=bfloat16",
        "dataset.size=large",
        "dataset.seq_len=512",
        "autoquant.batch_size=8",
        "autoquant.num_calib_samples=64",
        "autoquant.num_score_samples=64",
    ]


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from autoquant_sweep.paths import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return hydra_compose("sensitivity", overrides=overrides)


def plain_loop(plans: list[Any]) -> tuple[list[float], float]:
    """(a): raw ModelOpt for every plan, reloading nothing it does not have to."""
    import modelopt.torch.quantization as mtq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoquant_sweep.data import tokenize_batches

    first = plans[0]
    device = first.device
    tokenizer = AutoTokenizer.from_pretrained(first.checkpoint)
    pristine = (
        AutoModelForCausalLM.from_pretrained(
            first.checkpoint, dtype=getattr(torch, first.cfg["model"]["dtype"])
        )
        .to(device)
        .eval()
    )
    batches = [
        {k: v.to(device) for k, v in b.items()}
        for b in tokenize_batches(
            tokenizer, first.captions, int(first.cfg["dataset"]["seq_len"]), first.batch_plan.batch_size
        )
    ]
    times = []
    for plan in plans:
        start = time.perf_counter()
        model = copy.deepcopy(pristine)
        mtq.auto_quantize(
            model,
            constraints={"effective_bits": float(plan.cfg["autoquant"]["effective_bits"])},
            quantization_formats=[copy.deepcopy(plan.effective_format)],
            data_loader=batches,
            forward_step=lambda m, b: m(**b),
            loss_func=lambda out, b: out.loss,
            disabled_layers=list(plan.cfg["model"]["disabled_layers"]),
            num_calib_steps=plan.batch_plan.num_calib_steps,
            num_score_steps=plan.batch_plan.num_score_steps,
        )
        del model
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return times, peak


def framework_sweep(base_overrides: list[str], study: str) -> list[float]:
    """(b)/(c): the Optuna sweep through experiments/sensitivity.py, in this process."""
    import hydra

    sys.path.insert(0, str(REPO / "experiments"))
    from autoquant_sweep.app import sensitivity_task
    from sensitivity import CONF_DIR, EXECUTION_WHITELIST  # the app's own config and whitelist

    # the app's main, whose whitelist also lets Hydra instantiate this script's TrialTimer callback
    @hydra.main(config_path=CONF_DIR, config_name="sensitivity",
                execution_whitelist=[*EXECUTION_WHITELIST, "__main__.*"])
    def app(cfg: Any) -> Any:
        return sensitivity_task(cfg)

    TRIAL_SECONDS.clear()
    argv = [
        "sensitivity.py",
        "-m",
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=grid",
        f"quant_pair=choice({','.join(PAIRS)})",
        f"quant_granularity=choice({','.join(GRANULARITIES)})",
        f"hydra.sweeper.n_trials={len(PAIRS) * len(GRANULARITIES)}",
        f"hydra.sweeper.study_name={study}",
        "hydra.sweeper.storage=null",
        "+hydra.callbacks.bench_timer._target_=__main__.TrialTimer",
        *base_overrides,
    ]
    run_app(app, argv)
    return list(TRIAL_SECONDS)


def bench_shape(shape: str, device: str, work: Path) -> dict[str, Any]:
    import torch

    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.embedded import ensure_embedded_assets
    from autoquant_sweep.plan import plan_run
    from autoquant_sweep.sensitivity import run_autoquant

    assets = ensure_embedded_assets(verbose=False)
    checkpoint = None if shape == "tiny" else random_checkpoint(shape, work, assets.tokenizer_dir)
    store = work / f"store-{shape}"
    store.mkdir()
    base = overrides_for(shape, checkpoint, store, device)
    plans = [
        plan_run(compose([*base, f"quant_pair={p}", f"quant_granularity={g}"]))
        for p in PAIRS
        for g in GRANULARITIES
    ]

    # warm-up: first AutoQuant call of the process (CUDA extensions), reported apart
    warm = time.perf_counter()
    plain_loop(plans[:1])
    warm_up = time.perf_counter() - warm
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    plain, plain_peak = plain_loop(plans)
    MODEL_CACHE.__init__()  # the framework loads its own copy, as a fresh sweep process would
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    swept = framework_sweep(base, f"bench-{shape}-computed")
    sweep_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    cached = framework_sweep(base, f"bench-{shape}-cached")

    refuse_cfg = compose([*base, "quant_pair=wfp4_afp8", "quant_granularity=w_per_out_channel"])
    start = time.perf_counter()
    try:
        plan_run(refuse_cfg)
    except Exception as exc:  # the refusal is the point
        refused = type(exc).__name__
    refuse_seconds = time.perf_counter() - start
    del run_autoquant
    med_a, med_b, med_c = (statistics.median(x) for x in (plain, swept, cached))
    return {
        "shape": shape,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "configs": len(plans),
        "warm_up_s": warm_up,
        "a_plain_median_s": med_a,
        "b_framework_median_s": med_b,
        "b_over_a": med_b / med_a,
        "b_first_trial_s (load+tokenise)": swept[0] if swept else float("nan"),
        "c_cached_median_s": med_c,
        "c_over_b": med_c / med_b,
        "refused_s": refuse_seconds,
        "refused_error": refused,
        "peak_gib_plain": plain_peak,
        "peak_gib_sweep": sweep_peak,
        "a_times": plain,
        "b_times": swept,
        "c_times": cached,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default=None, help="comma list of tiny,qwen3_0p6b_shape,qwen3_4b_shape")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()

    import torch

    from autoquant_sweep.config import register_configs

    register_configs()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = args.shapes.split(",") if args.shapes else (["tiny", *SHAPES] if device == "cuda" else ["tiny"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="aqs-bench-") as tmp:
        for shape in shapes:
            rows.append(bench_shape(shape, device, Path(tmp)))
    header = (
        "| shape | device | configs | warm-up s | (a) raw median s | (b) framework median s | (b)/(a) "
        "| (c) cached median s | (c)/(b) | refused s | peak GiB raw / sweep |"
    )
    print(header)
    print("|" + "---|" * 11)
    for r in rows:
        print(
            f"| {r['shape']} | {r['device']} | {r['configs']} | {r['warm_up_s']:.2f} "
            f"| {r['a_plain_median_s']:.3f} | {r['b_framework_median_s']:.3f} | {r['b_over_a']:.3f} "
            f"| {r['c_cached_median_s']:.4f} | {r['c_over_b']:.4f} | {r['refused_s']:.4f} "
            f"| {r['peak_gib_plain']:.1f} / {r['peak_gib_sweep']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
