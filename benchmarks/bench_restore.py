"""Restoring a trial's model: a copy of the CPU pristine model vs a reload from disk, side by side (CPU).

What a trial needs is a fresh, unquantized model on the run device. Two ways, for each checkpoint below,
in one process:

* copy: ``trial_memory.device_copy`` of the pristine model the process keeps on the CPU (what
  ``compute.ModelCache`` does; on CUDA each tensor goes straight to the GPU);
* reload: ``modeling.load_model_and_tokenizer`` from the checkpoint folder (``from_pretrained``; the
  files are in the page cache after the first round, so this is the best case of a reload).

transformers may map a safetensors file instead of reading it, so a reload can look free until the
weights are used; each way is timed with one read of every parameter and buffer after it (what the
trial's first forward pass does), which makes them comparable.

Checkpoints: the embedded tiny Qwen3 and Qwen3-VL (float32), and a random Qwen3 built in-process and
saved as safetensors (``--hidden`` x ``--layers``, bf16, as a real checkpoint is stored).

Reported per checkpoint and way: median seconds over ``--repeat`` rounds (a warm-up round dropped), the
bytes of the restored model's parameters and buffers, and the trial's peak resident-set growth while
restoring (``trial_memory.TrialMemory``, the manifest's ``cpu_trial_peak_rss_delta``).

    python benchmarks/bench_restore.py [--repeat 5] [--hidden 1024] [--layers 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path


def _model_bytes(model) -> int:
    import itertools

    return sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))


def _random_qwen3(folder: Path, hidden: int, layers: int, tokenizer_dir: Path) -> Path:
    """A random Qwen3 of ``hidden`` x ``layers`` (Qwen3-4B's proportions: MLP 3x, head_dim 128, GQA 4:1),
    saved with the tiny checkpoint's tokenizer so the project's loader takes it as it is."""
    import shutil

    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    heads = max(hidden // 128, 1)
    config = Qwen3Config(hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=max(heads // 4, 1), head_dim=128,
                         vocab_size=32768, max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    for file in tokenizer_dir.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy2(file, folder / file.name)
    return folder


def _measure(restore, repeat: int) -> tuple[float, int, float]:
    """(median seconds, model bytes, median peak RSS growth in MB) of ``restore()`` and a first read of
    every tensor, over the rounds."""
    import itertools

    import torch

    from autoquant_sweep.trial_memory import TrialMemory

    seconds, growth, size = [], [], 0
    for _ in range(repeat + 1):
        gc.collect()
        memory = TrialMemory("cpu")
        memory.start()
        t0 = time.perf_counter()
        model = restore()
        with torch.no_grad():  # first use: every tensor read once
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                tensor.float().sum()
        seconds.append(time.perf_counter() - t0)
        growth.append(memory.peak_mb()[0])
        size = _model_bytes(model)
        del model
    return statistics.median(seconds[1:]), size, statistics.median(growth[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from autoquant_sweep.embedded import ensure_embedded_assets
    from autoquant_sweep.modeling import load_model_and_tokenizer
    from autoquant_sweep.trial_memory import device_copy

    assets = ensure_embedded_assets(verbose=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = [
            ("qwen3_tiny", assets.qwen3_tiny_dir, "causal_lm", "float32"),
            ("qwen3_vl_tiny", assets.qwen3_vl_tiny_dir, "image_text_to_text", "float32"),
            (f"qwen3_random_{args.hidden}x{args.layers}",
             _random_qwen3(Path(tmp) / "random", args.hidden, args.layers, assets.qwen3_tiny_dir),
             "causal_lm", "bfloat16"),
        ]
        for name, path, kind, dtype in checkpoints:
            def reload(path=path, kind=kind, dtype=dtype):
                return load_model_and_tokenizer(path, kind=kind, dtype=dtype, device="cpu").model

            pristine = reload()
            copy_s, copy_bytes, copy_mb = _measure(lambda pristine=pristine: device_copy(pristine, "cpu"),
                                                   args.repeat)
            load_s, load_bytes, load_mb = _measure(reload, args.repeat)
            rows.append({"checkpoint": name, "dtype": dtype, "model_bytes": copy_bytes,
                         "copy_s": round(copy_s, 4), "reload_s": round(load_s, 4),
                         "reload_over_copy": round(load_s / copy_s, 1),
                         "copy_peak_rss_growth_mb": round(copy_mb, 1),
                         "reload_peak_rss_growth_mb": round(load_mb, 1)})
            assert load_bytes == copy_bytes, (name, load_bytes, copy_bytes)
            del pristine
    print("| checkpoint | dtype | model MB | copy s | reload s | reload / copy | peak RSS growth MB copy / "
          "reload |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['checkpoint']} | {r['dtype']} | {r['model_bytes'] / 2**20:.1f} | {r['copy_s']:.4f} | "
              f"{r['reload_s']:.4f} | {r['reload_over_copy']:.1f}x | {r['copy_peak_rss_growth_mb']:.1f} / "
              f"{r['reload_peak_rss_growth_mb']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
