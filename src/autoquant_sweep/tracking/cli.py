"""Sub-commands ``lookup``, ``apply`` and ``ui`` of ``autoquant-sweep`` (see :func:`add_tracking_commands`).

    autoquant-sweep ui [--host 127.0.0.1] [--port 5000]
    autoquant-sweep lookup autoquant-qwen3_tiny-constrained_score [--alias best-b9 | --version 3] [--uniform]
    autoquant-sweep apply autoquant-qwen3_tiny-constrained_score --out q/ [--model-path DIR] [--uniform]
        [--dtype ... --seq-len ...: the version's own run settings unless given]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoquant_sweep.layout import check_out_dir
from autoquant_sweep.tracking.registry_args import (
    add_store_args,
    add_version_args,
    tracking_uri,
    version_line,
)

log = logging.getLogger(__name__)

APPLIED_CFG_FILE = "applied_quant_cfg.json"
APPLY_INFO_FILE = "autoquant_apply.json"


def _recipe_lines(mv: Any, recipe: dict[str, Any]) -> list[str]:
    """What the registered recipe is: budget, achieved bits, measured quality, groups kept at 16 bits."""
    if not recipe:
        return ["(a version from before recipes: its config is the uniform pair x granularity config)"]
    from autoquant_sweep.tracking.registry import version_description

    kept = recipe.get("kept_16bit_groups") or []
    n = len(kept) + len(recipe.get("quantized_groups") or [])
    return [version_description(mv.tags),
            f"recipe at {recipe['budget']:g} bits: {n - len(kept)}/{n} layer groups quantized, "
            "kept at 16 bits: " + (", ".join(kept) or "none")]


def version_recipe(mv: Any, store_uri: str | None = None) -> dict[str, Any]:
    """The ``recipe`` section (budget, achieved bits, quantized / kept-at-16-bit groups) of a version's
    computing run, ``{}`` for versions registered before recipes existed."""
    if not mv.run_id or not mv.tags.get("artifact"):
        return {}
    from autoquant_sweep.tracking.registry import run_recipe_summary, store_client

    if mv.tags.get("artifact", "").startswith("mix/"):  # a mix version: its run has no report
        from autoquant_sweep.tracking.mix_run import mix_recipe_summary

        return mix_recipe_summary(store_client(store_uri), mv.run_id)
    return run_recipe_summary(store_client(store_uri), mv.run_id)


def check_out_file(out: Path, key: str = "--out") -> None:
    """``lookup --out``: a file path (new, or a file to replace) in an existing, writable folder.

    Checked before the registry lookup, so a wrong ``--out`` costs nothing and creates nothing.

    Example:
        >>> check_out_file(Path("/"))
        Traceback (most recent call last):
        ...
        autoquant_sweep.errors.UserInputError: --out: '/' is a folder; pass a file path such as '/recipe.json'
    """
    from autoquant_sweep.errors import UserInputError

    if out.is_dir():
        raise UserInputError(f"{key}: '{out}' is a folder; pass a file path such as '{out / 'recipe.json'}'")
    folder = out.parent
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"{key}: '{folder}' is a file, not a folder; pass a path in an existing folder")
    if not folder.exists():
        raise UserInputError(f"{key}: folder '{folder}' does not exist; create it first or pass a path in an "
                             "existing folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserInputError(f"{key}: folder '{folder}' is not writable; choose another --out")


def check_store_path(uri: str, key: str = "--tracking-uri", *, must_exist: bool = True) -> None:
    """A sub-command's SQLite store: an existing store file (``must_exist``: ``lookup`` / ``apply`` read
    it) or a new file in an existing folder (``ui``), never a folder; a damaged file is one line.

    Checked before MLflow opens it: MLflow would create a missing file, or a missing folder, silently.
    Other URLs (servers, other databases) pass.
    """
    from autoquant_sweep.errors import UserInputError
    from autoquant_sweep.tracking.store import check_sqlite_store, sqlite_path

    path = sqlite_path(uri)
    if path is None:
        return
    if path.is_dir():
        raise UserInputError(f"{key}: SQLite store '{path}' is a folder; point to the store file "
                             f"(e.g. sqlite:///{path / 'mlflow.db'})")
    if not path.exists():
        if must_exist:
            raise UserInputError(f"{key}: no MLflow store at '{path}'; run a sweep there first, or pass "
                                 "--tracking-uri (or cd to the folder the sweep ran in)")
        if not path.parent.is_dir():
            raise UserInputError(f"{key}: folder '{path.parent}' of SQLite store '{path}' does not exist; "
                                 "create it or point to a store in an existing folder")
    check_sqlite_store(uri, key)


def cmd_lookup(args: argparse.Namespace) -> int:
    """Print the version's summary and what its recipe keeps at 16 bits; write its recipe JSON
    (``--uniform``: the uniform effective config), byte-identical to the run's artifact."""
    from autoquant_sweep.tracking.registry import get_version

    out = Path(args.out) if args.out else None
    if out is not None:
        check_out_file(out)  # before the lookup: nothing read, nothing created
    check_store_path(tracking_uri(args))
    uniform = getattr(args, "uniform", False)
    mv, data = get_version(args.name, args.alias, args.version, tracking_uri(args), uniform=uniform)
    print(version_line(mv))
    for line in _recipe_lines(mv, version_recipe(mv, tracking_uri(args))):
        print(line)
    from autoquant_sweep.export import export_lines

    for line in export_lines(mv.tags):  # where `autoquant-sweep export` put this version's checkpoints
        print(line)
    out = out or Path(f"{args.name}-v{mv.version}.json")
    check_out_file(out)
    out.write_bytes(data)
    print(f"{'uniform effective quant config' if uniform else 'per-layer recipe (quant_cfg)'} -> {out}")
    return 0


def quantize_checkpoint(settings: Any, quant_cfg: dict, out: Path) -> Any:
    """``mtq.quantize`` a checkpoint with ``quant_cfg`` as the version's run did (kind, dtype, device,
    calibration captions, ``seq_len``, batch size: :class:`~autoquant_sweep.run_settings.RunSettings`)
    and save it to ``out``.

    Saved with ModelOpt's Hugging Face checkpointing (``mto.enable_huggingface_checkpointing()`` +
    ``save_pretrained``): ``out/`` holds the weights, ``modelopt_state.pth`` and the tokenizer; reload with
    ``mto.enable_huggingface_checkpointing(); AutoModelForCausalLM.from_pretrained(out)``.
    Returns ``(model, tokenizer)``.
    """
    import modelopt.torch.opt as mto

    from autoquant_sweep.export import quantize_with_settings

    loaded, model = quantize_with_settings(settings, quant_cfg)
    mto.enable_huggingface_checkpointing()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return model, loaded.tokenizer


def _target_checkpoint(model_path: str | None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``apply`` quantizes and its ``config.json`` (one line naming ``--model-path`` when it
    is not a checkpoint folder or its config does not parse)."""
    from autoquant_sweep.modeling import check_checkpoint_dir, read_checkpoint_config

    if model_path is None:
        from autoquant_sweep.embedded import ensure_embedded_assets

        model_path = str(ensure_embedded_assets().qwen3_tiny_dir)
    checkpoint = check_checkpoint_dir(model_path, key="--model-path")
    return checkpoint, read_checkpoint_config(checkpoint, key="--model-path")


def _check_recipe_fits(mv: Any, data: bytes, checkpoint: Path, config: dict[str, Any], uniform: bool,
                       tracking_uri: str) -> None:
    """The version's config must fit the target's modules and shapes (:mod:`autoquant_sweep.recipe_fit`):
    ``mtq.quantize`` would take it anyway and leave layers unquantized or pad blocks."""
    from autoquant_sweep.errors import UserInputError
    from autoquant_sweep.recipe import quantize_config_from_json
    from autoquant_sweep.recipe_fit import recipe_mismatch

    recipe = {} if uniform else version_recipe(mv, tracking_uri)
    decided = [*recipe.get("quantized_groups", []), *recipe.get("kept_16bit_groups", [])] or None
    problem = recipe_mismatch(quantize_config_from_json(data), config, decided)
    if problem:
        what = "uniform config" if uniform else "recipe"
        config_file = checkpoint / "config.json"
        raise UserInputError(
            f"--model-path: the {what} of {mv.name} v{mv.version} does not fit '{config_file}': {problem}; "
            "apply it to the model it was made for, or run a sweep on this checkpoint for its own recipe")


def check_out_not_source(out: Path, model_path: Path | None) -> None:
    """``apply --out`` must not be the source checkpoint or a folder holding it (``--force`` would replace
    the source as a whole)."""
    from autoquant_sweep.errors import UserInputError

    if model_path is None:
        return
    target, source = out.expanduser().resolve(), model_path.expanduser().resolve()
    if target == source or target in source.parents:
        raise UserInputError(f"--out: '{out}' is the source checkpoint --model-path '{model_path}'"
                             + ("" if target == source else " or holds it")
                             + "; pass a new folder for the quantized checkpoint")


def cmd_apply(args: argparse.Namespace) -> int:
    """Look up a config and quantize + save a checkpoint with it."""
    from autoquant_sweep.recipe import quantize_config_from_json
    from autoquant_sweep.tracking.registry import get_version

    out = Path(args.out)
    check_out_dir(out, force=getattr(args, "force", False))  # before any lookup or model load
    # a --model-path is checked before the lookup; without one, the version's own model is the target
    target = _target_checkpoint(args.model_path) if args.model_path else None
    check_out_not_source(out, Path(args.model_path) if args.model_path else None)
    check_store_path(tracking_uri(args))
    uniform = getattr(args, "uniform", False)
    mv, data = get_version(args.name, args.alias, args.version, tracking_uri(args), uniform=uniform)
    from autoquant_sweep.export import _checkpoint, held_out_loss
    from autoquant_sweep.export_cli import version_settings

    settings = version_settings(mv, tracking_uri(args), args)  # the run's own, flags override
    if target is None:
        target = _target_checkpoint(str(_checkpoint(settings)))
    _check_recipe_fits(mv, data, *target, uniform, tracking_uri(args))  # before the load
    print(version_line(mv))
    print(f"applying the {'uniform effective config' if uniform else 'per-layer recipe'}")
    print(f"run settings: {settings.model_name} ({settings.kind}, {settings.dtype}), "
          f"{settings.num_calib_samples} calibration samples x {settings.seq_len} tokens, batch "
          f"{settings.batch_size}")
    info = {"registered_model": mv.name, "version": mv.version, "tags": dict(mv.tags), "source": mv.source,
            "model_path": settings.model_path or f"embedded {settings.model_name}",
            "calibration": settings.calib_path or f"captions/{settings.size}", "settings": settings.as_dict(),
            "config": "uniform" if uniform else "recipe"}

    def write(folder: Path) -> None:  # into a staging folder, swapped in as `out` once complete
        model, tokenizer = quantize_checkpoint(settings, quantize_config_from_json(data), folder)
        info["evaluation"] = held_out_loss(model, settings, tokenizer)
        if info["evaluation"] is not None:  # the run's held-out split, batched as the run did
            print(f"held-out loss of the quantized model: {info['evaluation']['eval_loss']:.6f} "
                  f"({info['evaluation']['num_samples']} captions; the run logged eval_loss="
                  f"{mv.tags.get('eval_loss', 'n/a')})")
        (folder / APPLIED_CFG_FILE).write_bytes(data)
        (folder / APPLY_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")

    from autoquant_sweep.layout import write_dir_atomically

    write_dir_atomically(out, write)
    auto = "AutoModelForCausalLM" if settings.kind == "causal_lm" else "AutoModelForImageTextToText"
    print(f"quantized checkpoint -> {out} (reload: mto.enable_huggingface_checkpointing(); "
          f"{auto}.from_pretrained('{out}'))")
    return 0


def ui_command(tracking_uri: str, artifact_root: str | None, host: str, port: int) -> list[str]:
    """The ``mlflow server`` command line the ``ui`` sub-command runs."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if artifact_root:
        cmd += ["--default-artifact-root", Path(artifact_root).resolve().as_uri()
                if "://" not in artifact_root else artifact_root]
    return cmd


#: MLflow 3's server also starts a job runner (huey consumers, one fresh interpreter each) for GenAI jobs
#: such as trace rollups and judges; browsing sweeps uses none, so the ui leaves it off unless you set it.
JOB_EXECUTION_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def ui_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of the ``mlflow server`` the ``ui`` sub-command runs: ``environ`` with MLflow's job
    runner off unless ``environ`` sets :data:`JOB_EXECUTION_ENV` itself.

    >>> ui_environment({})[JOB_EXECUTION_ENV]
    'false'
    >>> ui_environment({JOB_EXECUTION_ENV: "true"})[JOB_EXECUTION_ENV]
    'true'
    """
    return {JOB_EXECUTION_ENV: "false", **environ}


UI_VIEW_QUERY = "workflowType=machine_learning"  # MLflow 3 opens in its GenAI view otherwise
UI_STOP_TIMEOUT_S = 10.0
DEFAULT_UI_PORT = 5000


def ui_url(host: str, port: int) -> str:
    """Where a person opens the UI: the experiments list in MLflow 3's machine-learning view."""
    return f"http://{host}:{port}/#/experiments?{UI_VIEW_QUERY}"


def stop_process_group(proc: subprocess.Popen, timeout: float = UI_STOP_TIMEOUT_S) -> int:
    """SIGTERM ``proc``'s process group (the server and its workers), SIGKILL it after ``timeout``."""
    import signal

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # workers that outlived the server: same group, gone with it
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.returncode if proc.returncode is not None else 0


def check_port_free(host: str, port: int) -> None:
    """``ui --port``: the address must be free to bind (one line instead of a server that dies later)."""
    import socket

    from autoquant_sweep.errors import UserInputError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
            sock.bind((host, port))
    except OSError as exc:
        raise UserInputError(f"--port: cannot listen on {host}:{port} ({exc.strerror}); another process "
                             "holds it (an earlier `autoquant-sweep ui`?): pass --port N or stop it") from exc


def cmd_ui(args: argparse.Namespace) -> int:
    """Run the MLflow UI against the project's store until Ctrl-C or SIGTERM, which stop the server too.

    The server runs in its own process group; SIGINT / SIGTERM (and SIGHUP) here stop that whole group
    (``mlflow server`` and its uvicorn workers), so no server is left holding the port.
    """
    import signal

    from autoquant_sweep.tracking.store import default_artifact_location

    uri = tracking_uri(args)
    check_store_path(uri, must_exist=False)  # MLflow would create a missing folder for it
    check_port_free(args.host, args.port)  # else mlflow server fails after its start-up and we exit 0
    artifacts = args.artifact_location or default_artifact_location(uri)  # where runs put them
    cmd = ui_command(uri, artifacts, args.host, args.port)
    print(f"MLflow UI on {ui_url(args.host, args.port)}  (store {uri}); Ctrl-C stops it", flush=True)
    proc = subprocess.Popen(cmd, start_new_session=True, env=ui_environment(os.environ))

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_process_group(proc)
        print("MLflow UI stopped", flush=True)
        return 0
    finally:
        if proc.poll() is None:
            stop_process_group(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_tracking_commands(sub: Any) -> None:
    """Register ``lookup``, ``apply`` and ``ui`` on the ``autoquant-sweep`` sub-parsers."""
    p = sub.add_parser("lookup", help="print a registered best recipe (what it keeps at 16 bits) and write "
                                      "its quant_cfg JSON")
    add_version_args(p)
    p.add_argument("--out", default=None, help="JSON file to write (default: <name>-v<version>.json)")
    p.add_argument("--uniform", action="store_true",
                   help="the uniform pair x granularity config instead of the per-layer recipe")
    p.set_defaults(func=cmd_lookup)

    from autoquant_sweep.export_cli import add_checkpoint_command_args

    p = sub.add_parser("apply", help="quantize a checkpoint with a registered config and save it")
    add_checkpoint_command_args(p, "folder for the quantized checkpoint (new or empty)")
    p.add_argument("--size", default=None, choices=("small", "medium", "large"),
                   help="calibrate on the embedded captions subset of this size "
                        "(default: the run's captions)")
    p.add_argument("--uniform", action="store_true",
                   help="apply the uniform pair x granularity config instead of the per-layer recipe")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("ui", help="start the MLflow UI against the project's store (127.0.0.1 unless asked)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_UI_PORT)
    add_store_args(p)
    p.add_argument("--artifact-location", default=None,
                   help="artifact root (default: mlruns/ next to a SQLite store)")
    p.set_defaults(func=cmd_ui)

    from autoquant_sweep.tracking.mix_run import add_mix_command

    add_mix_command(sub)
