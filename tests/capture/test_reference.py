"""One source of truth: nfpsim's own vendor reference forward (the one nfpsim-validate runs), built on
meta and captured step by step, launches the kernels and moves the bytes ``decompose`` prices for it.

Each step of :class:`~nfpsim.validation.forward.DecodeForward` runs one decompose op of one layer, so a
step's captured kernels are compared with that op: per layer and per family (the decompose op's family),
the number of kernels and the bytes (within 1%). The Triton reference forward cannot be captured: its
kernels are Triton launches, not aten ops.
"""

from collections import defaultdict

import pytest
import torch

import nfpsim
from nfpsim.config import load_kernels, load_model
from nfpsim.latency.analytic import family_of
from nfpsim.shapes import ForwardShape, MoeShape, decompose
from nfpsim.validation.forward import build_forward
from nfpsim.validation.model import KVCache, ModelWeights

CASES = [("llama3_8b", 1, 1, 4096), ("llama3_8b", 2, 16, 1024), ("qwen3_30b_a3b", 1, 4, 4096)]


def decompose_launches(op, kernels) -> int:
    """Kernels one decompose op stands for: one each, but a whole MoE block is its implementation's launches."""
    return kernels.moe.launches if isinstance(op.shape, MoeShape) else 1


def per_layer_family(model_name: str, batch: int, positions: int, context: int):
    """{(layer, family): {"decompose": [kernels, bytes, flops], "captured": [...], "ops": {...}}}: each step's
    priced ops (``step.ops``) against what capturing that step records, per family."""
    model, kernels = load_model(model_name), load_kernels("vendor")
    weights = ModelWeights.random(model, "meta", torch.bfloat16)
    cache = KVCache.random(model, batch, context + positions, "meta", torch.bfloat16)
    forward = build_forward(weights, cache, "vendor", None, batch=batch, positions=positions, context=context)
    priced = {op.name: op for op in decompose(model, ForwardShape.uniform(batch, positions, context), "eager")}
    rows = defaultdict(lambda: {"decompose": [0, 0.0, 0.0], "captured": [0, 0.0, 0.0], "ops": {}})
    for step in forward.steps:
        graph = nfpsim.capture(step.run)
        for name in step.ops:
            op = priced[name]
            row = rows[(step.layer, family_of(op))]
            launches = decompose_launches(op, kernels)
            row["decompose"] = [a + b for a, b in zip(row["decompose"], (launches, op.shape.bytes, op.shape.flops))]
            row["ops"][name] = (launches, op.shape.bytes)
        moe_step = any(isinstance(priced[name].shape, MoeShape) for name in step.ops)
        for c in graph.ops:  # a routed-expert step is one MoE block on both sides, its glue included
            row = rows[(step.layer, "moe" if moe_step else family_of(c.op))]
            n = c.op.count
            row["captured"] = [a + b for a, b in zip(row["captured"], (n, c.op.shape.bytes * n, c.op.shape.flops * n))]
            row["ops"].setdefault(f"captured {c.aten}", (c.op.count, c.op.shape.bytes))
    return rows


def differences(rows, families) -> list[str]:
    """Per (layer, family): the same number of kernels, bytes and FLOPs within 1%. For MoE only the
    kernels: which experts the tokens wake is data, priced as an expectation by decompose and unknown
    to a capture (it records the grouped GEMM as over min(experts, rows) weight matrices)."""
    found = []
    for (layer, family), row in sorted(rows.items(), key=lambda kv: (kv[0][0] is not None, kv[0][0] or 0, kv[0][1])):
        if family not in families:
            continue
        (dk, db, df), (ck, cb, cf) = row["decompose"], row["captured"]
        amounts_differ = abs(cb - db) > 0.01 * max(db, 1.0) or abs(cf - df) > 0.01 * max(df, 1.0)
        if dk != ck or (family != "moe" and amounts_differ):
            found.append(f"layer {layer} {family}: decompose {dk} kernels {db:.0f} B, captured {ck} kernels "
                         f"{cb:.0f} B; ops {row['ops']}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_gemms_and_attention_are_the_same_kernels_and_bytes_per_layer(case):
    rows = per_layer_family(*case)
    assert {family for _, family in rows} >= {"gemm", "attention", "pointwise"}
    assert differences(rows, {"gemm", "attention"}) == []


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_every_family_is_the_same_kernels_and_bytes_per_layer(case):
    rows = per_layer_family(*case)
    found = differences(rows, {"gemm", "attention", "pointwise", "moe"})
    assert found == [], "\n".join(found[:40])
