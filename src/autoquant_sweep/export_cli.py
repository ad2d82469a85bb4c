"""``autoquant-sweep export`` and the run-setting flags ``apply`` shares with it.

    autoquant-sweep export autoquant-qwen3_tiny-constrained_score [--alias best | --version 3] --out q/
        [--model-path DIR] [--force] [--dtype bfloat16] [--device cpu] [--seq-len 512] ...
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from autoquant_sweep.run_settings import RunSettings, default_settings, settings_from_manifest, with_overrides

log = logging.getLogger(__name__)

__all__ = ["add_checkpoint_command_args", "add_export_command", "add_run_setting_args", "cmd_export",
           "version_settings"]


def add_run_setting_args(p: argparse.ArgumentParser) -> None:
    """Flags that override a version's own run settings (default: what its manifest records)."""
    g = p.add_argument_group("run settings (default: the version's own, from its run's manifest)")
    g.add_argument("--model-path", default=None, help="checkpoint folder (default: the run's checkpoint)")
    g.add_argument("--kind", default=None, choices=("causal_lm", "image_text_to_text"))
    g.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    g.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    g.add_argument("--calib-path", default=None, help="calibration captions file, one sample per line")
    g.add_argument("--calib-samples", type=int, default=None, help="captions calibrated on")
    g.add_argument("--seq-len", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--eval-path", default=None, help="held-out captions file (default: the run's split)")


def version_manifest(mv: Any, tracking_uri: str) -> dict[str, Any] | None:
    """The manifest of the run that computed a version (``None``: a run without a logged report)."""
    from autoquant_sweep.tracking.registry import run_manifest, store_client

    return run_manifest(store_client(tracking_uri), mv.run_id) if mv.run_id else None


def version_settings(mv: Any, tracking_uri: str, args: argparse.Namespace) -> RunSettings:
    """The version's run settings with every given flag in their place (``--size`` of ``apply``: the
    embedded captions subset of that size)."""
    from autoquant_sweep.embedded import CAPTION_SUBSET_SIZES

    manifest = version_manifest(mv, tracking_uri)
    if manifest is None:
        log.warning("version %s v%s: its run has no manifest; using the embedded defaults", mv.name,
                    mv.version)
        settings = default_settings()
    else:
        settings = settings_from_manifest(manifest)
    flags = {k: getattr(args, k, None) for k in ("model_path", "kind", "dtype", "device", "calib_path",
                                                 "calib_samples", "seq_len", "batch_size", "eval_path")}
    settings = with_overrides(settings, flags)
    size = getattr(args, "size", None)
    if size is not None and args.calib_path is None:
        from dataclasses import replace

        settings = replace(settings, calib_path=None, size=size,
                           num_calib_samples=args.calib_samples or CAPTION_SUBSET_SIZES[size])
    return settings


def cmd_export(args: argparse.Namespace) -> int:
    """Look up a version, export its recipe as a unified checkpoint, log it to MLflow."""
    from autoquant_sweep.errors import UserInputError
    from autoquant_sweep.export import ExportFaithfulnessError, export_checkpoint, log_export
    from autoquant_sweep.export_labels import checkpoint_label, group_labels
    from autoquant_sweep.layout import check_out_dir
    from autoquant_sweep.recipe import quantize_config_from_json
    from autoquant_sweep.tracking.registry import get_version, store_client
    from autoquant_sweep.tracking.registry_args import tracking_uri, version_line

    out = Path(args.out)
    check_out_dir(out, force=args.force)  # before any lookup or model load
    uri = tracking_uri(args)
    mv, data = get_version(args.name, args.alias, args.version, uri)
    print(version_line(mv))
    quant_cfg = quantize_config_from_json(data)
    labels = group_labels(quant_cfg)  # refused here, before any model loads
    print(f"exports as {checkpoint_label(labels)} ({len(labels)} quantized linears)")
    settings = version_settings(mv, uri, args)
    print(f"run settings: {settings.model_name} ({settings.kind}, {settings.dtype}, {settings.device}), "
          f"{settings.num_calib_samples} calibration samples x {settings.seq_len} tokens in batches of "
          f"{settings.batch_size}, held-out split: {settings.eval_source or 'none'}")
    info = {"registered_model": mv.name, "version": mv.version, "source_run_id": mv.run_id,
            "tags": dict(mv.tags)}
    try:
        report = export_checkpoint(quant_cfg, settings, out, info=info, force=args.force)
    except ExportFaithfulnessError as exc:  # not the measured weights: one line, exit 2, nothing written
        raise UserInputError(str(exc)) from exc
    f = report["faithfulness"]
    print(f"faithfulness: {f['layers_checked']} quantized linears rebuilt from the safetensors, max error "
          f"{f['max_abs_error']:.3e} ({f['max_error_over_tolerance']:.2f} of the rounding tolerance)")
    fq, ex = report.get("evaluation_fake_quant"), report.get("evaluation_exported_weights")
    if fq and ex:
        print(f"held-out loss: measured (fake-quant) model {fq['eval_loss']:.6f}, exported weights "
              f"{ex['eval_loss']:.6f} ({fq['num_samples']} samples)")
    print(f"unified checkpoint ({report['quant_algo']}, {report['bytes']['total'] / 2**20:.2f} MiB, export "
          f"{report['seconds']['export_hf_checkpoint']:.2f} s) -> {out}")
    if not args.no_log:
        where = log_export(store_client(uri), mv, out, report)
        print(f"logged to MLflow: logged model {where['model_id']} at {where['artifact_location']} "
              f"(version tag export.{where['quant_algo']})")
    return 0


def add_checkpoint_command_args(p: argparse.ArgumentParser, out_help: str) -> None:
    """The flags of a command that writes a checkpoint from a registered version (``apply``, ``export``):
    the version and its store, ``--out`` / ``--force`` and the run settings."""
    from autoquant_sweep.tracking.registry_args import add_version_args

    add_version_args(p)
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--force", action="store_true",
                   help="replace a non-empty --out folder as a whole (written aside, then swapped in)")
    add_run_setting_args(p)


def add_export_command(sub: Any) -> None:
    """Register ``export`` on the ``autoquant-sweep`` sub-parsers."""
    p = sub.add_parser("export", help="export a registered recipe as ModelOpt's unified Hugging Face "
                                      "checkpoint (labels checked first, faithfulness checked after)")
    add_checkpoint_command_args(p, "folder for the checkpoint (new or empty)")
    p.add_argument("--no-log", action="store_true", help="do not log the export to MLflow")
    p.set_defaults(func=cmd_export)
