"""The flags naming a registered version and its store, shared by ``lookup``, ``apply``, ``export`` and
``mix``, and the one line each of them prints about the version it resolved."""

from __future__ import annotations

import argparse
from typing import Any


def tracking_uri(args: argparse.Namespace) -> str:
    """The store of a sub-command, by the rule runs use: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``,
    else ``sqlite:///<root>/mlflow.db`` (``<root>``: the working directory or ``$AUTOQUANT_SWEEP_ROOT``)."""
    from autoquant_sweep.tracking.store import resolve_tracking_uri

    return resolve_tracking_uri(args.tracking_uri)[0]


def add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db, "
                        "<root> being the working directory or $AUTOQUANT_SWEEP_ROOT, as for runs)")


def add_version_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registered model, e.g. autoquant-qwen3_tiny-total_sensitivity")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--alias", default="best", help="alias to resolve (default: best)")
    group.add_argument("--version", default=None, help="explicit version number instead of an alias")
    add_store_args(p)


def version_line(mv: Any) -> str:
    """One line about a model version: aliases, pair / granularity, data, objective, source run."""
    t = mv.tags
    return (f"{mv.name} v{mv.version} (aliases: {', '.join(mv.aliases) or '-'}): {t.get('quant_pair')} / "
            f"{t.get('granularity')} on {t.get('dataset')}/{t.get('dataset_size')}, "
            f"{t.get('objective')}={t.get('objective_value')}, "
            f"source run {t.get('source_run_id') or mv.run_id}, "
            f"config fingerprint {t.get('config_fingerprint')}")
