"""ModelOpt's own config schema is the plan's last gate (real Hydra composition, real ModelOpt schema).

The overlay passes ``block_sizes`` keys it does not interpret through (so ModelOpt 0.47's
``four_over_six`` works); what ModelOpt's ``QuantizeConfig`` rejects is refused before any model is
loaded, in one line naming the combination and ModelOpt's reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autoquant_sweep.errors import UserInputError
from autoquant_sweep.plan import plan_run

pytestmark = pytest.mark.integration

GRANULARITIES = {
    # scale_block_sizes keys must be axis ints for ModelOpt; only its schema checks inside that mapping
    "w_bad_scale_blocks": {"*weight_quantizer": {"block_sizes": {-1: 64, "scale_block_sizes": {"x": 1}}}},
    "w_group64_copy": {"*weight_quantizer": {"block_sizes": {-1: 64}}},
}


def _user_conf(root: Path) -> Path:
    folder = root / "user_conf" / "quant_granularity"
    folder.mkdir(parents=True)
    for name, overrides in GRANULARITIES.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "quant_cfg_overrides": overrides}))
    return folder.parent


def test_what_modelopt_rejects_is_refused_at_plan_time(compose_cfg, tmp_path, embedded, monkeypatch):
    import autoquant_sweep.compute

    def no_loading(*args, **kwargs):
        raise AssertionError("plan_run loaded a model")

    monkeypatch.setattr(autoquant_sweep.compute, "load_model_and_tokenizer", no_loading)
    search = f"hydra.searchpath=[file://{_user_conf(tmp_path)}]"
    cfg = compose_cfg([search, "quant_pair=wint4_afp16", "quant_granularity=w_bad_scale_blocks"])
    with pytest.raises(UserInputError) as info:
        plan_run(cfg)
    message = str(info.value)
    assert message.startswith(
        "quant_granularity=w_bad_scale_blocks on quant_pair=wint4_afp16: ModelOpt rejects the effective "
        "format: quant_cfg rule #1 ('*weight_quantizer'): cfg.block_sizes.scale_block_sizes: "
    ), message
    assert "\n" not in message
    # the same overlay without the bad key passes the gate
    plan = plan_run(compose_cfg([search, "quant_pair=wint4_afp16", "quant_granularity=w_group64_copy"]))
    assert plan.quantization["status"] == "ok"
