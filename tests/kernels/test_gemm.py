import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfpsim.kernels import decode_gemm
from nfpsim.kernels.reference import decode_gemm_ref
from tests.kernels import DEVICE, DTYPES, assert_matches, poisoned, randn, seeded

TILES = dict(block_m=16, block_n=32, block_k=32)


def _operands(seed, T, N, K, dtype):
    gen = seeded(seed)
    # w scaled by K**-0.5 keeps y = O(1), as in a trained layer.
    return randn(gen, T, K, dtype=dtype), randn(gen, N, K, dtype=dtype, scale=K**-0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize(
    "T, N, K",
    [
        (1, 33, 40),  # one token, every dimension a masked tail
        (17, 50, 70),  # one row past a tile in T
        (40, 64, 96),  # 3 M-tiles over group_m = 2: a full and a partial group
    ],
)
def test_matches_reference(T, N, K, split_k, dtype):
    x, w = _operands(0, T, N, K, dtype)
    out = poisoned(T, N, dtype=dtype)
    y = decode_gemm(x, w, **TILES, split_k=split_k, group_m=2, out=out)
    assert y is out
    assert_matches(y, decode_gemm_ref(x, w))


@pytest.mark.parametrize(
    "tiles",
    [
        dict(block_m=32, block_n=16, block_k=64, split_k=1, group_m=1),
        # 2 K-tiles over 4 splits: the last two splits have no work and must contribute zeros.
        dict(block_m=16, block_n=16, block_k=32, split_k=4, group_m=8),
        dict(block_m=64, block_n=64, block_k=16, split_k=2, group_m=4),
    ],
)
def test_tile_configurations(tiles):
    x, w = _operands(1, 20, 45, 40, torch.float32)
    assert_matches(decode_gemm(x, w, **tiles, out=poisoned(20, 45, dtype=torch.float32)), decode_gemm_ref(x, w))


@settings(max_examples=12, deadline=None)
@given(
    T=st.integers(1, 40),
    N=st.integers(1, 70),
    K=st.integers(1, 80),
    split_k=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(T, N, K, split_k, seed):
    x, w = _operands(seed, T, N, K, torch.float32)
    assert_matches(decode_gemm(x, w, **TILES, split_k=split_k), decode_gemm_ref(x, w))


def test_split_k_is_deterministic():
    x, w = _operands(2, 9, 40, 96, torch.float16)
    first = decode_gemm(x, w, **TILES, split_k=3)
    assert torch.equal(first, decode_gemm(x, w, **TILES, split_k=3))


def test_writes_into_a_column_slice():
    # A fused projection writes q, k and v as column slices of one buffer: neighbours stay intact.
    x, w = _operands(3, 5, 24, 40, torch.float32)
    buffer = torch.zeros(5, 64, device=DEVICE)
    decode_gemm(x, w, **TILES, split_k=2, out=buffer[:, 16:40])
    assert_matches(buffer[:, 16:40], decode_gemm_ref(x, w))
    assert not buffer[:, :16].any() and not buffer[:, 40:].any()


def test_zero_tokens():
    x, w = _operands(4, 0, 8, 16, torch.float32)
    assert decode_gemm(x, w, **TILES).shape == (0, 8)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(w=torch.zeros(8, 15)), "w: shape"),
        (dict(w=torch.zeros(8, 16, dtype=torch.float16)), "w: dtype"),
        (dict(w=torch.zeros(16, 8).T), "w: innermost"),
        (dict(x=torch.zeros(4, 16, dtype=torch.int32)), "x: dtype"),
        (dict(block_k=24), "block_k"),
        (dict(split_k=0), "split_k"),
        (dict(out=torch.zeros(4, 9)), "out: shape"),
    ],
)
def test_rejects_bad_arguments(change, match):
    args = dict(x=torch.zeros(4, 16), w=torch.zeros(8, 16), **TILES) | change
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        decode_gemm(args.pop("x"), args.pop("w"), **args)
