"""Time the decode kernels at Llama-3-8B / Qwen3-30B-A3B shapes against the vendor path, in CUDA graphs.

Run on a CUDA machine from the repository root (needs only torch, triton, numpy):

    PYTHONPATH=. python benchmarks/bench_kernels.py [--sections gemm attention moe] [--replays 30]

Every figure is the median over graph replays of one call. A replay runs the call on several disjoint
copies of its buffers, together at least ``4 x L2``, so the weights and KV cache come from HBM as in
a real forward rather than from L2 left warm by the previous call. Achieved bandwidth is set against
a device-to-device copy measured the same way (the practical HBM ceiling). For each shape our kernel
is timed over a small sweep of tile configurations and the fastest is printed with its config.

Byte formulas (s = bytes per element, 2 for bf16):
- GEMM        y[T,N] = x[T,K] @ w[N,K]^T : s * (K*N + T*K + T*N)
- attention   B seqs, M new positions, L cached : s * (2*B*L*Hkv*D + 2*B*M*Hq*D)   (K+V, then q+o)
- fused MoE   A distinct experts woken : s * (A*3*F*H + 2*T*H)
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Iterator

import torch

DEVICE = "cuda"
DTYPE = torch.bfloat16
BYTES_PER_ELEMENT = 2

# Llama-3-8B linear layers as (N, K).
GEMM_SHAPES = {"qkv_proj": (6144, 4096), "gate_up_proj": (28672, 4096), "down_proj": (4096, 14336)}
GEMM_TOKENS = (1, 16, 17, 64, 128, 256)
# Llama-3-8B attention: 32 query heads over 8 KV heads of dim 128.
ATTN_HEADS = dict(num_q_heads=32, num_kv_heads=8, head_dim=128)
ATTN_BATCHES, ATTN_CONTEXT, ATTN_POSITIONS = (1, 8), 4096, (1, 4, 16, 64)
# Qwen3-30B-A3B experts.
MOE_SHAPE = dict(hidden=2048, ffn=768, num_experts=128, top_k=8)
MOE_TOKENS = (1, 16, 64, 256)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def graph_time_us(calls: list[Callable[[], object]], replays: int) -> float:
    """Median time of one call, from a CUDA graph that runs every call (each on its own buffers) once."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside capture: compiles kernels, fills allocator pools
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times_ms = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times_ms.append(start.elapsed_time(end))
    return statistics.median(times_ms) * 1e3 / len(calls)


def l2_bytes() -> int:
    return getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20)


def copies_to_defeat_l2(bytes_per_call: int) -> int:
    return max(1, min(32, math.ceil(4 * l2_bytes() / bytes_per_call)))


def copy_ceiling_bytes_per_s(replays: int) -> float:
    """Device-to-device copy of 1 GiB: read + write bytes over time."""
    src = torch.empty(2**30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    return 2 * src.numel() / (graph_time_us([lambda: dst.copy_(src)], replays) * 1e-6)


def best_of(configs: Iterator[dict], make_calls: Callable[[dict], list], replays: int) -> tuple[float, dict]:
    """Fastest ``(time_us, config)``; configs the compiler rejects (e.g. out of shared memory) are skipped."""
    best = (math.inf, {})
    for config in configs:
        try:
            best = min(best, (graph_time_us(make_calls(config), replays), config), key=lambda r: r[0])
        except Exception as error:  # noqa: BLE001 - one bad config must not end the sweep
            print(f"    skipped {config}: {type(error).__name__}: {str(error).splitlines()[0][:100]}")
    return best


def _cells(time_us: float, num_bytes: int, ceiling: float) -> str:
    """``time  GB/s  % of the copy ceiling`` columns."""
    if not math.isfinite(time_us):
        return f"{'n/a':>9} {'':>10} {'':>6}"
    rate = num_bytes / (time_us * 1e-6)
    return f"{time_us:9.1f} {rate / 1e9:10.0f} {100 * rate / ceiling:5.0f}%"


def _short(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
def gemm_configs(T: int) -> Iterator[dict]:
    block_ms = [16] if T <= 16 else [32, 64] if T <= 64 else [64, 128]
    split_ks = [1, 2, 4] if T <= 64 else [1]
    for block_m in block_ms:
        for block_n, block_k, num_warps, num_stages in ((64, 128, 4, 4), (128, 64, 4, 4), (128, 128, 8, 3)):
            for split_k in split_ks:
                yield dict(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k,
                           num_warps=num_warps, num_stages=num_stages)  # fmt: skip


def bench_gemm(ceiling: float, replays: int) -> None:
    from nfpsim.kernels import decode_gemm

    print("\n== dense decode GEMM (bf16), bytes = s*(K*N + T*K + T*N) ==")
    print(f"{'op':>13} {'T':>4} | {'ours us':>9} {'GB/s':>10} {'ceil':>6} | {'torch us':>9} {'GB/s':>10} {'ceil':>6} | "
          "max|ours-torch|  config")  # fmt: skip
    for name, (N, K) in GEMM_SHAPES.items():
        for T in GEMM_TOKENS:
            num_bytes = BYTES_PER_ELEMENT * (K * N + T * K + T * N)
            sets = [(torch.randn(T, K, dtype=DTYPE, device=DEVICE),
                     torch.randn(N, K, dtype=DTYPE, device=DEVICE) * K**-0.5)
                    for _ in range(copies_to_defeat_l2(num_bytes))]  # fmt: skip
            ours_us, config = best_of(
                gemm_configs(T), lambda c: [lambda x=x, w=w: decode_gemm(x, w, **c) for x, w in sets], replays
            )
            torch_us = graph_time_us([lambda x=x, w=w: x @ w.T for x, w in sets], replays)
            x, w = sets[0]
            error = (decode_gemm(x, w, **config).float() - (x @ w.T).float()).abs().max().item() if config else math.nan
            print(f"{name:>13} {T:4d} | {_cells(ours_us, num_bytes, ceiling)} | "
                  f"{_cells(torch_us, num_bytes, ceiling)} | {error:14.3g}  {_short(config)}")  # fmt: skip
            del sets


def attention_configs(group: int, M: int, B: int, num_kv_heads: int) -> Iterator[dict]:
    block_q = min(64, max(16, 1 << (group * M - 1).bit_length()))
    q_tiles = math.ceil(group * M / block_q)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for block_kv in (64, 128):
        # Enough (sequence, KV head, q tile, split) programs for about two waves.
        base = max(1, min(ATTN_CONTEXT // block_kv, math.ceil(2 * sms / (B * num_kv_heads * q_tiles))))
        for num_splits in sorted({max(1, base // 2), base, min(ATTN_CONTEXT // block_kv, 2 * base)}):
            yield dict(block_q=block_q, block_kv=block_kv, num_splits=num_splits,
                       num_warps=4 if block_q <= 32 else 8, num_stages=2)  # fmt: skip


def _vendor_attention(q, k, v, group):
    """SDPA, flash backend only, in its native [B, H, L, D] layout; ``None`` where flash refuses."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    def with_gqa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return sdpa(q, k, v, enable_gqa=True)

    try:
        with_gqa()
        return with_gqa, "flash gqa"
    except RuntimeError:
        pass
    k_full, v_full = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)

    def expanded():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return sdpa(q, k_full, v_full)

    try:
        expanded()
        return expanded, "flash, kv expanded (reads g x bytes)"
    except RuntimeError:
        return None, "flash unavailable"


def bench_attention(ceiling: float, replays: int) -> None:
    from nfpsim.kernels import decode_attention

    Hq, Hkv, D = ATTN_HEADS["num_q_heads"], ATTN_HEADS["num_kv_heads"], ATTN_HEADS["head_dim"]
    group, L = Hq // Hkv, ATTN_CONTEXT
    print(f"\n== decode attention (bf16, Hq={Hq}, Hkv={Hkv}, D={D}, L={L} incl. the M new), "
          "bytes = s*(2*B*L*Hkv*D + 2*B*M*Hq*D) ==")  # fmt: skip
    print("   vendor: SDPA flash backend, bidirectional (its is_causal masks top-left, not for decode)")
    print(f"{'B':>2} {'M':>3} {'mask':>6} | {'ours us':>9} {'GB/s':>10} {'ceil':>6} | {'no-pack us':>10} | "
          f"{'sdpa us':>9} {'GB/s':>10} {'ceil':>6} | config")  # fmt: skip
    for B in ATTN_BATCHES:
        for M in ATTN_POSITIONS:
            num_bytes = BYTES_PER_ELEMENT * (2 * B * L * Hkv * D + 2 * B * M * Hq * D)
            sets = [(torch.randn(B, M, Hq, D, dtype=DTYPE, device=DEVICE),
                     torch.randn(B, L, Hkv, D, dtype=DTYPE, device=DEVICE),
                     torch.randn(B, L, Hkv, D, dtype=DTYPE, device=DEVICE))
                    for _ in range(copies_to_defeat_l2(num_bytes))]  # fmt: skip
            lens = torch.full((B,), L, dtype=torch.int32, device=DEVICE)
            vendor_sets = [(q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
                            v.transpose(1, 2).contiguous()) for q, k, v in sets]  # fmt: skip
            vendor_calls = [_vendor_attention(*qkv, group) for qkv in vendor_sets]
            vendor_us = math.nan
            if vendor_calls[0][0] is not None:
                vendor_us = graph_time_us([call for call, _ in vendor_calls], replays)
            for causal in (True, False):

                def calls(config, causal=causal):
                    return [lambda q=q, k=k, v=v: decode_attention(q, k, v, lens, causal=causal, **config)
                            for q, k, v in sets]  # fmt: skip

                ours_us, config = best_of(attention_configs(group, M, B, Hkv), calls, replays)
                no_pack = dict(config, pack_gqa=False, block_q=max(16, 1 << (M - 1).bit_length()))
                no_pack_us = best_of(iter([no_pack]), calls, replays)[0]
                vendor = f"{'':>9} {'':>10} {'':>6}" if causal else _cells(vendor_us, num_bytes, ceiling)
                note = "" if causal else f" (sdpa: {vendor_calls[0][1]})"
                print(f"{B:2d} {M:3d} {'causal' if causal else 'bidir':>6} | {_cells(ours_us, num_bytes, ceiling)} | "
                      f"{no_pack_us:10.1f} | {vendor} | {_short(config)}{note}")  # fmt: skip
            del sets, vendor_sets, vendor_calls


def moe_configs(T: int, top_k: int, num_experts: int) -> Iterator[dict]:
    rows_per_expert = T * top_k / num_experts
    block_ms = [16] if rows_per_expert <= 16 else [16, 32, 64]
    for block_m in block_ms:
        for block_n, block_k in ((64, 64), (128, 64), (64, 128)):
            yield dict(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=4, num_stages=3)


def bench_moe(ceiling: float, replays: int) -> None:
    from nfpsim.kernels import fused_moe, route

    H, F, E, k = (MOE_SHAPE[key] for key in ("hidden", "ffn", "num_experts", "top_k"))
    print(f"\n== fused MoE (bf16, H={H}, F={F}, E={E}, top-{k}, uniform random routing), "
          "bytes = s*(A*3*F*H + 2*T*H), A = distinct experts woken ==")  # fmt: skip
    print(f"{'T':>4} {'A':>4} | {'ours us':>9} {'GB/s':>10} {'ceil':>6} | config")
    w_gate_up = torch.randn(E, 2 * F, H, dtype=DTYPE, device=DEVICE) * H**-0.5
    w_down = torch.randn(E, H, F, dtype=DTYPE, device=DEVICE) * F**-0.5
    for T in MOE_TOKENS:
        x = torch.randn(T, H, dtype=DTYPE, device=DEVICE)
        topk_weights, topk_ids = route(torch.randn(T, E, device=DEVICE), k)
        active = int(topk_ids.unique().numel())  # host-side statistic, outside the timed graph
        num_bytes = BYTES_PER_ELEMENT * (active * 3 * F * H + 2 * T * H)
        ours_us, config = best_of(
            moe_configs(T, k, E),
            lambda c: [lambda: fused_moe(x, w_gate_up, w_down, topk_weights, topk_ids, **c)],
            replays,
        )
        print(f"{T:4d} {active:4d} | {_cells(ours_us, num_bytes, ceiling)} | {_short(config)}")


SECTIONS = {"gemm": bench_gemm, "attention": bench_attention, "moe": bench_moe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--replays", type=int, default=30, help="graph replays per timing (median)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device, nothing to time (run it on a GPU machine).")
        return
    torch.manual_seed(0)
    ceiling = copy_ceiling_bytes_per_s(args.replays)
    print(f"device: {torch.cuda.get_device_name(0)}; copy ceiling {ceiling / 1e9:.0f} GB/s (read+write of 1 GiB); "
          f"L2 {l2_bytes() / 2**20:.0f} MiB")  # fmt: skip
    for name in args.sections:
        SECTIONS[name](ceiling, args.replays)


if __name__ == "__main__":
    main()
