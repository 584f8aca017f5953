"""Every config of the simulator's groups composes into valid settings; every experiment's sweep too."""

import dataclasses
import itertools

import pytest
import yaml
from hydra import compose, initialize_config_dir

from nfpsim.cli.simulate import run
from nfpsim.config import CONF_DIR, available, load_group
from nfpsim.sim import plan_memory
from nfpsim.sim.decoding_config import decoding_from_config
from nfpsim.sim.simulate_settings import SimulateSettings


@pytest.fixture(scope="module")
def composer():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda overrides: SimulateSettings.from_config(compose(config_name="simulate", overrides=overrides))


def test_required_configs_exist():
    assert {"ar", "speculative", "diffusion", "jacobi"} <= set(available("decoding"))
    assert {"poisson", "bursty", "closed", "trace"} <= set(available("workload"))
    assert len(available("experiment")) >= 4


@pytest.mark.parametrize("group", ["decoding", "workload"])
def test_every_config_of_a_group_composes_and_runs(composer, group):
    for name in available(group):
        model = ["model=llada_8b"] if name == "diffusion" else []  # diffusion needs a bidirectional model
        settings = composer([f"{group}={name}", "workload.num_requests=12", "output.nfp_samples=0", *model])
        result = run(settings)
        assert result.summary["num_finished"] == 12, name
    assert composer(["decoding=speculative"]).decoding.name == "speculative"


@pytest.mark.parametrize("group", ["model", "hardware"])
def test_every_model_and_gpu_validates_with_every_decoding(composer, group):
    for name in available(group):
        settings = composer([f"{group}={name}"])
        assert getattr(settings.specs, group).name == name
        model, hardware = settings.specs.model, settings.specs.hardware
        for decoding_name in available("decoding"):
            decoding = decoding_from_config(load_group("decoding", decoding_name), model, settings.eps)
            plan = plan_memory(hardware, model, decoding, dataclasses.replace(settings.engine_spec, tp=None),
                               settings.workload)
            assert plan.tp >= 1 and plan.num_blocks > 0


def sweep_points(name):
    data = yaml.safe_load((CONF_DIR / "experiment" / f"{name}.yaml").read_text())
    params = data["hydra"]["sweeper"]["params"]
    keys = list(params)
    values = [str(params[k]).split(",") for k in keys]
    return [[f"+experiment={name}"] + [f"{k}={v}" for k, v in zip(keys, point)] for point in itertools.product(*values)]


@pytest.mark.parametrize("name", available("experiment"))
def test_every_point_of_every_experiment_validates(composer, name):
    points = sweep_points(name)
    assert len(points) >= 3
    for overrides in points:
        settings = composer(overrides)
        assert settings.workload.num_requests <= 1000  # each point runs in seconds


def test_the_issue_experiments_sweep_what_they_say(composer):
    spec = composer(["+experiment=spec_width_llama3_8b_h100"])
    assert (spec.specs.model.name, spec.specs.hardware.name, spec.decoding.method) == ("llama3_8b", "h100_sxm",
                                                                                       "speculative")
    diffusion = composer(["+experiment=diffusion_block_llada_h200"])
    assert (diffusion.specs.model.name, diffusion.specs.hardware.name, diffusion.decoding.method) == (
        "llada_8b", "h200", "diffusion")
    dense, moe = (composer(["+experiment=dense_vs_moe", f"model={m}"]).specs.model for m in ("llama3_3b",
                                                                                             "qwen3_30b_a3b"))
    assert dense.param_counts()[1] == pytest.approx(moe.param_counts()[1], rel=0.1) and moe.is_moe


def test_every_cluster_config_composes_and_serves_every_request(composer):
    from nfpsim.sim.cluster import simulate_cluster

    for name in available("cluster"):
        settings = composer([f"cluster={name}", "workload.num_requests=20", "model=llama3_8b", "decoding=speculative"])
        result = simulate_cluster(settings.cluster, settings.pool_latency_models(), settings.workload, 0)
        assert result.summary["num_finished"] == 20, name
        assert result.summary["num_replicas"] == sum(p.replicas for p in settings.cluster.pools)


def test_cluster_pools_take_the_runs_settings_unless_they_name_their_own(composer):
    settings = composer(["cluster=disagg", "model=llama3_70b", "decoding=speculative", "engine.max_num_seqs=64"])
    prefill, decode = settings.cluster.pools
    assert (prefill.role, prefill.engine_spec.tp, prefill.decoding.method) == ("prefill", 4, "ar")
    assert (decode.role, decode.engine_spec.tp, decode.decoding.method) == ("decode", 8, "speculative")
    assert prefill.engine_spec.max_num_seqs == decode.engine_spec.max_num_seqs == 64
    hetero = composer(["cluster=hetero"]).cluster.pools
    assert [p.hardware.name for p in hetero] == ["h100_sxm", "h200"]


@pytest.mark.parametrize("overrides, message", [
    (["cluster=dp4", "cluster.router=random"], "cluster.router='random': allowed: round_robin"),
    (["cluster=dp4", "cluster.pools.replicas.replicas=0"], "cluster.pools.replicas.replicas=0"),
    (["cluster=disagg", "cluster.pools.prefill.role=mixed"], "either every pool is mixed"),
    (["cluster=disagg", "cluster.pools.decode.engine.tp=3"], "tp=3"),
])
def test_bad_cluster_settings_name_the_key(composer, overrides, message):
    from nfpsim.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        composer(overrides)
