"""Hand-checked op counts of real models (numbers worked out from the published configs)."""

import pytest

from nfpsim.config import load_model
from nfpsim.errors import ConfigError
from nfpsim.shapes import AttentionShape, ForwardShape, GemmShape, MoeShape, SeqGroup, decompose


def ops_by_name(model, shape):
    return {op.name: op for op in decompose(model, shape)}


def test_llama3_8b_one_position_by_hand():
    m = load_model("llama3_8b")
    ops = ops_by_name(m, ForwardShape.uniform(batch=1, positions=1, context=4096))
    # qkv: N = 32*128 + 2*8*128 = 6144 over K = 4096; one token: 2*4096*6144 FLOPs
    qkv = ops["qkv_proj"]
    assert (qkv.shape.n, qkv.shape.k, qkv.count) == (6144, 4096, 32)
    assert qkv.shape.flops == 2 * 4096 * 6144 == 50_331_648
    assert qkv.shape.bytes == 2 * (6144 * 4096 + 4096 + 6144)
    assert (ops["gate_up_proj"].shape.n, ops["down_proj"].shape.k) == (2 * 14336, 14336)
    assert (ops["o_proj"].shape.n, ops["o_proj"].shape.k) == (4096, 4096)
    # attention reads K and V of 8 heads x 128 over 4096 cached + 1 new token, bf16
    attn = ops["attention"].shape
    assert isinstance(attn, AttentionShape)
    assert attn.cache_bytes == 8 * 4097 * 256 * 2 == 16_781_312
    # 32 query heads x 4097 keys x 2*(128+128) FLOPs (the single new key is its own causal block)
    assert attn.flops == 2 * 32 * 4097 * 256 == 67_125_248
    lm = ops["lm_head"].shape
    assert (lm.tokens, lm.n, lm.k) == (1, 128256, 4096)
    assert ops["add_norm"].count == 64  # before attention and before the FFN, 32 layers


def test_dense_gemm_weights_are_the_parameters_minus_the_gathered_embedding():
    m = load_model("llama3_8b")
    total, active = m.param_counts()
    assert total == active
    gemm_weights = sum(op.shape.weight_bytes * op.count for op in decompose(m, ForwardShape.uniform(1, 1, 0))
                       if isinstance(op.shape, GemmShape))
    assert gemm_weights == (total - m.vocab_size * m.hidden_size) * 2
    assert total == pytest.approx(8.03e9, rel=0.005)  # Llama 3 8B model card


def test_qwen3_30b_a3b_one_position_by_hand():
    m = load_model("qwen3_30b_a3b")
    ops = ops_by_name(m, ForwardShape.uniform(batch=1, positions=1, context=4096))
    assert "gate_up_proj" not in ops  # every layer is MoE
    qkv = ops["qkv_proj"].shape
    assert (qkv.n, qkv.k) == (32 * 128 + 2 * 4 * 128, 2048) == (5120, 2048)
    o = ops["o_proj"].shape
    assert (o.n, o.k) == (2048, 4096)  # heads*head_dim = 4096 is wider than hidden
    router = ops["router"].shape
    assert (router.n, router.k) == (128, 2048)
    experts = ops["experts"]
    assert isinstance(experts.shape, MoeShape) and experts.count == 48
    # one token wakes exactly its 8 experts: 8 x 3 x 2048 x 768 x 2 bytes of weights
    assert experts.shape.active_experts == pytest.approx(8.0)
    assert experts.shape.expert_bytes * 8 == 75_497_472
    assert experts.shape.flops == 2 * 8 * 3 * 2048 * 768
    attn = ops["attention"].shape
    assert attn.cache_bytes == 4 * 4097 * 256 * 2
    total, active = m.param_counts()
    assert total == pytest.approx(30.5e9, rel=0.01)  # "30.5B total, 3.3B activated" (Qwen3 model card)
    assert active == pytest.approx(3.3e9, rel=0.03)


def test_two_positions_wake_more_experts_than_one():
    m = load_model("qwen3_30b_a3b")
    one = ops_by_name(m, ForwardShape.uniform(1, 1, 0))["experts"].shape
    two = ops_by_name(m, ForwardShape.uniform(1, 2, 0))["experts"].shape
    # E(1-(1-k/E)^2) = 128 * (1 - (120/128)^2) = 15.5
    assert two.active_experts == pytest.approx(128 * (1 - (120 / 128) ** 2))
    assert two.bytes > 1.9 * one.bytes


def test_every_position_is_scored_in_parallel_decoding_but_not_in_a_prefill_chunk():
    m = load_model("llama3_8b")
    decode = ops_by_name(m, ForwardShape.uniform(batch=4, positions=8, context=100))
    assert decode["lm_head"].shape.tokens == 32
    assert decode["qkv_proj"].shape.tokens == 32
    prefill = ForwardShape((SeqGroup(num_seqs=1, positions=512, context=0, scored=1),
                            SeqGroup(num_seqs=4, positions=8, context=100)))
    ops = ops_by_name(m, prefill)
    assert ops["qkv_proj"].shape.tokens == 512 + 32
    assert ops["lm_head"].shape.tokens == 1 + 32
    assert {"attention[0]", "attention[1]"} <= set(ops)


def test_diffusion_block_attends_bidirectionally():
    llada = load_model("llada_8b")
    assert llada.attention_mask == "bidirectional"
    attn = ops_by_name(llada, ForwardShape.uniform(1, 32, 1000))["attention"].shape
    assert not attn.causal
    assert attn.flops == 2 * 32 * 32 * (1000 + 32) * 256
    causal = AttentionShape(**{**attn.__dict__, "causal": True})
    assert causal.flops == 2 * 32 * 32 * (1000 + 33 / 2) * 256


def test_mla_caches_one_latent_per_token_shared_by_all_heads():
    m = load_model("deepseek_v2_lite")
    assert m.cache_elements_per_token == 512 + 64
    ops = ops_by_name(m, ForwardShape.uniform(1, 1, 1000))
    attn = ops["attention"].shape
    assert (attn.kv_heads, attn.q_heads, attn.qk_dim, attn.v_dim) == (1, 16, 576, 512)
    assert attn.cache_bytes == 1001 * 576 * 2
    assert ops["qkv_proj"].shape.n == 16 * 192 + 576
    assert ops["gate_up_proj"].count == 1 and ops["experts"].count == 26  # first layer dense
    assert ops["shared_gate_up_proj"].shape.n == 2 * 2 * 1408


def test_tensor_parallel_shards_heads_ffn_and_vocab():
    m = load_model("llama3_8b")
    one = ops_by_name(m, ForwardShape.uniform(1, 1, 0, tp=1))
    two = ops_by_name(m, ForwardShape.uniform(1, 1, 0, tp=2))
    assert two["qkv_proj"].shape.n * 2 == one["qkv_proj"].shape.n
    assert two["down_proj"].shape.k * 2 == one["down_proj"].shape.k
    assert two["lm_head"].shape.n * 2 == one["lm_head"].shape.n
    assert "allreduce" in two and "allreduce" not in one
    with pytest.raises(ConfigError, match="tp=3"):
        decompose(m, ForwardShape.uniform(1, 1, 0, tp=3))
