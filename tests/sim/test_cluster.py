"""Many replicas: conservation of requests and tokens, routers, disaggregated prefill/decode, KV transfer."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfpsim.config import load_hardware, load_model
from nfpsim.errors import ConfigError
from nfpsim.sim import (Acceptance, Autoregressive, EngineSpec, LengthSpec, Speculative, WorkloadSpec,
                        simulate)
from nfpsim.sim.cluster import ClusterSpec, PoolSpec, simulate_cluster
from nfpsim.sim.router import ROUTERS
from nfpsim.sim.transfer import KvLink, exposed_transfer_s

from .stubs import Constant, Linear, specs

MODEL, H100 = load_model("llama3_8b"), load_hardware("h100_sxm")


def pool(name="p", role="mixed", replicas=2, decoding=Autoregressive(), hardware=H100, **engine):
    return PoolSpec(name, role, replicas, hardware, MODEL, decoding, EngineSpec(**{"tp": 1, **engine}))


def workload(n=120, rate=40.0, arrival="poisson"):
    return WorkloadSpec(arrival, n, rate_per_s=rate, num_clients=8, prompt=LengthSpec("uniform", 16, 300),
                        output=LengthSpec("uniform", 1, 60))


def run(cluster, n=120, seed=0, latency=None, **kw):
    latency = latency or Linear(0.003, 1e-5)
    return simulate_cluster(cluster, {p.name: latency for p in cluster.pools}, workload(n, **kw), seed)


def conserved(result, n):
    s = result.summary
    assert s["num_requests"] == s["num_arrived"] == s["num_finished"] == n and s["num_unfinished"] == 0
    pools = result.pools.values()
    produced = sum(p["committed_tokens"] + p["emitted_tokens"] for p in pools)
    assert produced == s["output_tokens"]


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(ROUTERS), st.integers(1, 4), st.sampled_from(["poisson", "closed"]), st.integers(0, 99))
def test_a_mixed_cluster_finishes_every_request_with_exactly_its_tokens(router, replicas, arrival, seed):
    cluster = ClusterSpec((pool(replicas=replicas, max_num_seqs=8, kv_capacity_tokens=4000),), router=router)
    result = run(cluster, seed=seed, arrival=arrival)
    conserved(result, 120)
    assert result.summary["output_tokens"] == sum(workload_outputs(seed, arrival))


def workload_outputs(seed, arrival):
    import numpy as np

    from nfpsim.sim.workload import generate

    return generate(workload(arrival=arrival), np.random.default_rng(seed)).output_tokens.tolist()


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(ROUTERS), st.integers(1, 3), st.integers(1, 3), st.integers(0, 99))
def test_a_disaggregated_cluster_conserves_requests_and_tokens(router, prefill, decode, seed):
    spec = Speculative(width=3, acceptance=Acceptance((0.6,)))
    cluster = ClusterSpec((pool("pre", "prefill", prefill, max_num_seqs=4),
                           pool("dec", "decode", decode, decoding=spec, max_num_seqs=16, kv_capacity_tokens=3000)),
                          router=router)
    result = run(cluster, seed=seed)
    conserved(result, 120)
    pre, dec = result.pools["pre"], result.pools["dec"]
    assert pre["committed_tokens"] == 0 and dec["emitted_tokens"] == 0  # roles kept apart
    assert pre["emitted_tokens"] == 120  # every first token comes from a prefill engine
    assert pre["kv_transfers"] == sum(1 for o in workload_outputs(seed, "poisson") if o > 1)


def test_one_mixed_replica_is_the_single_replica_simulator():
    w = workload(80)
    single = simulate(specs(), Linear(0.003, 1e-5), w, Autoregressive(), EngineSpec(tp=1), 4)
    cluster = simulate_cluster(ClusterSpec((pool(replicas=1),)), {"p": Linear(0.003, 1e-5)}, w, 4)
    for key in ("num_finished", "output_tokens", "num_forwards", "sim_time_s", "preemptions"):
        assert cluster.summary[key] == single.summary[key], key
    assert cluster.summary["ttft_s"]["mean"] == pytest.approx(single.summary["ttft_s"]["mean"], rel=1e-12)


def test_round_robin_spreads_requests_evenly():
    cluster = ClusterSpec((pool(replicas=4),), router="round_robin")
    result = run(cluster, n=100, latency=Constant(0.001))
    assert result.pools["p"]["emitted_tokens"] == 100
    # four replicas at a quarter of the load each: more idle time than one would have
    assert result.summary["gpu_busy_fraction"] < run(ClusterSpec((pool(replicas=1),)), n=100,
                                                      latency=Constant(0.001)).summary["gpu_busy_fraction"]


def test_kv_transfer_overlaps_layer_by_layer():
    link = KvLink(bytes_per_s=1e9, latency_s=0.0)
    # 4 layers, 4 MB: 1 ms per layer on the link
    assert exposed_transfer_s(4e6, link, 4, prefill_forward_s=0.008) == pytest.approx(0.001)  # hidden but the last
    assert exposed_transfer_s(4e6, link, 4, prefill_forward_s=0.002) == pytest.approx(0.001 + 3 * 0.0005)
    assert exposed_transfer_s(4e6, KvLink(1e9, 5e-6), 4, 0.0) == pytest.approx(0.004 + 5e-6)  # no overlap


def test_a_slow_link_delays_the_decode_side():
    def cluster(gb_per_s):
        return ClusterSpec((pool("pre", "prefill", 1), pool("dec", "decode", 1)), kv_link_gb_per_s=gb_per_s)

    fast, slow = run(cluster(400.0)), run(cluster(0.05))
    assert slow.pools["pre"]["kv_transfer_s_mean"] > 100 * fast.pools["pre"]["kv_transfer_s_mean"]
    assert slow.summary["e2e_s"]["mean"] > fast.summary["e2e_s"]["mean"]
    assert slow.summary["ttft_s"]["mean"] == pytest.approx(fast.summary["ttft_s"]["mean"])  # first token: prefill


def test_a_cluster_refuses_mixed_and_disaggregated_pools_together():
    with pytest.raises(ConfigError, match="either every pool is mixed"):
        run(ClusterSpec((pool("a", "mixed"), pool("b", "decode"))))


def test_heterogeneous_pools_each_use_their_own_hardware_and_decoding():
    h200 = load_hardware("h200")
    spec = Speculative(width=4, acceptance=Acceptance((0.8,)))
    cluster = ClusterSpec((pool("h100", replicas=1), pool("h200", replicas=1, hardware=h200, decoding=spec)),
                          router="round_robin")
    result = run(cluster)
    conserved(result, 120)
    assert result.pools["h200"]["tokens_per_forward_mean"] > 1.5 > result.pools["h100"]["tokens_per_forward_mean"]
    assert result.kv["h200"].num_blocks > result.kv["h100"].num_blocks  # more memory
    assert dataclasses.replace(cluster, router="least_tokens") != cluster


def pipelined(pp=4, free_sends=True):
    hardware = dataclasses.replace(H100, collective_latency_s=0.0, interconnect_bytes_per_s=1e30) if free_sends \
        else H100
    return PoolSpec("pp", "mixed", 1, hardware, MODEL, Autoregressive(),
                    EngineSpec(tp=1, pp=pp, context_bucket_tokens=1))


def test_a_pipeline_with_one_micro_batch_in_flight_idles_all_but_one_stage():
    # pp = 4, one request alone: a constant 8 ms forward is four 2 ms stage passes in a row, so each
    # stage works 2 ms of every 8: bubble 3/4. Activation sends add their time between stages.
    rows = [(0.0, 4, 50)]
    result = simulate_cluster(ClusterSpec((pipelined(),)), {"pp": Constant(0.008)}, trace_workload(rows), 0)
    assert result.summary["sim_time_s"] == pytest.approx(50 * 0.008)
    assert result.pools["pp"]["bubble_fraction_per_stage"] == pytest.approx([0.75] * 4)
    with_sends = simulate_cluster(ClusterSpec((pipelined(free_sends=False),)), {"pp": Constant(0.008)},
                                  trace_workload(rows), 0)
    # 3 hand-offs per forward: the prefill's 4 tokens once, then one token per decode forward
    expected = 50 * 0.008 + 3 * (send_s(pipelined(free_sends=False), 4) + 49 * send_s(pipelined(free_sends=False), 1))
    assert with_sends.summary["sim_time_s"] == pytest.approx(expected)


def test_a_full_pipeline_leaves_only_the_fill_and_drain_bubbles():
    # 4 requests arrive together, one per virtual engine, each runs k forwards of 8 ms (prefill + k-1
    # decode steps). With sends ignored, stage s starts at s*2 ms and every stage then works back to back:
    # span = (4k + 3) * 2 ms, each stage busy 4k * 2 ms, bubble (4 - 1) / (4k + 3) (GPipe's (p-1)/(m+p-1)).
    k = 10
    rows = [(0.0, 4, k)] * 4
    result = simulate_cluster(ClusterSpec((pipelined(),), router="round_robin"), {"pp": Constant(0.008)},
                              trace_workload(rows), 0)
    assert result.summary["sim_time_s"] == pytest.approx((4 * k + 3) * 0.002)
    for fraction in result.pools["pp"]["bubble_fraction_per_stage"]:
        assert fraction == pytest.approx(3 / (4 * k + 3))
    assert result.pools["pp"]["micro_batches"] == 4 * k


def trace_workload(rows):
    from .stubs import trace

    return trace(rows)


def send_s(spec, tokens):
    from nfpsim.sim.pipeline import stage_send_s

    return stage_send_s(spec.model, spec.hardware, tokens)


def test_a_prefix_aware_router_keeps_a_system_prompt_on_one_replica():
    from nfpsim.sim.workload import SharingSpec

    w = WorkloadSpec("poisson", 200, rate_per_s=20.0, prompt=LengthSpec("fixed", 40, 40),
                     output=LengthSpec("fixed", 8, 8), sharing=SharingSpec("system_prompt", 4, prefix_tokens=256))

    def hit_rate(router):
        cluster = ClusterSpec((pool(replicas=4, prefix_caching=True),), router=router)
        return simulate_cluster(cluster, {"p": Linear(0.003, 1e-5)}, w, 0).summary["prefix_hit_rate"]

    # round robin computes each system prompt once per replica (16 misses); prefix-aware about once each
    assert hit_rate("prefix") > hit_rate("round_robin")
    assert hit_rate("prefix") >= (200 - 4 - 4) / 200
