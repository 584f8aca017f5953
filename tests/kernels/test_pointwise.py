import pytest
import torch

from nfpsim.kernels import fused_add_rmsnorm, rmsnorm, rotary_kv_write, silu_and_mul, sum_slices
from nfpsim.kernels.reference import fused_add_rmsnorm_ref, rmsnorm_ref, rotary_kv_write_ref, silu_and_mul_ref
from tests.kernels import DEVICE, DTYPES, assert_matches, poisoned, randn, seeded

EPS = 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, H", [(1, 16), (7, 50)])
def test_rmsnorm(T, H, dtype):
    gen = seeded(0)
    x, weight = randn(gen, T, H, dtype=dtype), randn(gen, H, dtype=dtype)
    out = poisoned(T, H, dtype=dtype)
    assert rmsnorm(x, weight, EPS, out=out) is out
    assert_matches(out, rmsnorm_ref(x, weight, EPS))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rmsnorm(dtype):
    gen = seeded(1)
    T, H = 6, 72
    x, residual, weight = randn(gen, T, H, dtype=dtype), randn(gen, T, H, dtype=dtype), randn(gen, H, dtype=dtype)
    normed, residual_out = fused_add_rmsnorm(
        x, residual, weight, EPS, out=poisoned(T, H, dtype=dtype), residual_out=poisoned(T, H, dtype=dtype)
    )
    expected_normed, expected_residual = fused_add_rmsnorm_ref(x, residual, weight, EPS)
    assert_matches(residual_out, expected_residual)
    assert_matches(normed, expected_normed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, F", [(3, 24), (2, 1500)])  # 1500 > one 1024-wide chunk: two programs a row
def test_silu_and_mul(T, F, dtype):
    gate_up = randn(seeded(2), T, 2 * F, dtype=dtype)
    out = poisoned(T, F, dtype=dtype)
    assert silu_and_mul(gate_up, out=out) is out
    assert_matches(out, silu_and_mul_ref(gate_up))


def test_sum_slices_strided_and_deterministic():
    src = randn(seeded(3), 4, 5, 30).permute(1, 0, 2)  # [5, 4, 30] with a non-contiguous middle dim
    out = sum_slices(src, out=poisoned(5, 30, dtype=torch.float16))
    assert_matches(out, src.sum(dim=1).half())
    assert torch.equal(sum_slices(src), sum_slices(src))


def _rope_tables(S, D):
    angles = torch.arange(S)[:, None] * 10000.0 ** (-torch.arange(D // 2) / (D // 2))
    return angles.cos().to(DEVICE), angles.sin().to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_kv_write(dtype):
    gen = seeded(4)
    B, M, Hq, Hkv, D, Dv, S = 3, 4, 6, 2, 32, 24, 20
    # q, k, v as column slices of one fused projection output, as a real layer produces them.
    qkv = randn(gen, B, M, Hq * D + Hkv * D + Hkv * Dv, dtype=dtype)
    q = qkv[..., : Hq * D].unflatten(-1, (Hq, D))
    k = qkv[..., Hq * D : (Hq + Hkv) * D].unflatten(-1, (Hkv, D))
    v = qkv[..., (Hq + Hkv) * D :].unflatten(-1, (Hkv, Dv))
    cos, sin = _rope_tables(S, D)
    k_cache, v_cache = randn(gen, B, S, Hkv, D, dtype=dtype), randn(gen, B, S, Hkv, Dv, dtype=dtype)
    start_pos = torch.tensor([0, 9, S - M], dtype=torch.int32, device=DEVICE)  # first, middle, last slots
    q_ref, k_cache_ref, v_cache_ref = rotary_kv_write_ref(q, k, v, cos, sin, k_cache, v_cache, start_pos)

    q_rot = rotary_kv_write(q, k, v, cos, sin, k_cache, v_cache, start_pos, out=poisoned(B, M, Hq, D, dtype=dtype))
    assert_matches(q_rot, q_ref)
    # Whole caches: the written slots match and every other slot is untouched.
    assert_matches(k_cache, k_cache_ref)
    assert torch.equal(v_cache, v_cache_ref)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: rmsnorm(torch.zeros(2, 8), torch.zeros(7), EPS), "weight: shape"),
        (lambda: fused_add_rmsnorm(torch.zeros(2, 8), torch.zeros(2, 8).half(), torch.zeros(8), EPS), "residual: dt"),
        (lambda: silu_and_mul(torch.zeros(2, 7)), "gate_up: last dimension"),
        (lambda: sum_slices(torch.zeros(2, 3)), "src: expected a 3-D"),
    ],
)
def test_rejects_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_rotary_rejects_wrong_table_width():
    q, kv, cache, table = torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 1, 8), torch.zeros(1, 4, 1, 8), torch.zeros(4, 3)
    with pytest.raises(ValueError, match="cos: last dimension"):
        rotary_kv_write(q, kv, kv, table, table, cache, cache.clone(), torch.zeros(1, dtype=torch.int32))
