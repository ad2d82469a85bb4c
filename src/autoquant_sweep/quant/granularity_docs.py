"""Generate ``docs/granularity.md`` from ``conf/quant_granularity`` and ``conf/quant_pair``.

Usage::

    python -m autoquant_sweep.quant.granularity_docs           # (re)write docs/granularity.md
    python -m autoquant_sweep.quant.granularity_docs --check   # exit 1 if the file is stale
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autoquant_sweep.quant.capability import CAPABILITY_RULES, validation_matrix
from autoquant_sweep.quant.overlay import INPUT, WEIGHT, validate_overrides

REPO_ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = REPO_ROOT / "conf"
DOC_PATH = REPO_ROOT / "docs" / "granularity.md"

GRANULARITY_ORDER = (
    "default",
    "recipe_match_channel_token",
    "w_per_tensor",
    "w_per_out_channel",
    "w_per_in_channel",
    "w_group64",
    "w_group128",
    "a_per_token_dynamic",
    "a_per_tensor_static",
)
PAIR_ORDER = (
    "wint8_aint8",
    "wint8_afp16",
    "wint4_afp16",
    "wint4_aint8",
    "wint4_afp8",
    "wfp8_afp8",
    "wfp8_afp16",
    "wfp4_afp16",
    "wfp4_afp8",
    "wfp4_afp4",
)


def _ordered(items: list[dict], order: Sequence[str]) -> list[dict]:
    rank = {name: i for i, name in enumerate(order)}
    return sorted(items, key=lambda item: (rank.get(str(item["name"]), len(rank)), str(item["name"])))


def load_group(group: str, conf_dir: Path = CONF_DIR) -> list[dict]:
    """Load every ``conf/<group>/*.yaml`` as a plain dict (OmegaConf, resolved)."""
    from omegaconf import OmegaConf

    items = []
    for path in sorted((conf_dir / group).glob("*.yaml")):
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping")
        items.append(data)
    order = GRANULARITY_ORDER if group == "quant_granularity" else PAIR_ORDER
    return _ordered(items, order)


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
    lines = [
        "| name | weights (`*weight_quantizer`) | activations (`*input_quantizer`) | description |",
        "|---|---|---|---|",
    ]
    for gran in granularities:
        overrides = validate_overrides(gran.get("quant_cfg_overrides") or {})
        default = overrides.get("default")
        weight = _attrs_text(overrides.get(WEIGHT) or default)
        inp = _attrs_text(overrides.get(INPUT) or default)
        desc = " ".join(str(gran.get("description", "")).split())
        lines.append(f"| `{gran['name']}` | {weight} | {inp} | {desc} |")
    return lines


def _pairs_table(pairs: list[dict]) -> list[str]:
    lines = ["| pair | weight | activation | format_name |", "|---|---|---|---|"]
    for pair in pairs:
        lines.append(
            f"| `{pair['name']}` | {pair['weight']} | {pair['activation']} | `{pair['format_name']}` |"
        )
    return lines


def _cell(row: Mapping[str, Any]) -> str:
    if row["status"] == "ok":
        return "ok"
    if row["status"] == "noop":
        return "no-op (disabled)" if "disabled in the format" in row["reason"] else "no-op (restates preset)"
    return "refused (" + ", ".join(row["rule_ids"]) + ")"


def _matrix_table(rows: list[dict], pairs: list[dict], granularities: list[dict]) -> list[str]:
    cells = {(r["pair"], r["granularity"]): r for r in rows}
    names = [str(g["name"]) for g in granularities]
    lines = ["| pair \\ granularity | " + " | ".join(f"`{n}`" for n in names) + " |"]
    lines.append("|---" * (len(names) + 1) + "|")
    for pair in pairs:
        row = [_cell(cells[(str(pair["name"]), n)]) for n in names]
        lines.append(f"| `{pair['name']}` | " + " | ".join(row) + " |")
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
        "- Inputs `(tokens, in_features)`: `type: dynamic` + `block_sizes: {-1: null}` = one scale per",
        "  token computed at run time (per token); `type: static` + `axis: null` = one calibrated scale",
        "  per tensor.",
        "- `axis` and `block_sizes` are mutually exclusive: setting one removes the other. `block_sizes`",
        "  merges into the preset's mapping (keeps `type`, `scale_bits`, `scale_block_sizes`); YAML keys",
        '  such as `"-1"` are normalised to `-1`.',
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
        "| rule | status | summary | evidence |",
        "|---|---|---|---|",
        *[f"| `{r.rule_id}` | {r.status} | {r.summary} | {r.evidence} |" for r in CAPABILITY_RULES],
        "",
        "## Compatibility on CUDA (`cuda_available=True`)",
        "",
        *_matrix_table(cuda_rows, pairs, granularities),
        "",
        "## Compatibility on CPU (`cuda_available=False`)",
        "",
        *_matrix_table(cpu_rows, pairs, granularities),
        "",
        "A refused combination fails fast before any model is loaded; a no-op combination would only",
        "duplicate the pair's `default` result under another name.",
        "",
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``docs/granularity.md``; with ``--check`` exit 1 when it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    parser.add_argument("--output", type=Path, default=DOC_PATH)
    args = parser.parse_args(argv)
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
