"""Export time, size and faithfulness per deployment label on the embedded tiny Qwen3 (CPU).

For each CPU-runnable pair x granularity with a label (and one two-format recipe), a recipe of the
form ``mtq.get_auto_quantize_config`` returns (every linear quantized but the MLP down projections) is
exported with :func:`autoquant_sweep.export.export_checkpoint`; prints one Markdown row per export and
writes the rows as JSON (``--json``).

    python benchmarks/bench_export.py [--dtype bfloat16] [--json docs/export-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.test_export import PROJ, SINGLE, _format, recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from autoquant_sweep.embedded import ensure_embedded_assets
    from autoquant_sweep.export import export_checkpoint
    from autoquant_sweep.run_settings import default_settings

    assets = ensure_embedded_assets()
    layers = json.loads((assets.qwen3_tiny_dir / "config.json").read_text())["num_hidden_layers"]
    linears = [f"model.layers.{i}.{p}" for i in range(layers) for p in PROJ]
    settings = replace(default_settings(), dtype=args.dtype, device="cpu")
    int8, int4 = _format("wint8_aint8", "default"), _format("wint4_afp16", "default")
    cases = [(f"{p} x {g}", {m: None if m.endswith("down_proj") else _format(p, g) for m in linears})
             for p, g, _ in SINGLE]
    cases.append(("mixed: wint8_aint8 attention + wint4_afp16 MLP", {
        m: int8 if "self_attn" in m else (None if m.endswith("down_proj") else int4) for m in linears}))
    rows = []
    print("| recipe | label | export_hf_checkpoint s | whole export s | safetensors bytes | max abs error | "
          "max error / tolerance | one-step elements | held-out loss fake-quant -> exported weights |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, assignment) in enumerate(cases):
            t0 = time.perf_counter()
            report = export_checkpoint(recipe(assignment), settings, Path(tmp) / f"e{i}")
            total = time.perf_counter() - t0
            f = report["faithfulness"]
            steps = sum(v["elements_one_step_apart"] for v in f["per_layer"].values())
            elements = sum(v["elements"] for v in f["per_layer"].values())
            fq = report["evaluation_fake_quant"]["eval_loss"]
            ex = report["evaluation_exported_weights"]["eval_loss"]
            row = {"recipe": name, "label": report["quant_algo"],
                   "export_s": report["seconds"]["export_hf_checkpoint"], "total_s": total,
                   "safetensors_bytes": report["bytes"]["safetensors"], "max_abs_error": f["max_abs_error"],
                   "max_error_over_tolerance": f["max_error_over_tolerance"], "one_step_elements": steps,
                   "elements": elements, "eval_loss_fake_quant": fq, "eval_loss_exported_weights": ex}
            rows.append(row)
            print(f"| {name} | {row['label']} | {row['export_s']:.2f} | {total:.1f} | "
                  f"{row['safetensors_bytes']:,} | {row['max_abs_error']:.2e} | "
                  f"{row['max_error_over_tolerance']:.2f} | {steps}/{elements} | {fq:.4f} -> {ex:.4f} |",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"dtype": args.dtype, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
