"""Every config group composes and validates; bad values fail with one line naming the key."""

import dataclasses

import pytest
from hydra import compose, initialize_config_dir

from nfpsim.config import (
    CONF_DIR,
    HardwareSpec,
    KernelPreset,
    ModelSpec,
    available,
    load_group,
    load_hardware,
    load_kernels,
    load_model,
)
from nfpsim.errors import ConfigError
from nfpsim.nfp_settings import NfpSettings


@pytest.mark.parametrize("group", ["hardware", "model", "kernels"])
def test_every_config_of_a_group_composes_into_a_valid_nfp_run(group):
    names = available(group)
    assert names
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name in names:
            cfg = compose(config_name="nfp", overrides=[f"{group}={name}", "context=1024", "max_positions=256"])
            settings = NfpSettings.from_config(cfg)
            spec = getattr(settings.specs, group if group != "kernels" else "kernels")
            assert spec.name == name  # each file names itself


def test_required_configs_exist():
    assert {"h100_sxm", "h200", "a100_80g", "b200", "mi300x"} <= set(available("hardware"))
    assert {"llama3_8b", "llama3_70b", "qwen3_30b_a3b", "mixtral_8x7b", "deepseek_v2_lite",
            "llada_8b"} <= set(available("model"))
    assert {"triton", "vendor"} <= set(available("kernels"))


def test_published_parameter_counts():
    expect = {  # (total, active) from the model cards
        "llama3_70b": (70.6e9, 70.6e9),
        "mixtral_8x7b": (46.7e9, 12.9e9),
        "deepseek_v2_lite": (15.7e9, 2.6e9),  # card: 2.4B active excluding embeddings
        "llada_8b": (8.0e9, 8.0e9),
    }
    for name, (total, active) in expect.items():
        t, a = load_model(name).param_counts()
        assert t == pytest.approx(total, rel=0.02), name
        assert a == pytest.approx(active, rel=0.03), name


def test_units_convert_to_si():
    h100 = load_hardware("h100_sxm")
    assert h100.bf16_flop_per_s == 989e12
    assert h100.hbm_bytes_per_s == 3.35e12
    assert h100.l2_bytes == 50 * 2**20
    assert h100.launch_overhead_s == pytest.approx(2.5e-6)
    assert h100.stream_bytes_per_s == 3.0e12  # measured copy ceiling wins over the datasheet
    assert h100.balance_flop_per_byte() == pytest.approx(989 / 3.35)
    a100 = load_hardware("a100_80g")
    assert a100.stream_bytes_per_s == pytest.approx(0.9 * 2.039e12)  # no measurement: datasheet share


def _with(group, **changes):
    data = load_group(group, {"model": "qwen3_30b_a3b", "hardware": "h100_sxm", "kernels": "triton"}[group])
    data.update(changes)
    return data


@pytest.mark.parametrize("group, changes, key", [
    ("model", {"num_heads": 30}, "model.num_heads=30 must divide model.hidden_size"),
    ("model", {"num_kv_heads": 5}, "model.num_kv_heads=5 must divide model.num_heads"),
    ("model", {"top_k": 129}, "model.top_k=129 must be in [1, model.num_experts=128]"),
    ("model", {"hidden_size": 0}, "model.hidden_size=0"),
    ("model", {"dtype": "int3"}, "model.dtype='int3': allowed: bf16, fp16, fp8"),
    ("model", {"routing_skew": -1}, "model.routing_skew"),
    ("hardware", {"num_sms": "many"}, "hardware.num_sms='many'"),
    ("hardware", {"hbm_tb_per_s": 0}, "hardware.hbm_tb_per_s"),
    ("hardware", {"launch_overhead_us": -1}, "hardware.launch_overhead_us"),
    ("kernels", {"gemm": {"tiles": []}}, "kernels.gemm.tiles: must not be empty"),
    ("kernels", {"moe": {"block_m": 16}}, "kernels.moe.backend is missing"),
        ("kernels", {"attention": {"backend": "xformers"}}, "kernels.attention.backend='xformers': allowed: auto"),
])
def test_bad_values_name_their_key(group, changes, key):
    parse = {"model": ModelSpec, "hardware": HardwareSpec, "kernels": KernelPreset}[group].from_config
    with pytest.raises(ConfigError) as error:
        parse(_with(group, **changes))
    assert key in str(error.value)
    assert "\n" not in str(error.value)


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_model("llama3_8b").num_layers = 3


def test_gemm_tile_rules_follow_the_backend():
    """cuBLAS chooses among all its kernels for every shape; nfpsim's Triton host picks by token count."""
    cublas, triton = load_kernels("vendor").gemm, load_kernels("triton").gemm
    assert cublas.backend == "cublas" and cublas.candidates(1) == cublas.candidates(4096) == cublas.tiles
    assert triton.candidates(16) == (triton.select(16),) and triton.select(16).block_m == 16
    assert triton.select(10**6) == triton.tiles[-1]


def test_the_fast_yaml_reader_gives_what_safe_load_gives_for_every_shipped_config():
    import yaml

    from nfpsim.config import CONF_DIR, read_yaml

    paths = sorted(CONF_DIR.rglob("*.yaml"))
    assert paths
    for path in paths:
        with path.open() as f:
            assert read_yaml(path) == (yaml.safe_load(f) or {}), path
