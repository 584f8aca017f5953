"""Real code no one here wrote: Hugging Face decoders with their own KV cache, captured on meta."""

import pytest
import torch

pytest.importorskip("transformers")

import nfpsim  # noqa: E402
from examples import hf_decoders  # noqa: E402
from nfpsim.shapes import AttentionShape, GroupedGemmShape  # noqa: E402


def capture(builder, batch, positions, context):
    fn, args, kwargs = builder(batch, positions, context)
    return nfpsim.capture(fn, *args, **kwargs)


@pytest.mark.slow
def test_hf_llama_launches_its_gemms_one_sdpa_per_layer_and_concatenates_its_cache():
    b, m, ctx = 2, 3, 512
    graph = capture(hf_decoders.llama3_8b, b, m, ctx)
    assert graph.unpriced == ()
    gemms = [c.op.shape for c in graph.ops if c.family == "gemm"]
    h, f, kv, v = 4096, 14336, 1024, 128256
    per_layer = 2 * (h * h + 2 * kv * h + h * h + 3 * h * f)
    assert len(gemms) == 32 * 7 + 1 and sum(g.weight_bytes for g in gemms) == 32 * per_layer + 2 * v * h
    assert all(g.tokens == b * m for g in gemms)  # the LM head too: every position is scored
    attention = [c.op.shape for c in graph.ops if c.family == "attention"]
    assert len(attention) == 32 and len(set(attention)) == 1
    a = attention[0]
    assert isinstance(a, AttentionShape) and (a.num_seqs, a.positions, a.context, a.q_heads) == (b, m, ctx, 32)
    # DynamicCache: each layer concatenates the new keys and values onto everything cached, every step
    cache_cats = [c.op.shape for c in graph.ops if c.aten == "cat" and c.op.shape.bytes > 2 * b * m * h * 2]
    assert len(cache_cats) == 64
    assert cache_cats[0].bytes == 2 * b * 8 * (ctx + m) * 128 * 2  # read old + new, write all: bf16


@pytest.mark.slow
def test_hf_qwen3_moe_routes_through_grouped_gemms():
    b, m, ctx = 1, 4, 256
    graph = capture(hf_decoders.qwen3_30b_a3b, b, m, ctx)
    assert graph.unpriced == ()
    grouped = [c.op.shape for c in graph.ops if isinstance(c.op.shape, GroupedGemmShape)]
    assert len(grouped) == 2 * 48
    assert grouped[0] == GroupedGemmShape(b * m * 8, 2 * 768, 2048, 128, 2)  # gate_up of the top-8 rows
    assert grouped[1] == GroupedGemmShape(b * m * 8, 2048, 768, 128, 2)
    assert {c.op.module for c in graph.ops if isinstance(c.op.shape, GroupedGemmShape)} == {"ffn"}
    latency = nfpsim.latency_model(hardware="h200", kernels="vendor")
    assert graph.time(latency) == pytest.approx(sum(r.seconds for r in graph.table(latency)))
    assert torch.device("meta") == next(hf_decoders._model("qwen3_30b_a3b").parameters()).device
