"""Result cache: a FINISHED run with the same run fingerprint answers a new run without AutoQuant."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from autoquant_sweep.report import MANIFEST, RECIPE_DIR, REPORT_FILES

log = logging.getLogger(__name__)


def find_cached_run(client: Any, experiment_id: str, fingerprint: str) -> Any | None:
    """The newest FINISHED run of the experiment tagged ``run_fingerprint == fingerprint``, else None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.run_fingerprint = '{fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def restore_report(client: Any, source_run_id: str, destination: Path) -> dict[str, Any]:
    """Download the source run's report artifacts into ``destination`` (atomically); return its manifest."""
    from autoquant_sweep.layout import write_dir_atomically
    from autoquant_sweep.tracking.run_logging import REPORT_ARTIFACT_DIR

    with tempfile.TemporaryDirectory(prefix="aqs-cache-") as tmp:
        local = Path(client.download_artifacts(source_run_id, REPORT_ARTIFACT_DIR, tmp))
        if not (local / MANIFEST).is_file():
            raise FileNotFoundError(f"cached run {source_run_id} has no {REPORT_ARTIFACT_DIR}/{MANIFEST}")
        manifest = json.loads((local / MANIFEST).read_text())
        recipe = None
        if manifest.get("recipe"):  # recipe/quant_cfg.json and the budget curve travel with the report
            recipe = Path(client.download_artifacts(source_run_id, RECIPE_DIR, str(Path(tmp) / "r")))

        def copy(folder: Path) -> None:
            for name in REPORT_FILES:
                if (local / name).is_file():
                    shutil.copy2(local / name, folder / name)
            if recipe is not None and recipe.is_dir():
                shutil.copytree(recipe, folder / RECIPE_DIR)

        write_dir_atomically(destination, copy)
    return manifest
