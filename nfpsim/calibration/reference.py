"""Import kernel timings measured elsewhere into calibration measurements, with their provenance.

Two formats are read:

- a *kernel sweep* JSON (``meta``, ``ceilings``, ``gemm``, ``moe``, ``attn`` lists; the shipped
  ``calibration/reference/h100_sxm_kernels.json`` is one): cuBLAS and fixed-tile Triton GEMMs, the gate_up
  phase of a fused MoE (Triton tiles, ``torch._grouped_mm``) and SDPA with one backend forced, timed in CUDA
  graphs with inputs rotated so no read is served from L2. Times in microseconds.
- Vidur's public per-op profiles (microsoft/vidur, MIT licence, ``data/profiling/compute/<gpu>/<model>/
  mlp.csv``, or the compact copy ``calibration/reference/vidur_<gpu>_mlp.csv`` that keeps the per-op medians):
  GEMMs of a vLLM-style forward at ``num_tokens`` tokens and tensor-parallel degree, in milliseconds.

Each point becomes a :class:`~nfpsim.latency.table.Measurement` of the implementation it describes
(``vendor`` for cuBLAS / grouped_mm / torch SDPA timed in CUDA graphs, ``triton`` for Triton kernels,
``serving`` for the kernels of Vidur's vLLM-style forward, timed eagerly with CUDA events), with ``dims`` naming the
kernel variant where it is not the preset's own choice (a fixed tile, a forced attention backend), and a
deterministic train/held-out split (about one point in four held out) that every fit respects.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nfpsim.errors import ConfigError
from nfpsim.latency.table import CALIBRATION_DIR, Measurement
from nfpsim.shapes import AttentionShape, GemmShape, GroupedGemmShape, Op, PointwiseShape

REFERENCE_DIR = CALIBRATION_DIR / "reference"
HELDOUT_EVERY = 4  # one point in four (by a hash of the point) is kept out of every fit

# Vidur's GPU folder names -> nfpsim hardware configs
VIDUR_GPUS = {"h100": "h100_sxm", "a100": "a100_80g"}
VIDUR_GEMMS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
US, MS = 1e-6, 1e-3


@dataclass(frozen=True)
class ImportedSet:
    """Measurements of one GPU from one source."""

    slug: str  # hardware config name
    source: str  # where the numbers came from, for the provenance
    measurements: tuple[Measurement, ...]
    ceilings: dict | None = None  # copy_bytes_per_s, bf16_flop_per_s when the source measured them
    gpu_name: str = ""


def heldout(key: str) -> bool:
    """The deterministic split: a stable hash of the point's identity."""
    return zlib.crc32(key.encode()) % HELDOUT_EVERY == 0


def _measurement(implementation: str, op: Op, seconds: float, dims: dict | None = None) -> Measurement:
    dims = dict(dims or {})
    dims["split"] = "heldout" if heldout(f"{implementation}|{op.name}|{op.shape}|{sorted(dims.items())}") \
        else "train"
    return Measurement(implementation, op, seconds, 0.0, tuple(sorted(dims.items())))


def split_of(m: Measurement) -> str:
    return str(dict(m.dims).get("split", "train"))


def variant_dims(m: Measurement) -> dict:
    """The kernel-variant dims of a measurement (the split tag removed)."""
    return {k: v for k, v in m.dims if k != "split"}


# ----------------------------------------------------------------------------------------------------
# Kernel sweep JSON
# ----------------------------------------------------------------------------------------------------

TRITON_TILES = {16: (16, 64, 128), 32: (32, 64, 128), 64: (64, 128, 64), 128: (128, 128, 64)}
SDPA_COLUMNS = {"flash_us": "flash", "cudnn_us": "cudnn", "efficient_us": "efficient"}


def read_kernel_sweep(path: Path, slug: str) -> ImportedSet:
    data = json.loads(Path(path).read_text())
    out: list[Measurement] = []
    for r in data.get("gemm", []):
        op = Op(str(r["shape"]).split(".")[-1], "gemm", GemmShape(int(r["M"]), int(r["N"]), int(r["K"]), 2))
        out.append(_measurement("vendor", op, float(r["cublas_us"]) * US))
        for bm, (block_m, block_n, block_k) in TRITON_TILES.items():
            if f"triton_bm{bm}_us" in r:
                dims = {"block_m": block_m, "block_n": block_n, "block_k": block_k, "split_k": 1}
                out.append(_measurement("triton", op, float(r[f"triton_bm{bm}_us"]) * US, dims))
    for r in data.get("moe", []):
        shape = GroupedGemmShape(int(r["M"]) * int(r["topk"]), int(r["N"]), int(r["K"]), int(r["E"]), 2,
                                 float(r["active_experts"]))
        op = Op(f"{r['shape']}.gate_up", "moe", shape)
        out.append(_measurement("vendor", op, float(r["grouped_mm_us"]) * US))
        for bm, (block_m, block_n, block_k) in ((16, TRITON_TILES[16]), (64, TRITON_TILES[64])):
            dims = {"block_m": block_m, "block_n": block_n, "block_k": block_k}
            out.append(_measurement("triton", op, float(r[f"triton_bm{bm}_us"]) * US, dims))
    for r in data.get("attn", []):
        b, length, hq, hkv, d, m = (int(r[k]) for k in ("B", "L", "Hq", "Hkv", "D", "M"))
        # q [B, Hkv, g*M, D] over K/V [B, Hkv, L, D], no mask: the GQA-folded call
        shape = AttentionShape(b, m, length - m, hq, hkv, d, d, 2 * d, False, 2, folded_gqa=True)
        op = Op("attention", "attention", shape)
        for column, backend in SDPA_COLUMNS.items():
            if column in r:
                out.append(_measurement("vendor", op, float(r[column]) * US, {"backend": backend}))
    ceilings = data.get("ceilings") or None
    if ceilings:
        ceilings = {"copy_bytes_per_s": float(ceilings["copy_bytes_per_s"]),
                    "bf16_flop_per_s": float(ceilings["bf16_flops_per_s"])}
    meta = data.get("meta", {})
    source = (f"{Path(path).name}: kernel sweep on {meta.get('gpu', '?')}, {meta.get('date', '?')}, "
              f"torch {meta.get('torch', '?')}, triton {meta.get('triton', '?')}, CUDA {meta.get('cuda', '?')}; "
              f"{meta.get('timing', '')}")
    return ImportedSet(slug, source, tuple(out), ceilings, str(meta.get("gpu", "")))


# ----------------------------------------------------------------------------------------------------
# Vidur profiles
# ----------------------------------------------------------------------------------------------------


def _vidur_rows(path: Path) -> Iterable[tuple[str, dict]]:
    """(model, row with per-op medians in ms) from a raw Vidur tree or the compact CSV."""
    path = Path(path)
    if path.is_file():
        with path.open() as f:
            for row in csv.DictReader(f):
                yield row["model"], {k[:-len("_median_ms")]: v for k, v in row.items() if k.endswith("_median_ms")} \
                    | {k: row[k] for k in row if not k.endswith("_median_ms")}
        return
    for csv_path in sorted(path.glob("*/*/mlp.csv")):
        model = f"{csv_path.parent.parent.name}/{csv_path.parent.name}"
        seen = set()
        with csv_path.open() as f:
            for row in csv.DictReader(f):
                key = (row["num_tokens"], row["num_tensor_parallel_workers"])
                if key in seen:
                    continue
                seen.add(key)
                ops = {k.split(".")[1]: v for k, v in row.items() if k.startswith("time_stats.") and k.endswith(".median")}
                yield model, ops | row


def vidur_gemms(row: dict) -> dict[str, GemmShape]:
    """The four GEMMs of one Vidur row at its token count and TP degree."""
    heads, kv_heads, hidden = int(row["n_head"]), int(row["n_kv_head"]), int(row["n_embd"])
    ffn, tp, tokens = int(row["n_expanded_embd"]), int(row["num_tensor_parallel_workers"]), int(row["num_tokens"])
    head_dim = hidden // heads
    gated = str(row["use_gated_mlp"]).lower() == "true"
    return {
        "attn_pre_proj": GemmShape(tokens, (heads + 2 * kv_heads) * head_dim // tp, hidden, 2),
        "attn_post_proj": GemmShape(tokens, hidden, heads * head_dim // tp, 2),
        "mlp_up_proj": GemmShape(tokens, (2 if gated else 1) * ffn // tp, hidden, 2),
        "mlp_down_proj": GemmShape(tokens, hidden, ffn // tp, 2),
    }


def vidur_pointwise(row: dict) -> dict[str, tuple[str, PointwiseShape]]:
    """vLLM's fused pointwise kernels of one Vidur row as the fused-glue ops of :func:`decompose`:
    (op name, shape). Bytes as the kernels move them (bf16); rotary is applied in place to q and k."""
    heads, kv_heads, hidden = int(row["n_head"]), int(row["n_kv_head"]), int(row["n_embd"])
    ffn, tp, t = int(row["n_expanded_embd"]), int(row["num_tensor_parallel_workers"]), int(row["num_tokens"])
    s, x = 2, t * hidden
    qk = t * (heads + kv_heads) // tp * (hidden // heads)
    f = t * ffn // tp
    return {
        "input_layernorm": ("rms_norm", PointwiseShape(2.0 * x * s + hidden * s, x, "norm", t)),
        "post_attention_layernorm": ("add_norm", PointwiseShape(4.0 * x * s + hidden * s, x, "add_norm", t)),
        "attn_rope": ("rotary", PointwiseShape(2.0 * qk * s, qk, "rotary", t)),
        "mlp_act": ("act_mul", PointwiseShape(3.0 * f * s, f, "act", t)),
        "add": ("residual_add", PointwiseShape(3.0 * x * s, x)),
        "emb": ("embedding", PointwiseShape(2.0 * x * s + 4 * t, x, "gather")),
    }


def vidur_tokens_kept(tokens: int) -> bool:
    """Vidur profiles every 8-32 tokens up to 4k-32k; the table keeps powers of two and multiples of 16 to
    64, multiples of 64 to 1024 and of 512 beyond (the shape of the curves survives, the file stays small)."""
    if tokens <= 64:
        return tokens % 16 == 0 or tokens & (tokens - 1) == 0
    return tokens % 64 == 0 if tokens <= 1024 else tokens % 512 == 0


def read_vidur(path: Path, slug: str) -> ImportedSet:
    out: list[Measurement] = []
    for model, row in _vidur_rows(path):
        if not vidur_tokens_kept(int(row["num_tokens"])):
            continue
        for name, shape in vidur_gemms(row).items():
            value = row.get(name, "")
            if value not in ("", None):
                out.append(_measurement("serving", Op(f"{model}:{name}", "gemm", shape), float(value) * MS))
        # phi-2 (the one model without a gated MLP) runs LayerNorm and GELU: other kernels than the
        # RMSNorm and SiLU-and-mul these ops name, so its pointwise timings are left out
        gated = str(row["use_gated_mlp"]).lower() == "true"
        for column, (name, shape) in (vidur_pointwise(row) if gated else {}).items():
            value = row.get(column, "")
            if value not in ("", None) and float(value) > 0:
                out.append(_measurement("serving", Op(name, "pointwise", shape), float(value) * MS))
    source = (f"Vidur public profiles ({Path(path).name}; microsoft/vidur data/profiling at commit "
              f"7d47513363ec447a741ac5e47241580b47724fbf, MIT licence): per-op CUDA-event medians")
    return ImportedSet(slug, source, tuple(out))


def read_source(path: Path) -> list[ImportedSet]:
    """Every measurement set in ``path``: a kernel-sweep JSON, a Vidur CSV or tree, or a directory of them
    (file names say the GPU: ``<hardware>_kernels.json``, ``vidur_<gpu>_mlp.csv``)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"source={path}: no such file or directory")
    if path.is_dir() and not any(path.glob("*/*/mlp.csv")):
        sets = [s for child in sorted(path.iterdir()) if child.suffix in (".json", ".csv")
                for s in read_source(child)]
        if not sets:
            raise ConfigError(f"source={path}: no kernel sweep (*_kernels.json) or Vidur profile in it")
        return sets
    name = path.name
    if name.endswith("_kernels.json"):
        return [read_kernel_sweep(path, name[:-len("_kernels.json")])]
    for gpu, slug in VIDUR_GPUS.items():
        if name in (f"vidur_{gpu}_mlp.csv", gpu):
            return [read_vidur(path, slug)]
    raise ConfigError(f"source={path}: unknown format (expected <hardware>_kernels.json, vidur_<gpu>_mlp.csv or "
                      f"a Vidur compute/<gpu> directory with gpu in {', '.join(VIDUR_GPUS)})")
