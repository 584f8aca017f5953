"""Chrome-trace (Perfetto) events of the forwards of a window of a run: step, forward, layer and op spans.

The latency model's per-op breakdown merges layers of the same kind into one op with a count; the trace
lays them back out layer by layer in the order a decoder layer runs them (norm, qkv, rotary + KV write,
attention, o_proj, all-reduce, norm, FFN or MoE, all-reduce), so the spans of a forward add up to its
priced latency. Open the JSON in https://ui.perfetto.dev or chrome://tracing.
"""

from __future__ import annotations

from collections.abc import Sequence

from nfpsim.config import ModelSpec
from nfpsim.latency.base import Breakdown, OpTiming
from nfpsim.sim.simulator import TracedForward

US = 1e6  # trace timestamps are microseconds
PID, TID = 1, 1


def _span(name: str, start_s: float, duration_s: float, category: str, args: dict | None = None) -> dict:
    event = {"name": name, "cat": category, "ph": "X", "ts": start_s * US, "dur": duration_s * US,
             "pid": PID, "tid": TID}
    if args:
        event["args"] = args
    return event


def layer_plan(breakdown: Breakdown, model: ModelSpec) -> tuple[list[OpTiming], list[list[OpTiming]], list[OpTiming]]:
    """``(before the layers, ops of each layer in order, after the layers)``; each op appears as many
    times as it runs. An op run once per forward is before the layers if it comes before them in the
    breakdown (embedding, the rotary rows), after otherwise (final norm, LM head); an op run twice per
    layer (the norms, the all-reduce) opens the attention block and the FFN; attention-block ops run in
    every layer, FFN ops in the layers of their kind (dense or MoE)."""
    layers_n = model.num_layers
    first = next((i for i, op in enumerate(breakdown.ops) if op.count > 1), len(breakdown.ops))
    once = [op for op in breakdown.ops if op.count == 1 and layers_n > 1]
    before = [op for op in once if breakdown.ops.index(op) < first]
    after = [op for op in once if breakdown.ops.index(op) >= first]
    twice = [op for op in breakdown.ops if op.count == 2 * layers_n]
    block = [op for op in breakdown.ops if op.count == layers_n and op.module != "ffn"]
    dense = [op for op in breakdown.ops if op.module == "ffn" and op.count == model.num_dense_layers]
    moe = [op for op in breakdown.ops if op.module == "ffn" and op.count == model.num_moe_layers
           and op not in dense]
    layers = []
    for i in range(layers_n):
        layers.append(twice + block + twice + (dense if i < model.num_dense_layers else moe))
    return before, layers, after


def forward_events(breakdown: Breakdown, model: ModelSpec, start_s: float, label: str) -> list[dict]:
    """A forward span holding one span per layer, each holding its op spans."""
    before, layers, after = layer_plan(breakdown, model)
    events = [_span(label, start_s, breakdown.total_s, "forward", {"model": model.name})]
    t = start_s
    for op in before:
        events.append(_span(op.name, t, op.cost.time_s, "op", {"bound": op.cost.bound}))
        t += op.cost.time_s
    for i, ops in enumerate(layers):
        layer_s = sum(op.cost.time_s for op in ops)
        events.append(_span(f"layer {i}", t, layer_s, "layer"))
        for op in ops:
            events.append(_span(op.name, t, op.cost.time_s, "op", {"bound": op.cost.bound}))
            t += op.cost.time_s
    for op in after:
        events.append(_span(op.name, t, op.cost.time_s, "op", {"bound": op.cost.bound}))
        t += op.cost.time_s
    return events


def chrome_trace(traced: Sequence[TracedForward], latency, model: ModelSpec, proposer: ModelSpec | None) -> dict:
    """The trace of ``traced`` forwards; per-layer spans need ``latency.forward`` (a LatencyModel)."""
    events: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": PID, "args": {"name": f"replica: {model.name}"}},
        {"name": "thread_name", "ph": "M", "pid": PID, "tid": TID, "args": {"name": "GPU (rank 0)"}},
    ]
    layered = hasattr(latency, "forward")
    for step, fwd in enumerate(traced):
        decode = fwd.shape.groups[0] if fwd.shape.groups and fwd.shape.groups[0].scored is None else None
        args = {"decode_seqs": decode.num_seqs if decode else 0, "positions": decode.positions if decode else 0,
                "tokens": fwd.shape.num_tokens, "proposal_s": fwd.cost.proposal_s}
        events.append(_span(f"step {step}", fwd.start_s, fwd.cost.total_s, "step", args))
        t = fwd.start_s
        for j, shape in enumerate(fwd.proposal_shapes):
            if layered and proposer is not None:
                breakdown = latency.forward(proposer, shape)
                events += forward_events(breakdown, proposer, t, f"propose {j + 1}")
                t += breakdown.total_s
        t = fwd.start_s + fwd.cost.proposal_s
        if layered:
            events += forward_events(latency.forward(model, fwd.shape), model, t, "verify" if fwd.proposal_shapes
                                     else "forward")
    return {"traceEvents": events, "displayTimeUnit": "ms"}
