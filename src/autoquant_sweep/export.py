"""``autoquant-sweep export``: a registered recipe as ModelOpt's unified Hugging Face checkpoint.

registry version -> its labels (:mod:`autoquant_sweep.export_labels`, before any model loads) -> the
version's run settings (:mod:`autoquant_sweep.run_settings`) -> ``mtq.quantize`` with the recipe,
calibrated as the run was -> held-out loss of that (fake-quantized, measured) model -> ModelOpt's
``export_hf_checkpoint`` (``model*.safetensors``, ``config.json`` with ``quantization_config``,
``hf_quant_config.json``) + the tokenizer -> **faithfulness**: the safetensors are reloaded and every
quantized linear's weight is rebuilt from its stored quantized values and scales
(:func:`rebuild_weight`) and compared with the fake-quantized weight of the measured model; an error
beyond the format's rounding (:func:`tolerance`) stops the export -> the labels ModelOpt wrote must be
the ones predicted -> held-out loss of the exported weights (the unquantized checkpoint with every
quantized linear's weight replaced by its rebuilt one: inputs stay 16-bit, so for W8A8 / FP8 labels
this is the weight side only) -> ``export_report.json``. The folder appears whole or not at all
(:func:`~autoquant_sweep.layout.write_dir_atomically`, as ``apply``).

The export is then logged to MLflow as an MLflow 3 **logged model** (:func:`log_export`) linked to the
version's source run, and the version gets a tag ``export.<quant_algo>`` that ``lookup`` prints.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoquant_sweep.errors import SensitivityResultError, UserInputError
from autoquant_sweep.export_labels import MIXED, DeployLabel, checkpoint_label, group_labels
from autoquant_sweep.run_settings import EMBEDDED_MODELS, RunSettings

log = logging.getLogger(__name__)

__all__ = ["EXPORT_REPORT", "ExportFaithfulnessError", "export_checkpoint", "log_export", "rebuild_weight",
           "tolerance"]

EXPORT_REPORT = "export_report.json"
EXPORT_TAG_PREFIX = "export."
#: relative rounding of the fake-quantized weight in the model's dtype (half an ulp, doubled for slack)
DTYPE_REL = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 2.0**-23}
FP8_ULP_REL = 2.0**-3  # one E4M3 ulp of a normal value (3 mantissa bits)
FP8_ULP_SUBNORMAL = 2.0**-9  # one E4M3 ulp below 2**-6, in units of the scale


class ExportFaithfulnessError(SensitivityResultError):
    """The exported checkpoint does not hold the weights of the model that was measured."""


# ----------------------------------------------------------------------------------------- loading
def _checkpoint(settings: RunSettings) -> Path:
    from autoquant_sweep.embedded import ensure_embedded_assets
    from autoquant_sweep.modeling import check_checkpoint_dir

    if settings.model_path:
        return check_checkpoint_dir(settings.model_path, key="--model-path")
    if settings.model_name not in EMBEDDED_MODELS:
        raise UserInputError(f"--model-path: model '{settings.model_name}' is not embedded; pass its folder")
    return getattr(ensure_embedded_assets(), EMBEDDED_MODELS[settings.model_name])


def calibration_batches(settings: RunSettings, tokenizer: Any) -> list[dict]:
    """The calibration batches of a run: its captions file, sample count, ``seq_len`` and batch size."""
    from autoquant_sweep import data as data_mod
    from autoquant_sweep.embedded import ensure_embedded_assets

    path = Path(settings.calib_path) if settings.calib_path else data_mod.resolve_caption_path(
        None, settings.size, None, ensure_embedded_assets().captions_dir)
    captions = data_mod.read_captions(path, settings.num_calib_samples)
    return data_mod.tokenize_batches(tokenizer, captions, settings.seq_len, settings.batch_size)


def held_out_captions(settings: RunSettings) -> tuple[str, list[str]] | None:
    """The run's held-out split (``None``: the run had none, or a flag switched it off)."""
    from autoquant_sweep import data as data_mod

    if settings.eval_source is None:
        return None
    if settings.eval_source == "embedded":
        return data_mod.resolve_eval_captions(None, None, None, None)
    path = Path(settings.eval_source)
    if not path.is_file():
        raise UserInputError(f"--eval-path: held-out captions file '{path}' does not exist")
    return str(path), data_mod.read_captions(path, 1, keep_all=True)


def quantize_with_settings(settings: RunSettings, quant_cfg: Mapping[str, Any]) -> tuple[Any, Any]:
    """Load the checkpoint as the run did (kind, dtype, device) and ``mtq.quantize`` it with
    ``quant_cfg``, calibrated on the run's batches. Returns ``(LoadedModel, quantized model)``."""
    import copy

    import modelopt.torch.quantization as mtq
    import torch

    from autoquant_sweep.modeling import load_model_and_tokenizer, resolve_device

    device = resolve_device(settings.device)
    loaded = load_model_and_tokenizer(_checkpoint(settings), kind=settings.kind, dtype=settings.dtype,
                                      device=device, trust_remote_code=settings.trust_remote_code)
    batches = calibration_batches(settings, loaded.tokenizer)

    def forward_loop(model: Any) -> None:
        with torch.no_grad():
            for batch in batches:
                model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})

    model = mtq.quantize(loaded.model, copy.deepcopy(dict(quant_cfg)), forward_loop)
    return loaded, model


def held_out_loss(model: Any, settings: RunSettings, tokenizer: Any) -> dict[str, Any] | None:
    """Loss of ``model`` on the run's held-out split, batched as the run's evaluation (None: no split)."""
    from autoquant_sweep import data as data_mod
    from autoquant_sweep.compute import eval_captions_used
    from autoquant_sweep.evaluation import eval_batch_size, eval_loss
    from autoquant_sweep.modeling import resolve_device

    split = held_out_captions(settings)
    if split is None:
        return None
    source, captions = split
    size = settings.eval_batch_size or eval_batch_size(model, settings.batch_size)
    captions = eval_captions_used(captions, size)
    batches = data_mod.tokenize_batches(tokenizer, captions, settings.seq_len, size)
    return {"eval_loss": eval_loss(model, batches, resolve_device(settings.device)),
            "num_samples": len(captions), "source": source, "batch_size": size}


# ------------------------------------------------------------------------------------ faithfulness
def quantized_linears(model: Any) -> dict[str, Any]:
    """``{module name: module}`` of every module whose weight quantizer is enabled."""
    out = {}
    for name, module in model.named_modules():
        wq = getattr(module, "weight_quantizer", None)
        if wq is not None and getattr(wq, "is_enabled", False) and hasattr(module, "weight"):
            out[name] = module
    return out


def reference_weights(model: Any) -> dict[str, Any]:
    """The fake-quantized weight (fp32 copy) of every quantized linear of the measured model."""
    import torch

    with torch.no_grad():
        return {name: m.weight_quantizer(m.weight).detach().float().cpu().clone()
                for name, m in quantized_linears(model).items()}


def _unpack_int4(packed: Any) -> Any:
    """ModelOpt's ``pack_int4_in_uint8`` inverted: ``(out/2, in)`` bytes -> ``(out, in)`` int values."""
    import torch

    p = packed.to(torch.int16).T  # (in, out/2): two output rows per byte, low nibble first
    lo, hi = p & 0x0F, (p >> 4) & 0x0F
    vals = torch.stack([lo, hi], dim=-1).reshape(p.shape[0], -1)  # (in, out)
    vals = torch.where(vals >= 8, vals - 16, vals)
    return vals.T.contiguous().float()


def rebuild_weight(tensors: Mapping[str, Any], name: str, label: DeployLabel) -> Any:
    """A linear's weight rebuilt in fp32 from its stored quantized values and scales, as a serving
    engine dequantizes them (``<name>.weight``, ``.weight_scale``, ``.weight_scale_2``)."""
    import torch

    q = tensors[f"{name}.weight"]
    scale = tensors[f"{name}.weight_scale"].float()
    algo = label.quant_algo
    if algo == "FP8":
        return q.float() * scale
    if algo in ("FP8_PER_CHANNEL_PER_TOKEN", "W8A8_SQ_PER_CHANNEL", "W8A16"):
        return q.float() * scale.reshape(-1, 1)
    if algo in ("W4A16_AWQ", "W4A8_AWQ"):
        ints = _unpack_int4(q)
        w = ints * scale.repeat_interleave(int(label.group_size), dim=1)[:, : ints.shape[1]]
        if algo == "W4A8_AWQ":  # the second stage: FP8 per tensor with weight_scale_2
            s2 = tensors[f"{name}.weight_scale_2"].float()
            w = (w / s2).to(torch.float8_e4m3fn).float() * s2
        return w
    raise UserInputError(f"export: no rebuild rule for label {algo} ({name})")


def tolerance(label: DeployLabel, reference: Any, dtype: str, tensors: Mapping[str, Any], name: str) -> Any:
    """Per-element bound of |rebuilt - fake-quantized| that is rounding, not a different weight.

    The fake quantizer works in the model's dtype (bf16: the weight / scale ratio is rounded before the
    cast), the export in fp32, so a value on a rounding boundary can land one step apart: the bound is
    the dtype rounding of the value (``DTYPE_REL``) plus one quantization step (integer formats: the
    stored scale) or one E4M3 ulp (FP8: 2**-3 of the value, 2**-9 of the scale for subnormals). A
    weight stored under the wrong scale layout is off by many steps.
    """
    rel = DTYPE_REL.get(dtype, 2.0**-8) * reference.abs()
    scale = tensors[f"{name}.weight_scale"].float()
    algo = label.quant_algo
    if algo in ("W8A8_SQ_PER_CHANNEL", "W8A16"):
        return rel + scale.reshape(-1, 1).expand_as(reference)
    if algo in ("W4A16_AWQ", "W4A8_AWQ"):
        step = scale.repeat_interleave(int(label.group_size), dim=1)[:, : reference.shape[1]]
        if algo == "W4A8_AWQ":  # plus the FP8 second stage
            s2 = tensors[f"{name}.weight_scale_2"].float()
            step = step + FP8_ULP_REL * reference.abs() + FP8_ULP_SUBNORMAL * s2
        return rel + step
    fp8_scale = scale.reshape(-1, 1) if scale.dim() == 1 else scale
    return rel + FP8_ULP_REL * reference.abs() + FP8_ULP_SUBNORMAL * fp8_scale


def _load_safetensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def faithfulness(folder: Path, references: Mapping[str, Any], labels: Mapping[str, DeployLabel],
                 dtype: str) -> dict[str, dict[str, Any]]:
    """Per quantized linear: max |rebuilt - fake-quantized|, relative to the weight's max, in units of
    the tolerance (``> 1``: beyond rounding), and the elements beyond it."""
    tensors = _load_safetensors(folder)
    out: dict[str, dict[str, Any]] = {}
    for name, ref in references.items():
        label = labels.get(name) or labels.get("*")
        if label is None:
            raise ExportFaithfulnessError(f"export: '{name}' is quantized in the model but its layer group "
                                          "has no label in the recipe")
        if f"{name}.weight_scale" not in tensors:
            raise ExportFaithfulnessError(f"export: '{name}' is quantized in the measured model but the "
                                          f"checkpoint stores no '{name}.weight_scale'")
        rebuilt = rebuild_weight(tensors, name, label)
        if tuple(rebuilt.shape) != tuple(ref.shape):
            raise ExportFaithfulnessError(f"export: '{name}' rebuilt weight has shape "
                                          f"{tuple(rebuilt.shape)}, the model's {tuple(ref.shape)}")
        err = (rebuilt - ref).abs()
        tol = tolerance(label, ref, dtype, tensors, name)
        ratio = err / tol.clamp_min(1e-30)
        dtype_only = DTYPE_REL.get(dtype, 2.0**-8) * ref.abs()
        out[name] = {
            "quant_algo": label.quant_algo,
            "max_abs_error": float(err.max()),
            "max_rel_error": float(err.max() / ref.abs().max().clamp_min(1e-30)),
            "max_error_over_tolerance": float(ratio.max()),
            "elements_beyond_tolerance": int((ratio > 1).sum()),
            # a value on a rounding boundary that the export rounded to the neighbouring step
            "elements_one_step_apart": int(((err > dtype_only) & (ratio <= 1)).sum()),
            "elements": int(ref.numel()),
        }
    return out


def check_written_labels(folder: Path, labels: Mapping[str, DeployLabel]) -> dict[str, Any]:
    """``hf_quant_config.json`` must carry the predicted label(s) (and group size); returns its
    ``quantization`` section."""
    hf = json.loads((folder / "hf_quant_config.json").read_text())["quantization"]
    expected = checkpoint_label(labels)
    if hf.get("quant_algo") != expected:
        raise ExportFaithfulnessError(f"export: ModelOpt labelled the checkpoint {hf.get('quant_algo')}, the "
                                      f"recipe's groups predict {expected}")
    if expected == MIXED:
        layers = hf.get("quantized_layers") or {}
        for group, label in labels.items():
            got = (layers.get(group) or {}).get("quant_algo")
            if got != label.quant_algo:
                raise ExportFaithfulnessError(f"export: ModelOpt labelled '{group}' {got}, predicted "
                                              f"{label.quant_algo}")
    else:
        group = next(iter(labels.values())).group_size
        if group is not None and "group_size" in hf and int(hf["group_size"]) != group:
            raise ExportFaithfulnessError(f"export: ModelOpt wrote group_size {hf['group_size']}, the "
                                          f"recipe's groups are {group}")
    return hf


def exported_weights_loss(settings: RunSettings, tensors_dir: Path, references: Mapping[str, Any],
                          labels: Mapping[str, DeployLabel], tokenizer: Any) -> dict[str, Any] | None:
    """Held-out loss of the exported weights: a fresh unquantized load of the checkpoint with every
    quantized linear's weight replaced by the one rebuilt from the safetensors (inputs stay 16-bit)."""
    import torch

    from autoquant_sweep.modeling import load_model_and_tokenizer, resolve_device

    if held_out_captions(settings) is None:
        return None
    tensors = _load_safetensors(tensors_dir)
    loaded = load_model_and_tokenizer(_checkpoint(settings), kind=settings.kind, dtype=settings.dtype,
                                      device=resolve_device(settings.device))
    with torch.no_grad():
        for name in references:
            module = loaded.model.get_submodule(name)
            w = rebuild_weight(tensors, name, labels.get(name) or labels["*"])
            module.weight.copy_(w.to(module.weight.dtype))
    result = held_out_loss(loaded.model, settings, tokenizer)
    del loaded
    return result


# ------------------------------------------------------------------------------------------ export
def _folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def export_checkpoint(quant_cfg: Mapping[str, Any], settings: RunSettings, out: Path, *,
                      info: Mapping[str, Any] | None = None, force: bool = False) -> dict[str, Any]:
    """Quantize with ``quant_cfg`` as the run did and write the unified checkpoint to ``out`` (atomically).

    Labels are checked before any model loads; a faithfulness error or a label ModelOpt wrote
    differently leaves no folder. Returns the export report (also ``out/export_report.json``).
    """
    from autoquant_sweep.layout import check_out_dir, write_dir_atomically

    check_out_dir(out, force=force)
    labels = group_labels(quant_cfg)  # before any model loads
    report: dict[str, Any] = {"source": dict(info or {}), "settings": settings.as_dict(),
                              "quant_algo": checkpoint_label(labels),
                              "groups": {g: lab.as_dict() for g, lab in labels.items()}}

    def write(folder: Path) -> None:
        import torch
        from modelopt.torch.export import export_hf_checkpoint

        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        loaded, model = quantize_with_settings(settings, quant_cfg)
        seconds["load_and_quantize"] = time.perf_counter() - t0
        references = reference_weights(model)
        t0 = time.perf_counter()
        report["evaluation_fake_quant"] = held_out_loss(model, settings, loaded.tokenizer)
        seconds["evaluation_fake_quant"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            export_hf_checkpoint(model, export_dir=folder)
        seconds["export_hf_checkpoint"] = time.perf_counter() - t0
        loaded.tokenizer.save_pretrained(folder)
        report["hf_quant_config"] = check_written_labels(folder, labels)
        t0 = time.perf_counter()
        layers = faithfulness(folder, references, labels, settings.dtype)
        seconds["faithfulness"] = time.perf_counter() - t0
        report["faithfulness"] = {
            "layers_checked": len(layers),
            "max_abs_error": max(v["max_abs_error"] for v in layers.values()),
            "max_rel_error": max(v["max_rel_error"] for v in layers.values()),
            "max_error_over_tolerance": max(v["max_error_over_tolerance"] for v in layers.values()),
            "rule": "rebuilt = stored quantized values x scales (fp32) vs the measured model's "
                    "fake-quantized weight; tolerance: dtype rounding of the value plus one quantization "
                    "step (integer) or one E4M3 ulp (FP8)",
            "per_layer": layers,
        }
        bad = {k: v for k, v in layers.items() if v["elements_beyond_tolerance"]}
        if bad:
            name, worst = max(bad.items(), key=lambda kv: kv[1]["max_error_over_tolerance"])
            raise ExportFaithfulnessError(
                f"export: {len(bad)} layers hold other weights than the measured model: '{name}' "
                f"({worst['quant_algo']}) max error {worst['max_abs_error']:.3e} is "
                f"{worst['max_error_over_tolerance']:.1f}x its rounding tolerance; nothing written")
        del model, loaded
        t0 = time.perf_counter()
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        report["evaluation_exported_weights"] = exported_weights_loss(settings, folder, references, labels,
                                                                      tokenizer)
        seconds["evaluation_exported_weights"] = time.perf_counter() - t0
        fq, ex = report["evaluation_fake_quant"], report["evaluation_exported_weights"]
        if fq and ex:
            report["evaluation_difference"] = ex["eval_loss"] - fq["eval_loss"]
        else:
            report["evaluation_note"] = "no held-out split for this run: nothing evaluated"
        report["seconds"] = seconds
        report["bytes"] = {"safetensors": _folder_bytes(folder, "*.safetensors"),
                           "total": _folder_bytes(folder)}
        (folder / EXPORT_REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    write_dir_atomically(out, write)
    report["bytes"]["total"] = _folder_bytes(out)
    return report


# ------------------------------------------------------------------------------------------ MLflow
def log_export(client: Any, mv: Any, out: Path, report: Mapping[str, Any]) -> dict[str, str]:
    """Log ``out`` as an MLflow 3 logged model linked to the version's source run; tag the version.

    A logged model rather than an artifact of the source run: the run's artifact tree is the study's
    record (the registry version's ``source`` points into it) and stays as the study wrote it; a
    checkpoint has its own id, READY / FAILED status, tags and params (searchable with
    ``search_logged_models``), and can be deleted without touching the run.
    """
    from mlflow.entities import LoggedModelStatus

    run = client.get_run(mv.run_id)
    algo = str(report["quant_algo"])
    tags = {"registered_name": mv.name, "registered_version": str(mv.version), "quant_algo": algo,
            "source_run_id": mv.run_id, "local_path": str(out.resolve()),
            "faithfulness_max_error_over_tolerance": repr(report["faithfulness"]["max_error_over_tolerance"])}
    params = {k: str(v) for k, v in report["settings"].items()}
    model = client.create_logged_model(experiment_id=run.info.experiment_id,
                                       name=f"{mv.name}-v{mv.version}-{algo}", source_run_id=mv.run_id,
                                       tags=tags, params=params, model_type="modelopt-unified-hf-checkpoint")
    try:
        client.log_model_artifacts(model.model_id, str(out))
    except Exception:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    model = client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    where = {"model_id": model.model_id, "artifact_location": model.artifact_location,
             "local_path": str(out.resolve()), "quant_algo": algo}
    client.set_model_version_tag(mv.name, mv.version, f"{EXPORT_TAG_PREFIX}{algo}", json.dumps(where))
    return where


def export_lines(tags: Mapping[str, str]) -> list[str]:
    """``lookup``'s lines for a version's exports (tags ``export.<quant_algo>``).

    Example:
        >>> export_lines({"export.FP8": '{"model_id": "m-1", "artifact_location": "file:///a", '
        ...               '"local_path": "/q", "quant_algo": "FP8"}'})
        ['export FP8: logged model m-1 at file:///a (written to /q)']
    """
    lines = []
    for key in sorted(k for k in tags if k.startswith(EXPORT_TAG_PREFIX)):
        try:
            where = json.loads(tags[key])
        except json.JSONDecodeError:
            continue
        lines.append(f"export {where.get('quant_algo')}: logged model {where.get('model_id')} at "
                     f"{where.get('artifact_location')} (written to {where.get('local_path')})")
    return lines
