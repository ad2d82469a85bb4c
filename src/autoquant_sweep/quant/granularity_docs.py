"""Generate ``docs/granularity.md`` from ``conf/quant_granularity`` and ``conf/quant_pair``.

Usage::

    python -m autoquant_sweep.quant.granularity_docs           # (re)write docs/granularity.md
    python -m autoquant_sweep.quant.granularity_docs --check   # exit 1 if the file is stale
    python -m autoquant_sweep.quant.granularity_docs --measure-realized   # re-measure docs/realized-cpu.json

The realized table (what ModelOpt instantiates for every CPU-runnable pair x granularity) is measured on
the embedded tiny Qwen3 and stored in ``docs/realized-cpu.json``; ``tests/integration/test_realized.py``
measures it again and compares, so a ModelOpt pin move that changes it fails the suite.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from autoquant_sweep.config.groups import load_group
from autoquant_sweep.paths import conf_dir
from autoquant_sweep.quant.capability import CAPABILITY_RULES, validation_matrix
from autoquant_sweep.quant.cost import cost_doc_lines
from autoquant_sweep.quant.overlay import INPUT, WEIGHT, validate_overrides

REPO_ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = conf_dir()
DOC_PATH = REPO_ROOT / "docs" / "granularity.md"
REALIZED_PATH = REPO_ROOT / "docs" / "realized-cpu.json"


def measure_realized(model: Any, calib_batch: dict, conf_dir: Path = CONF_DIR) -> list[dict]:
    """Quantize a copy of ``model`` with every CPU-runnable pair x granularity (``mtq.quantize`` on one
    calibration batch) and read back what ModelOpt instantiated: one row per combination with the declared
    and the realized kind of each role, and whether the realized quantizers pass the run's check."""
    import modelopt.torch.quantization as mtq

    from autoquant_sweep.quant.formats import resolve_format
    from autoquant_sweep.quant.overlay import apply_overlay
    from autoquant_sweep.quant.realized import (
        RealizedGranularityError,
        check_realized,
        declared_kinds,
        realize,
        summarize_realized,
    )

    granularities = {g["name"]: g for g in load_group("quant_granularity", conf_dir)}
    rows = []
    for row in validation_matrix(load_group("quant_pair", conf_dir), list(granularities.values()),
                                 cuda_available=False, resolve=resolve_format):
        if row["status"] == "refused":
            continue
        gran = granularities[row["granularity"]]
        fmt = apply_overlay(resolve_format(row["format_name"]), gran["quant_cfg_overrides"]).format
        quantized = copy.deepcopy(model)
        mtq.quantize(quantized, copy.deepcopy(fmt), forward_loop=lambda m: m(**calib_batch))
        quantizers = realize(quantized)
        declared = declared_kinds(fmt)
        try:
            check_realized(declared, quantizers, where=f"{row['pair']} x {row['granularity']}")
            mismatch = ""
        except RealizedGranularityError as exc:
            mismatch = str(exc)
        summary = summarize_realized(quantizers)
        rows.append({
            "pair": row["pair"],
            "granularity": row["granularity"],
            "declared": {role: "+".join(kinds) or "disabled" for role, kinds in declared.items()},
            "realized": {"weight": summary["weight"], "input": summary["input"]},
            "mismatch": mismatch,
        })
    return rows


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub Markdown table, cells as written (no number parsing)."""
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True).splitlines()


def _pair_by_granularity_headers(granularities: list[dict]) -> list[str]:
    return ["pair \\ granularity", *(f"`{g['name']}`" for g in granularities)]


def _realized_cell(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return "refused"
    text = f"W {row['realized']['weight']}<br>A {row['realized']['input']}"
    return text + (" **MISMATCH**" if row["mismatch"] else "")


def _realized_table(rows: list[dict], pairs: list[dict], granularities: list[dict]) -> list[str]:
    if not rows:
        return ["(not measured: run `python -m autoquant_sweep.quant.granularity_docs --measure-realized`)"]
    cells = {(r["pair"], r["granularity"]): r for r in rows}
    names = [str(g["name"]) for g in granularities]
    table = [
        [f"`{pair['name']}`", *(_realized_cell(cells.get((str(pair["name"]), n))) for n in names)]
        for pair in pairs
        if any((str(pair["name"]), n) in cells for n in names)
    ]
    lines = _markdown_table(_pair_by_granularity_headers(granularities), table)
    bad = [r for r in rows if r["mismatch"]]
    lines.append("")
    lines.append(f"{len(rows)} combinations measured, {len(bad)} where ModelOpt instantiated something else "
                 "than the format declares.")
    return lines


def _attrs_text(attrs: Mapping[str, Any] | None) -> str:
    if not attrs:
        return "unchanged"
    parts = []
    for key, value in attrs.items():
        if key == "block_sizes":
            inner = ", ".join(f"{k}: {'null' if v is None else v}" for k, v in value.items())
            parts.append(f"`block_sizes: {{{inner}}}`")
        else:
            parts.append(f"`{key}: {'null' if value is None else value}`")
    return ", ".join(parts)


def _vocabulary_table(granularities: list[dict]) -> list[str]:
    rows = []
    for gran in granularities:
        overrides = validate_overrides(gran.get("quant_cfg_overrides") or {})
        default = overrides.get("default")
        rows.append([
            f"`{gran['name']}`",
            _attrs_text(overrides.get(WEIGHT) or default),
            _attrs_text(overrides.get(INPUT) or default),
            " ".join(str(gran.get("description", "")).split()),
        ])
    headers = ["name", f"weights (`{WEIGHT}`)", f"activations (`{INPUT}`)", "description"]
    return _markdown_table(headers, rows)


def _pairs_table(pairs: list[dict]) -> list[str]:
    rows = [[f"`{p['name']}`", p["weight"], p["activation"], f"`{p['format_name']}`"] for p in pairs]
    return _markdown_table(["pair", "weight", "activation", "format_name"], rows)


def _rules_table() -> list[str]:
    rows = [[f"`{r.rule_id}`", r.status, r.summary, r.evidence] for r in CAPABILITY_RULES]
    return _markdown_table(["rule", "status", "summary", "evidence"], rows)


def _cell(row: Mapping[str, Any]) -> str:
    if row["status"] == "ok":
        return "ok"
    if row["status"] == "noop":
        return "no-op (disabled)" if "disabled in the format" in row["reason"] else "no-op (restates preset)"
    return "refused (" + ", ".join(row["rule_ids"]) + ")"


def _matrix_table(rows: list[dict], pairs: list[dict], granularities: list[dict]) -> list[str]:
    cells = {(r["pair"], r["granularity"]): r for r in rows}
    names = [str(g["name"]) for g in granularities]
    table = [[f"`{pair['name']}`", *(_cell(cells[(str(pair["name"]), n)]) for n in names)] for pair in pairs]
    lines = _markdown_table(_pair_by_granularity_headers(granularities), table)
    counts = Counter(r["status"] for r in rows)
    lines.append("")
    lines.append(f"Totals: ok {counts['ok']}, no-op {counts['noop']}, refused {counts['refused']}.")
    return lines


def render_granularity_doc(conf_dir: Path = CONF_DIR, resolve: Callable[[str], dict] | None = None) -> str:
    """Render the Markdown of ``docs/granularity.md`` (deterministic)."""
    if resolve is None:
        from autoquant_sweep.quant.formats import resolve_format

        resolve = resolve_format
    granularities = load_group("quant_granularity", conf_dir)
    pairs = load_group("quant_pair", conf_dir)
    cuda_rows = validation_matrix(pairs, granularities, cuda_available=True, resolve=resolve)
    cpu_rows = validation_matrix(pairs, granularities, cuda_available=False, resolve=resolve)
    realized_rows = json.loads(REALIZED_PATH.read_text(encoding="utf-8")) if REALIZED_PATH.is_file() else []
    out: list[str] = [
        "# Quantization granularity: vocabulary, ModelOpt mapping and compatibility",
        "",
        "<!-- Generated by `python -m autoquant_sweep.quant.granularity_docs` from conf/quant_granularity,",
        "     conf/quant_pair and the capability rules. Do not edit by hand; a unit test checks it. -->",
        "",
        "A granularity overlay (`conf/quant_granularity/<name>.yaml`) changes only `axis`, `block_sizes`",
        "and `type` of the quantizers of a resolved ModelOpt 0.47 format (`quant_pair.format_name`).",
        "The dtypes come from the pair; the overlay never enables a quantizer the format disables.",
        "",
        "## Vocabulary -> ModelOpt attributes",
        "",
        *_vocabulary_table(granularities),
        "",
        "## What the axes mean for a Linear weight `(out_features, in_features)`",
        "",
        "- `axis: null`: one scale for the whole tensor (per tensor).",
        "- `axis: 0`: one scale per output channel, i.e. per **row** (`out_features` scales).",
        "- `axis: 1`: one scale per input channel, i.e. per **column** (`in_features` scales). This is what",
        '  "per column" means here (`w_per_in_channel`).',
        "- `block_sizes: {-1: N}`: groups of N consecutive input elements in each row",
        "  (`out_features x in_features / N` scales); `w_group64`, `w_group128`.",
        "- Inputs `(batch, seq, in_features)`: the quantizer-level `type: dynamic` + `axis: null` +",
        "  `block_sizes: {-1: null}` = one scale per token, computed at run time (`a_per_token_dynamic`; the",
        "  form of ModelOpt's own `FP8_PER_CHANNEL_PER_TOKEN_CFG` inputs). `type: static` + `axis: null` =",
        "  one calibrated scale per tensor.",
        "- `axis` and `block_sizes` are mutually exclusive: setting one removes the other (`axis: null`",
        "  may stand beside `block_sizes`). `block_sizes` merges into the preset's mapping (keeps `type`,",
        "  `scale_bits`, `scale_block_sizes`, `four_over_six`); YAML keys such as `\"-1\"` are normalised",
        "  to `-1`.",
        "",
        "## Two different `type`s",
        "",
        "- **`type`** (an overlay attribute, a `TensorQuantizer` attribute): `dynamic` computes the scale",
        "  from each tensor at run time, `static` calibrates it once (ModelOpt's default). With `axis: null`",
        "  and `block_sizes: {-1: null}` this is per-token dynamic quantization of Linear inputs.",
        "- **`block_sizes[\"type\"]`**: dynamic *block* quantization, the NVFP4 / MX style (`{-1: 16, type:",
        "  dynamic, scale_bits: (4, 3)}`). An overlay writes it only when its own `block_sizes` says so.",
        "- ModelOpt's docstring says `block_sizes: {-1: None, \"type\": \"dynamic\"}` gives per-token",
        "  dynamic quantization. Measured on ModelOpt 0.47 (facts 31), INT8 inputs written that way become a",
        "  **static** quantizer per (batch, position): `axis (0, 1)`, `amax` of shape (4, 32, 1), the",
        "  calibration batch's shape (+0.098 nats held-out on the tiny model, and a batch of 8 fails). The",
        "  capability rule `block-type-dynamic-per-token` refuses that form before any model loads.",
        "",
        "## Name -> declared -> realized",
        "",
        "Each granularity file names what it `realizes` per role it changes (`per_tensor`,",
        "`per_out_channel`, `per_in_channel`, `group<N>` for weights; `per_tensor_static`,",
        "`per_token_dynamic` for inputs; `dynamic_group<N>` is dynamic block quantization). The plan refuses",
        "a combination whose effective format declares something else (`quant.realized.check_promise`).",
        "After ModelOpt inserts and calibrates the quantizers of a trial, every enabled weight / input",
        "`TensorQuantizer` is read back (`num_bits`, `axis`, `block_sizes`, dynamic or static, `amax`",
        "shape) and must realize the declared kind (`quant.realized.check_realized`); a mismatch stops the",
        "trial with one line naming the combination and what ModelOpt made of it. The manifest keeps the",
        "result (`realized`), MLflow has it as the params `realized.weight` / `realized.input`. The check",
        "reads module attributes only: about 2 ms per trial on the tiny model.",
        "",
        "## Who checks what",
        "",
        "- The overlay checks its own input: attributes other than `axis` / `block_sizes` / `type`, a",
        "  non-null `axis` and `block_sizes` together, a group size that is not a positive int, a `type`",
        "  other than `static` / `dynamic`, a pattern the format lacks.",
        "- ModelOpt's own config schema (`QuantizeConfig`) checks the effective format as the last step of",
        "  a run's plan, before any model is loaded: which `cfg` attributes and `block_sizes` keys exist",
        "  (ModelOpt 0.47 knows `type`, `scale_bits`, `scale_block_sizes`, `four_over_six`), the `num_bits`",
        "  formats, the rule structure. The overlay passes keys it does not interpret through, so a newer",
        "  ModelOpt's keys work without a change here, and a typo is still refused before loading, e.g.",
        "  `quant_granularity=X on quant_pair=Y: ModelOpt rejects the effective format: ...`.",
        "- The model's shapes (from `config.json`) check that every axis and block size fits the tensors.",
        "",
        "## `recipe_match_channel_token`: why",
        "",
        "The production recipe for Qwen3-VL is an llm-compressor GPTQ recipe: weights int4, per channel,",
        "static, symmetric; inputs int8, per token, dynamic, symmetric; targets the attention q/k/v/o and",
        "MLP gate/up/down projections; `lm_head`, the vision tower and the resampler are ignored.",
        "`recipe_match_channel_token` reproduces its granularity (weights `axis: 0`, inputs per-token",
        "dynamic) so AutoQuant sensitivities can be read against it. It matches the format and the",
        "strategy, not the method: AutoQuant is not GPTQ. Use it with `wint4_aint8` for the full match.",
        "",
        "## `default` and sequential quantizers",
        "",
        f"- In `quant_cfg_overrides`, the key `default` is shorthand for both `{WEIGHT}` and `{INPUT}`;",
        "  an explicit pattern entry wins over it attribute by attribute. Like every overlay it only",
        "  edits enabled quantizers (a disabled one is a recorded no-op). It has nothing to do with",
        "  ModelOpt's legacy dict-form `default` key, which the project refuses when it disables: it",
        "  would append a trailing `*` disable rule that switches every quantizer off (all-zero scores).",
        "- A sequential `cfg` (a list, e.g. `W4A8_AWQ_BETA_CFG` weights: INT4 block-128, then FP8 per",
        "  tensor) is overlaid on stage 0 only, the low-bit primary quantizer whose granularity is the",
        "  experiment variable; the later stage is part of the dtype recipe. A note records it.",
        "- The overlay edits the last rule whose `quantizer_name` equals the pattern (the rule that wins);",
        "  a pattern the format lacks (other than the two standard ones) is an error.",
        "",
        "## Grid-search examples",
        "",
        "```bash",
        "# every granularity of one pair (9 runs; refused / no-op ones fail fast or say so)",
        "python experiments/sensitivity.py -m quant_pair=wint4_afp16 'quant_granularity=glob(*)'",
        "# pair x granularity x calibration size, collision-free directories",
        "python experiments/sensitivity.py -m quant_pair=wint4_aint8,wint8_aint8 \\",
        "    quant_granularity=default,recipe_match_channel_token,w_group64,w_group128 \\",
        "    dataset.size=small,medium",
        "# the production-recipe granularity against the INT4 weight formats",
        "python experiments/sensitivity.py -m quant_pair=wint4_afp16,wint4_aint8 \\",
        "    quant_granularity=default,recipe_match_channel_token",
        "# stable tree instead of the Hydra run dirs",
        "python experiments/sensitivity.py -m quant_pair=wint8_aint8 'quant_granularity=glob(a_*)' \\",
        "    output_layout=publish",
        "# which combinations run here, and why not",
        "autoquant-sweep validate            # --device cuda for the CUDA view",
        "# let Optuna pick instead of a full grid",
        "python experiments/sensitivity.py -m search=granularity quant_pair=wint4_afp16",
        "```",
        "",
        "## Dtype pairs",
        "",
        *_pairs_table(pairs),
        "",
        "## Capability rules",
        "",
        *_rules_table(),
        "",
        "## Compatibility on CUDA (`cuda_available=True`)",
        "",
        *_matrix_table(cuda_rows, pairs, granularities),
        "",
        "## Compatibility on CPU (`cuda_available=False`)",
        "",
        *_matrix_table(cpu_rows, pairs, granularities),
        "",
        "## What ModelOpt 0.47 instantiates (CPU, measured)",
        "",
        "Every combination that is not refused on CPU, quantized on the embedded tiny Qwen3 and read back",
        "from its `TensorQuantizer` modules (`W` weights, `A` inputs; `+` joins the stages of a sequential",
        "quantizer). Stored in `docs/realized-cpu.json`; the suite re-measures and compares it.",
        "",
        *_realized_table(realized_rows, pairs, granularities),
        "",
        "The CUDA table above comes from the capability rules; the H200 measurements behind them",
        "(`shared/reference/modelopt-0.47-cuda-compat.md`) were taken with the earlier, docstring form of",
        "per-token inputs and have not been repeated with the quantizer-level form.",
        "",
        "A refused combination fails fast before any model is loaded; a no-op combination would only",
        "duplicate the pair's `default` result under another name.",
        "",
        *cost_doc_lines(pairs, granularities, cuda_rows, resolve),
    ]
    return "\n".join(out)


def _embedded_model_and_batch() -> tuple[Any, dict]:
    """The embedded tiny Qwen3 and one calibration batch (4 captions x 32 tokens), as a trial uses them."""
    from autoquant_sweep import data as data_mod
    from autoquant_sweep.embedded import ensure_embedded_assets
    from autoquant_sweep.modeling import load_model_and_tokenizer

    assets = ensure_embedded_assets(verbose=False)
    loaded = load_model_and_tokenizer(assets.qwen3_tiny_dir, kind="causal_lm", dtype="float32", device="cpu",
                                      trust_remote_code=False)
    captions = data_mod.read_captions(assets.caption_file("small"), 4)
    return loaded.model, data_mod.tokenize_batches(loaded.tokenizer, captions, 32, 4)[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``docs/granularity.md``; with ``--check`` exit 1 when it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    parser.add_argument("--output", type=Path, default=DOC_PATH)
    parser.add_argument("--measure-realized", action="store_true",
                        help=f"re-measure {REALIZED_PATH.name} on the embedded tiny Qwen3 first (CPU, ~15 s)")
    args = parser.parse_args(argv)
    if args.measure_realized:
        rows = measure_realized(*_embedded_model_and_batch())
        REALIZED_PATH.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {REALIZED_PATH}")
    text = render_granularity_doc()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(
                f"{args.output} is stale; run python -m autoquant_sweep.quant.granularity_docs",
                file=sys.stderr,
            )
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
