import pytest
import torch

from nfpsim.kernels import decode_attention, rotary_kv_write
from nfpsim.kernels.reference import decode_attention_ref, rotary_kv_write_ref
from tests.kernels import DEVICE, DTYPES, assert_matches, poisoned, randn, seeded

# (M, Hq, Hkv, D, Dv): new positions, heads, head dims.
HEAD_CONFIGS = {
    "decode_gqa2": (1, 4, 2, 32, 32),  # one position, g = 2
    "verify_mha_d40_dv24": (5, 3, 3, 40, 24),  # g = 1, D split 32 + tail, Dv padded to 32
    "mla_like_g8": (3, 8, 1, 80, 64),  # one latent KV head, D = 64 + 16-wide tail, D != Dv
}
# Valid cache slots per sequence: only the new positions, odd lengths, a full cache.
CONTEXT_LENS = [5, 37, 70]
CACHE_SLOTS = 70


def _attention_inputs(seed, M, Hq, Hkv, D, Dv, dtype, context_lens=CONTEXT_LENS):
    gen = seeded(seed)
    B = len(context_lens)
    q = randn(gen, B, M, Hq, D, dtype=dtype)
    k_cache = randn(gen, B, CACHE_SLOTS, Hkv, D, dtype=dtype)
    v_cache = randn(gen, B, CACHE_SLOTS, Hkv, Dv, dtype=dtype)
    lens = torch.tensor([max(n, M) for n in context_lens], dtype=torch.int32, device=DEVICE)
    return q, k_cache, v_cache, lens


def _run_against_reference(q, k_cache, v_cache, context_lens, *, causal, **config):
    B, M, Hq, _ = q.shape
    out = poisoned(B, M, Hq, v_cache.shape[-1], dtype=q.dtype)
    o = decode_attention(q, k_cache, v_cache, context_lens, causal=causal, out=out, **config)
    assert o is out
    expected = decode_attention_ref(q, k_cache, v_cache, context_lens, causal=causal, sm_scale=config.get("sm_scale"))
    assert_matches(o, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("pack_gqa", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", list(HEAD_CONFIGS))
def test_matches_reference(heads, causal, pack_gqa, num_splits, dtype):
    q, k_cache, v_cache, lens = _attention_inputs(0, *HEAD_CONFIGS[heads], dtype)
    _run_against_reference(
        q, k_cache, v_cache, lens, causal=causal, block_q=16, block_kv=16, num_splits=num_splits, pack_gqa=pack_gqa
    )


@pytest.mark.parametrize(
    "config",
    [
        # g*M = 4*6 = 24 packed rows over block_q = 16: two query tiles, the second partly masked.
        dict(block_q=16, block_kv=32, num_splits=2, pack_gqa=True),
        # 8 splits of a context of at most 2 KV tiles: most splits are empty and must weigh zero.
        dict(block_q=32, block_kv=16, num_splits=8, pack_gqa=True),
        dict(block_q=16, block_kv=64, num_splits=1, pack_gqa=False, sm_scale=0.3),
    ],
)
@pytest.mark.parametrize("causal", [True, False])
def test_tile_configurations(config, causal):
    q, k_cache, v_cache, lens = _attention_inputs(1, 6, 4, 1, 32, 32, torch.float32, context_lens=[6, 19, 30])
    _run_against_reference(q, k_cache, v_cache, lens, causal=causal, **config)


def test_value_cache_as_view_of_key_cache():
    # MLA absorbed form: keys are the latent plus a rope part, values the latent alone (a strided view).
    q, k_cache, _, lens = _attention_inputs(2, 2, 4, 1, 80, 64, torch.float16)
    v_cache = k_cache[..., :64]
    _run_against_reference(q, k_cache, v_cache, lens, causal=True, block_q=16, block_kv=32, num_splits=2)


def test_after_rotary_kv_write():
    # The contract between the two ops: context_lens = start_pos + M sees the positions just written.
    gen = seeded(3)
    B, M, Hq, Hkv, D, S = 2, 4, 4, 2, 32, 40
    q, k, v = randn(gen, B, M, Hq, D), randn(gen, B, M, Hkv, D), randn(gen, B, M, Hkv, D)
    angles = torch.arange(S)[:, None] * 10000.0 ** (-torch.arange(D // 2) / (D // 2))
    cos, sin = angles.cos().to(DEVICE), angles.sin().to(DEVICE)
    k_cache, v_cache = randn(gen, B, S, Hkv, D), randn(gen, B, S, Hkv, D)
    start_pos = torch.tensor([0, 29], dtype=torch.int32, device=DEVICE)
    q_ref, k_ref, v_ref = rotary_kv_write_ref(q, k, v, cos, sin, k_cache, v_cache, start_pos)
    expected = decode_attention_ref(q_ref, k_ref, v_ref, start_pos + M, causal=True)

    q_rot = rotary_kv_write(q, k, v, cos, sin, k_cache, v_cache, start_pos)
    o = decode_attention(q_rot, k_cache, v_cache, start_pos + M, causal=True, block_q=16, block_kv=16, num_splits=2)
    assert_matches(o, expected)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(q=torch.zeros(2, 1, 3, 16)), "q: 3 query heads"),
        (dict(v_cache=torch.zeros(2, 9, 2, 16)), "v_cache: shape"),
        (dict(k_cache=torch.zeros(2, 8, 2, 16, dtype=torch.float16)), "k_cache: dtype"),
        (dict(context_lens=torch.zeros(2)), "context_lens: dtype"),
        (dict(context_lens=torch.zeros(3, dtype=torch.int32)), "context_lens: shape"),
        (dict(block_kv=48), "block_kv"),
        (dict(num_splits=0), "num_splits"),
    ],
)
def test_rejects_bad_arguments(change, match):
    args = dict(
        q=torch.zeros(2, 1, 4, 16),
        k_cache=torch.zeros(2, 8, 2, 16),
        v_cache=torch.zeros(2, 8, 2, 16),
        context_lens=torch.ones(2, dtype=torch.int32),
        causal=True,
        block_q=16,
        block_kv=16,
        num_splits=1,
    ) | change
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        decode_attention(**args)
