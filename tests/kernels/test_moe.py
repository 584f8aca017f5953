import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfpsim.kernels import fused_moe, moe_align, padded_slots, route
from nfpsim.kernels.reference import fused_moe_ref, moe_align_ref, route_ref
from tests.kernels import DEVICE, DTYPES, assert_matches, poisoned, randn, seeded

TILES = dict(block_m=16, block_n=32, block_k=32)


def _distinct_choices(gen, T, E, top_k):
    """``[T, k]`` int32 ids, each token choosing ``k`` distinct experts uniformly."""
    return torch.rand(T, E, generator=gen).argsort(dim=1)[:, :top_k].to(torch.int32)


# ---------------------------------------------------------------------------------------------
# route
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("renormalize", [True, False])
def test_route_matches_reference(renormalize):
    logits = randn(seeded(0), 9, 6)
    weights, ids = route(logits, 2, renormalize=renormalize)
    expected_weights, expected_ids = route_ref(logits, 2, renormalize=renormalize)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(weights, expected_weights)
    if renormalize:
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(9, device=DEVICE))


def test_route_rejects_top_k_above_experts():
    with pytest.raises(ValueError, match="top_k"):
        route(torch.zeros(3, 4, device=DEVICE), 5)


# ---------------------------------------------------------------------------------------------
# moe_align
# ---------------------------------------------------------------------------------------------
def test_align_worked_example():
    # Slots (t*k + j) -> expert: 0->2, 1->0, 2->2, 3->1; block_m = 2, sentinel = 4.
    # Runs: expert 0 [1, pad], expert 1 [3, pad], expert 2 [0, 2]; P_max = 4 + 3*1 = 7 -> 8.
    topk_ids = torch.tensor([[2, 0], [2, 1]], dtype=torch.int32, device=DEVICE)
    sorted_ids, expert_ids, num_post = moe_align(topk_ids, num_experts=3, block_m=2)
    assert sorted_ids.tolist() == [1, 4, 3, 4, 0, 2, 4, 4]
    assert expert_ids.tolist() == [0, 1, 2, -1]
    assert num_post.tolist() == [6]


def check_alignment_invariants(alignment, topk_ids, num_experts, block_m):
    sorted_ids, expert_ids, num_post = alignment
    num_slots = topk_ids.numel()
    num_padded = padded_slots(num_slots, num_experts, block_m)
    assert sorted_ids.shape == (num_padded,) and expert_ids.shape == (num_padded // block_m,)
    assert num_post.shape == (1,)
    assert {t.dtype for t in (sorted_ids, expert_ids, num_post)} == {torch.int32}

    sorted_ids, expert_ids, live = sorted_ids.tolist(), expert_ids.tolist(), int(num_post[0])
    expert_of_slot = topk_ids.reshape(-1).tolist()
    counts = [expert_of_slot.count(e) for e in range(num_experts)]
    assert live == sum(-(-n // block_m) * block_m for n in counts) <= num_padded

    # Every slot exactly once, everything else the sentinel, nothing real past the live part.
    real = [s for s in sorted_ids if s != num_slots]
    assert sorted(real) == list(range(num_slots))
    assert all(s == num_slots for s in sorted_ids[live:])

    # Each live block belongs to one expert, holds only that expert's slots (ascending: the sort is
    # stable), experts appear in order, and each gets exactly ceil(n_e / block_m) blocks.
    blocks_per_expert = [0] * num_experts
    for b, e in enumerate(expert_ids):
        block = [s for s in sorted_ids[b * block_m : (b + 1) * block_m] if s != num_slots]
        if b * block_m >= live:
            assert e == -1 and not block
            continue
        blocks_per_expert[e] += 1
        assert all(expert_of_slot[s] == e for s in block)
        assert block == sorted(block)
    live_experts = expert_ids[: live // block_m]
    assert live_experts == sorted(live_experts)
    assert blocks_per_expert == [-(-n // block_m) for n in counts]


@settings(max_examples=60, deadline=None)
@given(
    T=st.integers(0, 24),
    E=st.integers(1, 9),
    top_k=st.integers(1, 3),
    block_m=st.sampled_from([1, 2, 4, 16]),
    skew=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_align_invariants(T, E, top_k, block_m, skew, seed):
    top_k = min(top_k, E)
    gen = seeded(seed)
    topk_ids = _distinct_choices(gen, T, E, top_k)
    if skew:  # every token's first choice on one expert
        topk_ids = torch.where(topk_ids == 0, topk_ids[:, :1], topk_ids)
        topk_ids[:, 0] = 0
    topk_ids = topk_ids.to(DEVICE)
    alignment = moe_align(topk_ids, E, block_m)
    check_alignment_invariants(alignment, topk_ids, E, block_m)
    for actual, expected in zip(alignment, moe_align_ref(topk_ids, E, block_m), strict=True):
        assert torch.equal(actual, expected)


def _align_case(case, gen):
    """``(topk_ids [T, k], E, block_m)`` for a named routing scenario."""
    if case == "random":  # E not a power of two
        return _distinct_choices(gen, 37, 7, 2), 7, 4
    if case == "power_of_two_experts":  # E = 8 fills the bins; the masked lanes get their own
        return _distinct_choices(gen, 21, 8, 3), 8, 16
    if case == "empty_experts":  # 6 slots over 50 experts: most runs empty
        return _distinct_choices(gen, 3, 50, 2), 50, 16
    if case == "one_expert":  # every slot on the last expert (repeats allowed: the kernel does not care)
        return torch.full((75, 2), 12, dtype=torch.int32), 13, 16
    if case == "odd_block_m":  # block_m need not be a power of two
        return _distinct_choices(gen, 19, 5, 2), 5, 3
    if case == "many_chunks":  # 1400 slots: two 1024-slot chunks, the second partial
        return torch.randint(0, 24, (700, 2), generator=gen, dtype=torch.int32), 24, 16
    if case == "int64_strided":  # int64 ids read through a transposed view
        return _distinct_choices(gen, 30, 6, 2).long().T.contiguous().T, 6, 8
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["random", "power_of_two_experts", "empty_experts", "one_expert", "odd_block_m", "many_chunks", "int64_strided"],
)
def test_align_matches_reference(case):
    topk_ids, E, block_m = _align_case(case, seeded(3))
    topk_ids = topk_ids.to(DEVICE)
    num_padded = padded_slots(topk_ids.numel(), E, block_m)
    # Poisoned with -7, which no output may hold: an element the kernel forgets shows up.
    sizes = (num_padded, num_padded // block_m, 1)
    out = tuple(torch.full((n,), -7, dtype=torch.int32, device=DEVICE) for n in sizes)
    result = moe_align(topk_ids, E, block_m, out=out)
    for actual, buffer, expected in zip(result, out, moe_align_ref(topk_ids, E, block_m), strict=True):
        assert actual is buffer
        assert torch.equal(actual, expected)


@pytest.mark.cuda
def test_align_matches_reference_at_the_largest_shapes():
    # E = 512 experts, T*k = 65536 slots: the sizes the kernel must support (too slow interpreted).
    gen = seeded(4)
    topk_ids = torch.randint(0, 512, (8192, 8), generator=gen, dtype=torch.int32).to(DEVICE)
    for actual, expected in zip(moe_align(topk_ids, 512, 16), moe_align_ref(topk_ids, 512, 16), strict=True):
        assert torch.equal(actual, expected)


def test_align_rejects_bad_output_buffer():
    topk_ids = torch.zeros(2, 2, dtype=torch.int32, device=DEVICE)
    num_padded = padded_slots(4, 3, 2)
    out = (
        torch.empty(num_padded, dtype=torch.int32, device=DEVICE),
        torch.empty(num_padded // 2, dtype=torch.int64, device=DEVICE),
        torch.empty(1, dtype=torch.int32, device=DEVICE),
    )
    with pytest.raises(ValueError, match="out.expert_ids: dtype"):
        moe_align(topk_ids, 3, 2, out=out)


# ---------------------------------------------------------------------------------------------
# fused_moe
# ---------------------------------------------------------------------------------------------
def _moe_case(case, gen):
    """``(T, H, F, E, topk_ids)`` for a named routing scenario."""
    if case == "random":
        return 10, 48, 40, 8, _distinct_choices(gen, 10, 8, 2)
    if case == "idle_experts":  # 2 tokens x 2 choices wake at most 4 of 8 experts
        return 2, 48, 40, 8, _distinct_choices(gen, 2, 8, 2)
    if case == "one_expert_top1":  # every token on expert 3, all other experts idle
        return 13, 40, 24, 4, torch.full((13, 1), 3, dtype=torch.int32)
    if case == "one_expert_top2":  # every token's first choice is expert 5 (20 > block_m: 2 tiles)
        ids = _distinct_choices(gen, 20, 6, 2)
        ids = torch.where(ids == 5, ids[:, :1], ids)
        ids[:, 0] = 5
        return 20, 32, 48, 6, ids
    if case == "single_token":
        return 1, 40, 56, 4, _distinct_choices(gen, 1, 4, 2)
    raise AssertionError(case)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["random", "idle_experts", "one_expert_top1", "one_expert_top2", "single_token"])
def test_fused_moe_matches_reference(case, dtype):
    gen = seeded(1)
    T, H, F, E, topk_ids = _moe_case(case, gen)
    topk_ids = topk_ids.to(DEVICE)
    x = randn(gen, T, H, dtype=dtype)
    w_gate_up = randn(gen, E, 2 * F, H, dtype=dtype, scale=H**-0.5)
    w_down = randn(gen, E, H, F, dtype=dtype, scale=F**-0.5)
    topk_weights = torch.rand(topk_ids.shape, generator=gen).to(DEVICE)
    out = poisoned(T, H, dtype=dtype)
    y = fused_moe(x, w_gate_up, w_down, topk_weights, topk_ids, **TILES, out=out)
    assert y is out
    assert_matches(y, fused_moe_ref(x, w_gate_up, w_down, topk_weights, topk_ids))


@pytest.mark.parametrize(
    "tiles", [dict(block_m=32, block_n=16, block_k=16, group_m=1), dict(block_m=16, block_n=64, block_k=64, group_m=2)]
)
def test_fused_moe_tile_configurations(tiles):
    gen = seeded(2)
    T, H, F, E, top_k = 7, 40, 36, 5, 2
    x = randn(gen, T, H)
    w_gate_up, w_down = randn(gen, E, 2 * F, H, scale=H**-0.5), randn(gen, E, H, F, scale=F**-0.5)
    topk_weights, topk_ids = route(randn(gen, T, E), top_k)
    y = fused_moe(x, w_gate_up, w_down, topk_weights, topk_ids.long(), **tiles)
    assert_matches(y, fused_moe_ref(x, w_gate_up, w_down, topk_weights, topk_ids))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(w_down=torch.zeros(4, 16, 9)), "w_down: shape"),
        (dict(w_gate_up=torch.zeros(4, 15, 16)), "w_gate_up: dimension 1"),
        (dict(topk_weights=torch.zeros(3, 2, dtype=torch.float16)), "topk_weights: dtype"),
        (dict(topk_ids=torch.zeros(2, 2, dtype=torch.int32), topk_weights=torch.zeros(2, 2)), "topk_ids: 2 rows"),
        (dict(topk_ids=torch.zeros(3, 2)), "topk_ids: dtype"),
        (dict(block_n=24), "block_n"),
    ],
)
def test_fused_moe_rejects_bad_arguments(change, match):
    args = dict(
        x=torch.zeros(3, 16),
        w_gate_up=torch.zeros(4, 16, 16),
        w_down=torch.zeros(4, 16, 8),
        topk_weights=torch.zeros(3, 2),
        topk_ids=torch.zeros(3, 2, dtype=torch.int32),
        **TILES,
    ) | change
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        fused_moe(**args)
