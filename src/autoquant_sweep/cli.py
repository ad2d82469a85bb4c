"""``autoquant-sweep``: sub-commands around the Hydra app (``autoquant-sweep-run``, the experiments/ entry).

autoquant-sweep generate            # build (or find) the embedded tiny checkpoints and captions
autoquant-sweep validate            # every quant_pair x quant_granularity: ok / no-op / refused, why
autoquant-sweep report DIR          # re-render a report's per-layer files from its manifest
autoquant-sweep export NAME --out D # a registered recipe as ModelOpt's unified HF checkpoint
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from autoquant_sweep.errors import UserInputError


def cmd_generate(args: argparse.Namespace) -> int:
    from autoquant_sweep.embedded import ensure_embedded_assets

    assets = ensure_embedded_assets(Path(args.cache) if args.cache else None, seed=args.seed)
    for name in ("captions_dir", "tokenizer_dir", "qwen3_tiny_dir", "qwen3_vl_tiny_dir"):
        print(f"{name:18s} {getattr(assets, name)}")
    for name in ("qwen3_tiny_dir", "qwen3_vl_tiny_dir"):
        info_path = getattr(assets, name) / "embedded_info.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            print(
                f"{name:18s} loss: random init {info.get('initial_loss')} -> trained {info.get('final_loss')}"
            )
    return 0


def validation_rows(device: str) -> list[dict]:
    """Every conf/quant_pair x conf/quant_granularity combination with its verdict on ``device``."""
    from autoquant_sweep.config.groups import load_group
    from autoquant_sweep.devices import device_view
    from autoquant_sweep.export_labels import exports_as
    from autoquant_sweep.quant.capability import validation_matrix
    from autoquant_sweep.quant.formats import resolve_format

    device = device_view(device)
    pairs, granularities = load_group("quant_pair"), load_group("quant_granularity")
    rows = validation_matrix(pairs, granularities, cuda_available=device == "cuda", resolve=resolve_format)
    formats = {str(p["name"]): str(p["format_name"]) for p in pairs}
    overrides = {str(g["name"]): g.get("quant_cfg_overrides") or {} for g in granularities}
    for row in rows:  # the deployment label `autoquant-sweep export` would write (export_labels.py)
        row["exports_as"] = exports_as(resolve_format(formats[row["pair"]]), overrides[row["granularity"]])
    return rows


def cmd_validate(args: argparse.Namespace) -> int:
    rows = validation_rows(args.device)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"quant_pair x quant_granularity on {args.device}")
    for column in ("pair", "granularity", "format_name", "status", "reason", "exports as"):
        table.add_column(column, overflow="fold")
    colours = {"ok": "green", "noop": "yellow", "refused": "red"}
    for row in rows:
        status = f"[{colours.get(row['status'], 'white')}]{row['status']}[/]"
        table.add_row(row["pair"], row["granularity"], row["format_name"], status, row["reason"],
                      row["exports_as"])
    Console(width=args.width).print(table)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "noop", "refused")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def check_manifest(folder: Path) -> None:
    """A report folder's ``manifest.json`` must be readable UTF-8 JSON holding an object (one-line error)."""
    if folder.is_file():
        raise UserInputError(f"report: '{folder}' is a file; pass the report folder (the one holding "
                             "manifest.json)")
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return  # regenerate_report names what is missing
    try:
        data = json.loads(manifest.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f"line {exc.lineno} column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) \
            else f"byte {exc.start}: not UTF-8"
        raise UserInputError(f"report: '{manifest}' is not valid JSON ({where}); the report folder is "
                             "damaged: rerun the run that wrote it, or restore the folder") from exc
    except OSError as exc:
        raise UserInputError(f"report: cannot read '{manifest}': {exc.strerror}") from exc
    if not isinstance(data, dict):
        raise UserInputError(f"report: '{manifest}' holds a JSON {type(data).__name__}, not a manifest "
                             "object; rerun the run that wrote it")


def cmd_report(args: argparse.Namespace) -> int:
    from autoquant_sweep.report import regenerate_report

    folder = Path(args.report_dir)
    check_manifest(folder)
    print(regenerate_report(folder))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoquant-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="build the embedded tiny checkpoints, tokenizer and captions")
    p.add_argument(
        "--cache", default=None,
        help="cache root (default: $AUTOQUANT_SWEEP_CACHE, else <working dir>/.cache/autoquant_sweep)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("validate", help="list every quant_pair x quant_granularity with ok / noop / refused")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="judge for this device (default: what torch sees)",
    )
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.add_argument("--width", type=int, default=160)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("report", help="re-render per-layer files of a report folder from its manifest.json")
    p.add_argument("report_dir")
    p.set_defaults(func=cmd_report)

    from autoquant_sweep.tracking.cli import add_tracking_commands

    add_tracking_commands(sub)
    from autoquant_sweep.export_cli import add_export_command

    add_export_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autoquant-sweep`` console script."""
    from autoquant_sweep.faults import Terminated, install_signal_handlers, stop_text

    args = build_parser().parse_args(argv)
    # SIGTERM / Ctrl-C raise in the main thread: ``finally`` blocks remove staging and build folders, and
    # the command ends with one line instead of a traceback (``ui`` installs its own handlers)
    install_signal_handlers()
    try:
        return int(args.func(args) or 0)
    except UserInputError as exc:
        print(f"autoquant-sweep: error: {exc}", file=sys.stderr)
        return 2
    except (Terminated, KeyboardInterrupt) as exc:
        print(f"autoquant-sweep: {args.command} stopped: {stop_text(exc)}; nothing half-written was left "
              "(rerun the same command)", file=sys.stderr)
        return exc.code if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
