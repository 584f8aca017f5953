"""The validation forward: both implementations compute the same function, and run exactly the ops
(names, counts, shapes, weight bytes, kernel calls) that ``decompose`` prices."""

import dataclasses

import pytest
import torch

from nfpsim.config import load_hardware, load_kernels, load_model
from nfpsim.errors import ConfigError
from nfpsim.latency import make_latency_model
from nfpsim.shapes import ForwardShape, GemmShape, MoeShape, decompose
from nfpsim.validation import forward as forward_module
from nfpsim.validation.forward import build_forward
from nfpsim.validation.model import KVCache, ModelWeights
from nfpsim.validation.plan import reduced
from nfpsim.validation.splits import constants_of
from tests.validation import TINY, TINY_BIDIRECTIONAL, TINY_MOE, TINY_SHARED, small_k_tiles

TRITON = load_kernels("triton")
CONSTANTS = constants_of(make_latency_model("analytic", load_hardware("h100_sxm"), TRITON))
# Without launch overhead the analytic model splits tiny memory-bound GEMMs and attention: the split
# paths (fp32 partials, reduction launches) then run in the numerics check too.
SPLITTING = dataclasses.replace(CONSTANTS, gemm=dataclasses.replace(CONSTANTS.gemm, launch_overhead_s=0.0),
                                attention=dataclasses.replace(CONSTANTS.attention, launch_overhead_s=0.0))


def both(model, batch, positions, context, kernels=TRITON, constants=CONSTANTS, seed=0):
    weights = ModelWeights.random(model, "cpu", torch.float32, seed=seed)
    cache = KVCache.random(model, batch, context + positions + 3, "cpu", torch.float32, seed=seed + 1)
    triton_fwd = build_forward(weights, cache.clone(), "triton", kernels, batch=batch, positions=positions,
                               context=context, constants=constants, seed=seed)
    vendor_fwd = build_forward(weights, cache.clone(), "vendor", None, batch=batch, positions=positions,
                               context=context, seed=seed)
    triton_fwd()
    vendor_fwd()
    return triton_fwd, vendor_fwd


def rel_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("model, batch, positions, context, kernels, constants", [
    (TINY, 2, 3, 13, TRITON, CONSTANTS),  # causal verify block, GQA 2
    (TINY, 1, 1, 5, TRITON, CONSTANTS),  # plain decode
    (TINY, 3, 17, 40, small_k_tiles(), SPLITTING),  # past one 16-row tile, split-K
    (TINY, 1, 4, 60, small_k_tiles(), SPLITTING),  # split-KV
    (TINY_MOE, 2, 5, 9, TRITON, CONSTANTS),  # fused MoE vs torch._grouped_mm
    (TINY_SHARED, 2, 3, 30, small_k_tiles(), SPLITTING),  # dense layer first, shared expert
    (TINY_BIDIRECTIONAL, 2, 4, 11, TRITON, CONSTANTS),  # diffusion block
])
def test_triton_and_vendor_forwards_compute_the_same_logits(model, batch, positions, context, kernels, constants):
    triton_fwd, vendor_fwd = both(model, batch, positions, context, kernels, constants)
    assert triton_fwd.logits.shape == (batch * positions, model.vocab_size)
    assert torch.isfinite(triton_fwd.logits).all()
    assert rel_error(triton_fwd.logits, vendor_fwd.logits) < 1e-4
    assert torch.equal(triton_fwd.tokens, vendor_fwd.tokens)
    if constants is SPLITTING:
        assert max(triton_fwd.splits.values()) > 1  # a split path really ran


def test_the_check_would_see_a_wrong_mask():
    """Causal and bidirectional blocks give different logits, so agreement above is not trivial."""
    causal, _ = both(TINY, 2, 4, 11)
    bidirectional, _ = both(TINY_BIDIRECTIONAL, 2, 4, 11)
    assert rel_error(causal.logits, bidirectional.logits) > 1e-2


def test_new_keys_and_values_land_in_the_cache_at_their_positions():
    model, batch, positions, context = TINY, 2, 3, 7
    weights = ModelWeights.random(model, "cpu", torch.float32)
    cache = KVCache.random(model, batch, context + positions + 2, "cpu", torch.float32)
    before = cache.clone()
    build_forward(weights, cache, "vendor", None, batch=batch, positions=positions, context=context)()
    for layer in range(model.num_layers):
        written = slice(context, context + positions)
        assert not torch.equal(cache.k[layer][:, written], before.k[layer][:, written])
        for untouched in (slice(0, context), slice(context + positions, None)):
            assert torch.equal(cache.k[layer][:, untouched], before.k[layer][:, untouched])
            assert torch.equal(cache.v[layer][:, untouched], before.v[layer][:, untouched])


@pytest.mark.parametrize("model", [TINY, TINY_MOE, TINY_SHARED, reduced(load_model("qwen3_30b_a3b"), 2),
                                   reduced(load_model("llama3_8b"), 2)])
def test_steps_are_the_priced_ops_with_their_counts_and_weight_bytes(model):
    batch, positions, context = 2, 5, 16
    priced = decompose(model, ForwardShape.uniform(batch, positions, context), "eager")
    forward = build_forward(_meta_weights(model), _meta_cache(model, batch, context + positions), "vendor", None,
                            batch=batch, positions=positions, context=context)
    counts = {}
    for step in forward.steps:
        for op in step.ops:
            counts[op] = counts.get(op, 0) + 1
    assert counts == {op.name: op.count for op in priced}
    streamed = _meta_weights(model).bytes_by_op()
    for op in priced:
        if isinstance(op.shape, GemmShape):
            assert streamed[op.name] == op.shape.weight_bytes * op.count, op.name
        elif isinstance(op.shape, MoeShape):
            assert streamed[op.name] == op.shape.num_experts * op.shape.expert_bytes * op.count


def _meta_weights(model):
    """Weights on the meta device: shapes and bytes without memory (real models included)."""
    return ModelWeights.random(model, "meta", torch.bfloat16)


def _meta_cache(model, batch, slots):
    return KVCache.random(model, batch, slots, "meta", torch.bfloat16)


def test_triton_forward_launches_each_kernel_once_per_priced_op(monkeypatch):
    model, batch, positions, context = TINY_SHARED, 2, 3, 10
    calls = {}

    def counting(name):
        real = getattr(forward_module, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)
        return wrapper

    for name in ("decode_gemm", "rotary_kv_write", "decode_attention", "fused_add_rmsnorm", "rmsnorm",
                 "silu_and_mul", "fused_moe", "route"):
        monkeypatch.setattr(forward_module, name, counting(name))
    weights = ModelWeights.random(model, "cpu", torch.float32)
    cache = KVCache.random(model, batch, context + positions, "cpu", torch.float32)
    build_forward(weights, cache, "triton", TRITON, batch=batch, positions=positions, context=context,
                  constants=CONSTANTS)()
    ops = {op.name: op for op in decompose(model, ForwardShape.uniform(batch, positions, context))}
    gemms = sum(op.count for op in ops.values() if isinstance(op.shape, GemmShape))
    assert calls == {"decode_gemm": gemms, "rotary_kv_write": model.num_layers, "decode_attention": model.num_layers,
                     "fused_add_rmsnorm": 2 * model.num_layers, "rmsnorm": 1,
                     "silu_and_mul": ops["act_mul"].count + ops["shared_act_mul"].count,
                     "fused_moe": ops["experts"].count, "route": ops["router_topk"].count}


def test_triton_splits_follow_the_latency_model():
    from nfpsim.validation.splits import attention_splits, gemm_split

    model, batch, positions, context = TINY, 1, 4, 60
    kernels = small_k_tiles()
    weights = ModelWeights.random(model, "meta", torch.bfloat16)
    cache = KVCache.random(model, batch, context + positions, "meta", torch.bfloat16)
    forward = build_forward(weights, cache, "triton", kernels, batch=batch, positions=positions, context=context,
                            constants=SPLITTING)
    for op in decompose(model, ForwardShape.uniform(batch, positions, context)):
        if isinstance(op.shape, GemmShape):
            assert forward.splits[op.name] == gemm_split(op.shape, kernels, SPLITTING)
        elif op.name == "attention":
            assert forward.splits[op.name] == attention_splits(op.shape, kernels, SPLITTING) > 1
    fixed = dataclasses.replace(kernels, attention=dataclasses.replace(kernels.attention, num_splits=3))
    forward = build_forward(weights, cache, "triton", fixed, batch=batch, positions=positions, context=context,
                            constants=SPLITTING)
    assert forward.splits["attention"] == 3


def test_reduced_models_and_bad_builds():
    qwen = reduced(load_model("qwen3_30b_a3b"), 4)
    assert (qwen.num_layers, qwen.num_moe_layers) == (4, 4)
    assert reduced(TINY_SHARED, 1).num_dense_layers == 1 and reduced(TINY_SHARED, 1).num_moe_layers == 0
    assert reduced(TINY, None) is TINY and reduced(TINY, 9) is TINY
    weights = ModelWeights.random(TINY, "meta", torch.bfloat16)
    small = KVCache.random(TINY, 2, 10, "meta", torch.bfloat16)
    with pytest.raises(ValueError, match="cannot hold batch 2 x 11 tokens"):
        build_forward(weights, small, "vendor", None, batch=2, positions=3, context=8)
    with pytest.raises(ValueError, match="allowed: triton, vendor"):
        build_forward(weights, small, "cublas", None, batch=2, positions=1, context=1)
    with pytest.raises(ValueError, match="needs the kernel preset"):
        build_forward(weights, small, "triton", None, batch=2, positions=1, context=1)
    with pytest.raises(ConfigError, match="multi-head latent attention"):
        ModelWeights.random(load_model("deepseek_v2_lite"), "meta", torch.bfloat16)


@pytest.mark.cuda
def test_gpu_forwards_agree_in_bf16():
    """On the GPU the vendor path is the flash kernel with a bottom-right causal mask: it must match ours."""
    model = dataclasses.replace(TINY, name="tiny_d128", hidden_size=512, num_heads=4, num_kv_heads=2, head_dim=128)
    for m in (model, dataclasses.replace(model, attention_mask="bidirectional"),
              dataclasses.replace(model, num_experts=8, top_k=2, expert_ffn_size=64, num_dense_layers=0)):
        weights = ModelWeights.random(m, "cuda", torch.bfloat16)
        cache = KVCache.random(m, 2, 300, "cuda", torch.bfloat16)
        out = {}
        for name in ("triton", "vendor"):
            f = build_forward(weights, cache.clone(), name, TRITON, batch=2, positions=7, context=256,
                              constants=CONSTANTS)
            f()
            out[name] = f.logits.float()
        assert rel_error(out["triton"], out["vendor"]) < 3e-2, m
