"""What a validation plans: grids, curves, skips, settings from the shipped config, the time estimate."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nfpsim.config import CONF_DIR, load_hardware, load_kernels, load_model
from nfpsim.errors import ConfigError
from nfpsim.nfp import position_grid
from nfpsim.validation.plan import ALWAYS_KEPT, ValidationSettings, estimate_seconds, plan_curves, thin


def compose_validate(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="validate", overrides=list(overrides))


def test_thin_keeps_the_dense_start_power_of_two_steps_and_the_end():
    grid = position_grid(load_kernels("triton"), load_model("llama3_8b"), 1, 512)
    assert len(grid) > 28
    thinned = thin(grid, 28)
    assert set(thinned) <= set(grid) and len(thinned) <= 28
    assert thinned[:ALWAYS_KEPT] == tuple(range(1, ALWAYS_KEPT + 1))
    for p in (16, 32, 64, 128, 256):  # both sides of every 16-row multiple that is a power of two
        assert {p, p + 1} <= set(thinned)
    assert thinned[-1] == 512
    extra = [m for m in thinned if m > ALWAYS_KEPT and m & (m - 1) and (m - 1) & (m - 2)]
    assert all(m + 1 in thinned or m - 1 in thinned for m in extra)  # other boundaries as pairs
    assert thin(grid, None) == grid and thin((1, 2, 3), 28) == (1, 2, 3)


def test_default_config_plans_the_issue_curves_and_skips_mla():
    settings = ValidationSettings.from_config(compose_validate(["models=[llama3_8b,qwen3_30b_a3b,deepseek_v2_lite]"]))
    curves, skipped = plan_curves(settings)
    assert {(c.model.name, c.implementation, c.batch, c.context) for c in curves} == {
        (m, i, b, c) for m in ("llama3_8b", "qwen3_30b_a3b") for i in ("triton", "vendor")
        for b in (1, 8) for c in (4096, 32768)}
    assert [s["model"] for s in skipped] == ["deepseek_v2_lite"] and "latent" in skipped[0]["reason"]
    llama = next(c for c in curves if c.model.name == "llama3_8b" and c.context == 32768)
    assert (llama.model.num_layers, llama.full_num_layers) == (2, 32)
    assert llama.beyond_max_context and llama.model.max_context >= 32768 + 256
    assert all(c.positions[0] == 1 and c.positions[-1] == 256 for c in curves)
    keys = [c.key[:3] for c in curves]  # model, then batch/context, then implementation: caches made once
    assert keys.index(("qwen3_30b_a3b", "triton", 1)) > keys.index(("llama3_8b", "vendor", 8))
    seconds = estimate_seconds(curves, settings.hardware, settings.timing, settings.profile_positions)
    # an upper bound: the eager vendor forward launches ~40 kernels a layer (each a host call while the
    # graph is captured); scripts/device_run.sh gives validation what calibration leaves of its call and
    # lists the curves it could not run
    assert settings.hardware.name == "h200" and 30 < seconds < 300
    slower = estimate_seconds(curves, load_hardware("a100_80g"), settings.timing, settings.profile_positions)
    assert slower > seconds


@pytest.mark.parametrize("override, message", [
    ("batches=[0]", "batches=0: must be >= 1"),
    ("eps=[0]", "eps=0.0: must be in (0, 10]"),
    ("models=[llama9]", "unknown model 'llama9'"),
    ("max_points=3", "max_points=3: must be >= 19"),
    ("latency=fast", "latency='fast': allowed: auto, analytic, calibrated"),
])
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        ValidationSettings.from_config(compose_validate([override]))
    assert message in str(error.value)


def test_config_documents_every_key():
    text = (Path(CONF_DIR) / "validate.yaml").read_text()
    for key in ("num_layers", "max_points", "latency", "calibration_dir", "time_budget_s", "measured"):
        assert f"\n{key}:" in text
