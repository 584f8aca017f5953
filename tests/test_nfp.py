import pytest

from nfpsim.config import load_hardware, load_kernels, load_model
from nfpsim.latency import AnalyticLatencyModel
from nfpsim.nfp import NfpPoint, analyze, first_crossing, position_grid


def test_first_crossing_reports_later_dips_without_counting_them():
    #   M:        1     2     4     8     16
    #   t/t(1):   1.0  1.05  1.2   1.0   1.3   -> budget 1.1: NFP 2, crossing 4, back under at 8
    point = first_crossing([1, 2, 4, 8, 16], [1.0, 1.05, 1.2, 1.0, 1.3], eps=0.1)
    assert point == NfpPoint(nfp=2, crossing=4, later_within=(8,))


def test_never_crossing_saturates_at_the_top_of_the_grid():
    assert first_crossing([1, 2, 4], [1.0, 1.0, 1.09], eps=0.1) == NfpPoint(4, None)


def test_crossing_at_the_second_point_gives_nfp_one():
    assert first_crossing([1, 2], [1.0, 2.0], eps=0.5).nfp == 1


def test_refinement_bisects_between_grid_points():
    # t(M) = 1 + 0.01 M: t(1) = 1.01, budget 1.111; t(11) = 1.11 fits, t(12) = 1.12 does not
    def latency(m):
        return 1 + 0.01 * m

    grid = [1, 2, 4, 8, 16, 32]
    point = first_crossing(grid, [latency(m) for m in grid], eps=0.1, refine=latency)
    assert (point.nfp, point.crossing) == (11, 12)


def test_grid_must_start_at_one():
    with pytest.raises(ValueError):
        first_crossing([2, 4], [1.0, 1.0], eps=0.1)


@pytest.mark.parametrize("batch", [1, 3, 8, 64])
@pytest.mark.parametrize("kernels", ["triton", "vendor"])
def test_the_grid_straddles_every_tile_boundary_it_can(batch, kernels):
    preset, model = load_kernels(kernels), load_model("llama3_8b")
    grid = position_grid(preset, model, batch, 512)
    assert grid[0] == 1 and grid[-1] == 512 and list(grid) == sorted(set(grid))
    assert set(range(1, 17)) <= set(grid)
    tile = preset.gemm.tiles[0].block_m
    for j in (1, 2, 3, 4, 8):  # both sides of the first GEMM tile boundaries, in positions
        edge = j * tile // batch
        if 1 <= edge < 512 and (j * tile) % batch == 0:
            assert {edge, edge + 1} <= set(grid)
    group = model.gqa_group if preset.attention.pack_gqa else 1
    edge = preset.attention.block_q // group
    assert {edge, edge + 1} <= set(grid)
    assert len(grid) <= 128  # the 1-2-3 tile multiples keep the grid near 64-100 points (nfp.py)


def latency_model(kernels="triton", hardware="h100_sxm"):
    return AnalyticLatencyModel(load_hardware(hardware), load_kernels(kernels))


def test_report_carries_the_contract_keys():
    r = analyze(latency_model(), load_model("qwen3_30b_a3b"), batch=1, context=4096, eps=0.1)
    data = r.to_dict()
    for key in ("hardware", "model", "batch", "context", "eps", "balance_flop_per_byte", "idle_nfp",
                "forward", "modules"):
        assert key in data
    assert {"nfp", "curve"} <= set(data["forward"])
    assert data["forward"]["curve"][0] == {"positions": 1, "latency_s": r.forward.latency_s[0]}
    assert {"qkv_proj", "attention", "o_proj", "ffn", "lm_head", "router", "experts"} <= set(data["modules"])
    for module in data["modules"].values():
        assert {"nfp", "idle_nfp", "curve"} <= set(module)
    assert data["modules"]["experts"]["parent"] == "ffn"
    dense = analyze(latency_model(), load_model("llama3_8b"), batch=1, context=4096, eps=0.1).to_dict()
    assert {"gate_up_proj", "down_proj"} <= set(dense["modules"])


def test_explicit_positions_are_the_grid_exactly():
    r = analyze(latency_model(), load_model("llama3_8b"), batch=1, context=4096, eps=0.1, positions=[1, 2, 4, 8])
    assert r.positions == (1, 2, 4, 8)
    assert r.forward.nfp.nfp in (1, 2, 4, 8)
    assert all(c.positions == (1, 2, 4, 8) for c in r.modules.values())


def test_module_curves_add_up_to_the_forward():
    r = analyze(latency_model("vendor"), load_model("deepseek_v2_lite"), batch=4, context=1000, eps=0.1)
    top = [c for c in r.modules.values() if c.parent is None]
    for i, total in enumerate(r.forward.latency_s):
        assert sum(c.latency_s[i] for c in top) == pytest.approx(total)
    ffn_parts = [c for c in r.modules.values() if c.parent == "ffn"]
    assert sum(c.latency_s[0] for c in ffn_parts) == pytest.approx(r.modules["ffn"].latency_s[0])


def test_nfp_is_exact_off_the_grid():
    model, lm = load_model("llama3_8b"), latency_model("vendor")
    r = analyze(lm, model, batch=1, context=4096, eps=0.1)
    nfp = r.forward.nfp.nfp
    dense = analyze(lm, model, batch=1, context=4096, eps=0.1, positions=list(range(1, r.forward.nfp.crossing + 1)))
    assert dense.forward.nfp.nfp == nfp


def test_idle_nfp_of_a_gemm_is_the_hardware_balance():
    hw = load_hardware("h100_sxm")
    r = analyze(latency_model(), load_model("llama3_70b"), batch=1, context=1024, eps=0.1)
    # 2*M*K*N FLOPs at peak within (1+eps) of streaming K*N*2 bytes: M ~ (1+eps) * balance
    assert r.ops["gate_up_proj"].idle_nfp == pytest.approx(1.1 * hw.balance_flop_per_byte(), rel=0.02)
    r8 = analyze(latency_model(), load_model("llama3_70b"), batch=8, context=1024, eps=0.1)
    assert r8.ops["gate_up_proj"].idle_nfp == pytest.approx(1.1 * hw.balance_flop_per_byte() / 8, rel=0.05)
    assert r.modules["pointwise"].idle_nfp is None  # no FLOPs: idle compute never runs out
