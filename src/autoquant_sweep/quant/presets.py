"""The ModelOpt presets the project uses, stored as data, so resolving them imports no ModelOpt.

Importing ``modelopt.torch.quantization`` costs 8-12 s (it imports all its plugins). The presets
named by ``conf/quant_pair/*.yaml`` and the sources of the project compositions are stored in
:mod:`autoquant_sweep.quant.preset_data` exactly as ModelOpt gives them (tuples and integer
``block_sizes`` keys included); :func:`autoquant_sweep.quant.formats.resolve_format` uses them
while the installed ModelOpt is the version they were read from, and imports ModelOpt for any other
preset name (or another version). An integration test checks the data against ModelOpt.

Regenerate after changing a ``quant_pair`` or moving the ModelOpt pin::

    python -m autoquant_sweep.quant.presets          # rewrite preset_data.py from the installed ModelOpt
    python -m autoquant_sweep.quant.presets --check  # exit 1 when preset_data.py is stale
"""

from __future__ import annotations

import argparse
import contextlib
import pprint
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

__all__ = [
    "DATA_FILE",
    "installed_modelopt_version",
    "modelopt_presets",
    "project_preset_names",
    "render_preset_module",
    "stored_presets",
]

DATA_FILE = Path(__file__).with_name("preset_data.py")


def installed_modelopt_version() -> str | None:
    """``nvidia-modelopt``'s version from the package metadata (no import); None if not installed."""
    try:
        return metadata.version("nvidia-modelopt")
    except metadata.PackageNotFoundError:
        return None


def stored_presets() -> dict[str, dict]:
    """The stored presets, or ``{}`` when the installed ModelOpt is not the version they came from.

    The returned dicts are shared: deep-copy before changing them (``resolve_format`` does).
    """
    from autoquant_sweep.quant import preset_data

    if installed_modelopt_version() != preset_data.MODELOPT_VERSION:
        return {}
    return preset_data.PRESETS


def project_preset_names(conf_dir: Path | None = None) -> list[str]:
    """ModelOpt presets the project uses: ``conf/quant_pair`` format names and composition sources."""
    from autoquant_sweep.config.groups import load_group
    from autoquant_sweep.quant.compositions import PROJECT_COMPOSITIONS

    names = {str(pair["format_name"]) for pair in load_group("quant_pair", conf_dir)}
    for comp in PROJECT_COMPOSITIONS.values():
        names.update(n for n in (comp.weight_from, comp.input_from) if n is not None)
    return sorted(names - set(PROJECT_COMPOSITIONS))


def modelopt_presets(names: Iterable[str]) -> dict[str, dict]:
    """The named presets as the installed ModelOpt defines them (imports ModelOpt: seconds)."""
    with contextlib.redirect_stdout(sys.stderr):  # import-time chatter of optional plugins
        import modelopt.torch.quantization.config as mtq_config
    out = {}
    for name in names:
        value = getattr(mtq_config, name, None)
        if not (isinstance(value, dict) and "quant_cfg" in value):
            raise SystemExit(f"{name}: not a preset of ModelOpt {installed_modelopt_version()}")
        out[name] = value
    return out


def render_preset_module(presets: dict[str, dict], version: str) -> str:
    """The source of ``preset_data.py`` (deterministic: names sorted, ModelOpt's key order kept)."""
    entries = "".join(
        f"\nPRESETS[{name!r}] = {pprint.pformat(value, width=100, sort_dicts=False)}\n"
        for name, value in sorted(presets.items())
    )
    return (
        '"""ModelOpt presets used by the project, as ModelOpt defines them (generated; do not edit).\n'
        "\n"
        "Regenerate with ``python -m autoquant_sweep.quant.presets`` (see that module).\n"
        '"""\n'
        "\n"
        f"MODELOPT_VERSION = {version!r}\n"
        "\n"
        "PRESETS: dict[str, dict] = {}\n"
        f"{entries}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoquant_sweep.quant.presets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if preset_data.py is stale")
    args = parser.parse_args(argv)
    version = installed_modelopt_version()
    if version is None:
        raise SystemExit("nvidia-modelopt is not installed")
    text = render_preset_module(modelopt_presets(project_preset_names()), version)
    if args.check:
        stale = DATA_FILE.read_text(encoding="utf-8") != text
        print(f"{DATA_FILE}: {'stale, regenerate it' if stale else 'up to date'}")
        return 1 if stale else 0
    DATA_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {DATA_FILE} (ModelOpt {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
