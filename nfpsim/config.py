"""Typed, frozen specs of the three things a latency question is about: a GPU, a model, and the kernels.

Configs arrive as plain mappings (Hydra/OmegaConf at the CLI, YAML files elsewhere); ``*.from_config``
validates them once, converts human units (TFLOP/s, TB/s, MiB, us) to SI, and fails with a one-line
:class:`~nfpsim.errors.ConfigError` naming the key and the allowed range. Nothing downstream re-checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfpsim.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1}

_MISSING = object()


class ConfigReader:
    """Reads typed fields from a mapping (dict or OmegaConf), naming ``prefix.key`` in every error."""

    def __init__(self, data: Any, prefix: str):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{prefix}: expected a mapping of settings, got {type(data).__name__}")
        self.data = data
        self.prefix = prefix

    def key(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.data and self.data[key] is not None:
            return self.data[key]
        if default is _MISSING:
            raise ConfigError(f"{self.key(key)} is missing")
        return default

    def int(self, key: str, *, low: int | None = None, high: int | None = None, default: Any = _MISSING) -> int:
        value = self.raw(key, default)
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{self.key(key)}={value!r}: must be an integer{_range(low, high)}")
        try:
            number = int(value) if not isinstance(value, float) else value
        except ValueError:
            raise ConfigError(f"{self.key(key)}={value!r}: must be an integer{_range(low, high)}") from None
        if isinstance(number, float):
            if not number.is_integer():
                raise ConfigError(f"{self.key(key)}={value!r}: must be an integer{_range(low, high)}")
            number = int(number)
        _check_range(self.key(key), number, low, high)
        return number

    def float(self, key: str, *, low: float | None = None, high: float | None = None,
              low_open: bool = False, default: Any = _MISSING) -> float:
        value = self.raw(key, default)
        if value is None:
            return value
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ConfigError(f"{self.key(key)}={value!r}: must be a finite number{_range(low, high, low_open)}")
        _check_range(self.key(key), number, low, high, low_open)
        return number

    def str(self, key: str, *, choices: tuple[str, ...] | None = None, default: Any = _MISSING) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{self.key(key)}={value!r}: must be a string")
        if choices is not None and value not in choices:
            raise ConfigError(f"{self.key(key)}={value!r}: allowed: {', '.join(choices)}")
        return value

    def bool(self, key: str, *, default: Any = _MISSING) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(key)}={value!r}: must be true or false")
        return value

    def section(self, key: str) -> ConfigReader:
        return ConfigReader(self.raw(key), self.key(key))

    def items(self, key: str) -> list[ConfigReader]:
        value = self.raw(key)
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or isinstance(value, Mapping):
            raise ConfigError(f"{self.key(key)}: expected a list")
        readers = [ConfigReader(item, f"{self.key(key)}[{i}]") for i, item in enumerate(value)]
        if not readers:
            raise ConfigError(f"{self.key(key)}: must not be empty")
        return readers


def _range(low, high, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}]"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def _check_range(key: str, number, low, high, low_open: bool = False) -> None:
    too_low = low is not None and (number <= low if low_open else number < low)
    if too_low or (high is not None and number > high):
        raise ConfigError(f"{key}={number}: must be{_range(low, high, low_open)}")


# ----------------------------------------------------------------------------------------------------
# Hardware
# ----------------------------------------------------------------------------------------------------

# Where a GPU has no measured ceiling yet, the achievable fraction of the datasheet peak is taken from
# the H100 measurements (calibration/reference/h100_sxm_kernels.json): copy ~3.0 of 3.35 TB/s, bf16 GEMM ~790 of 989 TFLOP/s.
ARCHITECTURES = ("sm80", "sm90", "sm100", "cdna3")
DEFAULT_COPY_FRACTION = 0.9
DEFAULT_MATMUL_FRACTION = 0.8


@dataclass(frozen=True)
class HardwareSpec:
    """One accelerator: datasheet peaks, measured ceilings where known, and granularity facts."""

    name: str
    arch: str  # sm80, sm90, sm100, cdna3: which kernels libraries dispatch to, which GPUs share constants
    bf16_flop_per_s: float
    fp8_flop_per_s: float | None
    hbm_bytes_per_s: float
    num_sms: int
    l2_bytes: int
    memory_bytes: int
    launch_overhead_s: float  # fixed cost of one kernel inside a CUDA graph
    interconnect_bytes_per_s: float  # per GPU, per direction (NVLink / Infinity Fabric)
    collective_latency_s: float
    measured_copy_bytes_per_s: float | None = None
    measured_bf16_flop_per_s: float | None = None
    device_names: tuple[str, ...] = ()  # regexes naming this GPU as the driver reports it
    description: str = ""

    @classmethod
    def from_config(cls, data: Any, prefix: str = "hardware") -> HardwareSpec:
        r = ConfigReader(data, prefix)
        measured = ConfigReader(r.raw("measured", {}), r.key("measured"))
        return cls(
            name=r.str("name"),
            arch=r.str("arch", choices=ARCHITECTURES),
            bf16_flop_per_s=r.float("bf16_tflop_per_s", low=0, low_open=True) * 1e12,
            fp8_flop_per_s=_scaled(r.float("fp8_tflop_per_s", low=0, low_open=True, default=None), 1e12),
            hbm_bytes_per_s=r.float("hbm_tb_per_s", low=0, low_open=True) * 1e12,
            num_sms=r.int("num_sms", low=1),
            l2_bytes=round(r.float("l2_mib", low=0, low_open=True) * 2**20),
            memory_bytes=round(r.float("memory_gib", low=0, low_open=True) * 2**30),
            launch_overhead_s=r.float("launch_overhead_us", low=0) * 1e-6,
            interconnect_bytes_per_s=r.float("interconnect_gb_per_s", low=0, low_open=True) * 1e9,
            collective_latency_s=r.float("collective_latency_us", low=0) * 1e-6,
            measured_copy_bytes_per_s=_scaled(
                measured.float("copy_tb_per_s", low=0, low_open=True, default=None), 1e12),
            measured_bf16_flop_per_s=_scaled(
                measured.float("bf16_tflop_per_s", low=0, low_open=True, default=None), 1e12),
            device_names=tuple(str(p) for p in r.raw("device_names", ())),
            description=r.str("description", default=""),
        )

    def peak_flop_per_s(self, dtype: str) -> float:
        """Datasheet dense matrix peak for ``dtype`` (fp16 counts as bf16)."""
        if dtype == "fp8":
            if self.fp8_flop_per_s is None:
                raise ConfigError(f"model.dtype=fp8: hardware {self.name} has no fp8 peak (allowed: bf16, fp16)")
            return self.fp8_flop_per_s
        return self.bf16_flop_per_s

    def balance_flop_per_byte(self, dtype: str = "bf16") -> float:
        """The roofline ridge from datasheet peaks: what the naive idle-compute argument uses."""
        return self.peak_flop_per_s(dtype) / self.hbm_bytes_per_s

    @property
    def stream_bytes_per_s(self) -> float:
        """Achievable HBM streaming rate: the measured copy ceiling, else a fraction of the datasheet."""
        return self.measured_copy_bytes_per_s or self.hbm_bytes_per_s * DEFAULT_COPY_FRACTION

    def matmul_flop_per_s(self, dtype: str) -> float:
        """Achievable dense matmul rate: measured (scaled to ``dtype``), else a fraction of the peak."""
        peak = self.peak_flop_per_s(dtype)
        if self.measured_bf16_flop_per_s is None:
            return peak * DEFAULT_MATMUL_FRACTION
        return self.measured_bf16_flop_per_s * peak / self.bf16_flop_per_s


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer as published in its ``config.json`` (names follow HF where they can).

    MoE models set ``num_experts > 0``; their first ``num_dense_layers`` layers use the dense FFN of
    ``ffn_size``. Multi-head latent attention (DeepSeek-V2) sets ``kv_lora_rank > 0``: the cache then
    holds one latent vector of ``kv_lora_rank + qk_rope_head_dim`` per token shared by all heads.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    max_context: int
    dtype: str = "bf16"
    attention_mask: str = "causal"  # "bidirectional" for diffusion LLMs (the block attends both ways)
    tie_embeddings: bool = False
    num_experts: int = 0
    top_k: int = 0
    expert_ffn_size: int = 0
    num_shared_experts: int = 0
    num_dense_layers: int = 0
    routing_skew: float = 0.0  # Zipf exponent of expert popularity; 0 is uniform routing
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        """Cross-field rules, for specs from configs and from code (a search builds them per trial).

        Ranges of single fields are checked by :meth:`from_config`; here: divisibility, top-k within the
        experts, and the defaults that depend on other fields (``v_head_dim`` is ``head_dim``, a dense
        model's layers are all dense layers).
        """
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.num_heads={self.num_heads} must divide model.hidden_size={self.hidden_size}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"model.num_kv_heads={self.num_kv_heads} must divide model.num_heads={self.num_heads}")
        if self.is_moe:
            if not 1 <= self.top_k <= self.num_experts:
                raise ConfigError(f"model.top_k={self.top_k} must be in [1, model.num_experts={self.num_experts}]")
            if self.expert_ffn_size < 1:
                raise ConfigError(f"model.expert_ffn_size={self.expert_ffn_size} must be >= 1 for an MoE model")
        else:
            object.__setattr__(self, "top_k", 0)
            object.__setattr__(self, "num_dense_layers", self.num_layers)
        if not 0 <= self.num_dense_layers <= self.num_layers:
            raise ConfigError(f"model.num_dense_layers={self.num_dense_layers} must be in [0, {self.num_layers}]")
        if self.num_dense_layers and self.ffn_size < 1:
            raise ConfigError(f"model.ffn_size={self.ffn_size} must be >= 1 (the model has dense layers)")
        if self.is_mla and self.qk_rope_head_dim < 1:
            raise ConfigError("model.qk_rope_head_dim must be >= 1 with model.kv_lora_rank > 0 (MLA)")
        if self.v_head_dim == 0:
            object.__setattr__(self, "v_head_dim", self.head_dim)

    @classmethod
    def from_config(cls, data: Any, prefix: str = "model") -> ModelSpec:
        r = ConfigReader(data, prefix)
        hidden = r.int("hidden_size", low=1)
        heads = r.int("num_heads", low=1)
        head_dim = r.int("head_dim", low=1, default=hidden // heads if hidden % heads == 0 else 1)
        return cls(
            name=r.str("name"),
            num_layers=r.int("num_layers", low=1),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=r.int("num_kv_heads", low=1, high=heads),
            head_dim=head_dim,
            ffn_size=r.int("ffn_size", low=0, default=0),
            vocab_size=r.int("vocab_size", low=1),
            max_context=r.int("max_context", low=1),
            dtype=r.str("dtype", choices=tuple(DTYPE_BYTES), default="bf16"),
            attention_mask=r.str("attention_mask", choices=("causal", "bidirectional"), default="causal"),
            tie_embeddings=r.bool("tie_embeddings", default=False),
            num_experts=r.int("num_experts", low=0, default=0),
            top_k=r.int("top_k", low=0, default=0),
            expert_ffn_size=r.int("expert_ffn_size", low=0, default=0),
            num_shared_experts=r.int("num_shared_experts", low=0, default=0),
            num_dense_layers=r.int("num_dense_layers", low=0, default=0),
            routing_skew=r.float("routing_skew", low=0, high=4, default=0.0),
            kv_lora_rank=r.int("kv_lora_rank", low=0, default=0),
            qk_rope_head_dim=r.int("qk_rope_head_dim", low=0, default=0),
            v_head_dim=r.int("v_head_dim", low=1, default=head_dim),
            description=r.str("description", default=""),
        )

    # -- derived shape facts -------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def bytes_per_element(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def gqa_group(self) -> int:
        """Query heads per KV head as a decode kernel sees them (MLA: all heads share one latent)."""
        return self.num_heads if self.is_mla else self.num_heads // self.num_kv_heads

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers

    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width: MLA heads carry a no-rope part and a rope part."""
        return self.head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def cache_elements_per_token(self) -> int:
        """KV-cache elements one token adds to one layer (all KV heads, keys and values)."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return self.num_kv_heads * (self.head_dim + self.v_head_dim)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token over all layers."""
        return self.num_layers * self.cache_elements_per_token * self.bytes_per_element

    @property
    def shared_ffn_size(self) -> int:
        return self.num_shared_experts * self.expert_ffn_size

    # -- parameter counts (the quality proxy of a co-design search) ----------------------------------
    def attention_params(self) -> int:
        h, nq = self.hidden_size, self.num_heads
        if self.is_mla:
            latent = self.kv_lora_rank + self.qk_rope_head_dim
            q = h * nq * self.qk_head_dim
            kv_up = self.kv_lora_rank * nq * (self.head_dim + self.v_head_dim)
            return q + h * latent + kv_up + nq * self.v_head_dim * h
        qkv = h * (nq * self.head_dim + self.num_kv_heads * (self.head_dim + self.v_head_dim))
        return qkv + nq * self.v_head_dim * h

    def param_counts(self) -> tuple[int, int]:
        """(total, active per token) parameters, embeddings and LM head included."""
        h = self.hidden_size
        dense_ffn = 3 * h * self.ffn_size
        expert = 3 * h * self.expert_ffn_size
        router = h * self.num_experts
        moe_total = router + expert * (self.num_experts + self.num_shared_experts)
        moe_active = router + expert * (self.top_k + self.num_shared_experts)
        embed = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        per_layer = self.attention_params()
        total = embed + self.num_layers * per_layer + self.num_dense_layers * dense_ffn
        active = total
        if self.is_moe:
            total += self.num_moe_layers * moe_total
            active += self.num_moe_layers * moe_active
        return total, active

    def weight_bytes(self) -> int:
        return self.param_counts()[0] * self.bytes_per_element


# ----------------------------------------------------------------------------------------------------
# Kernel presets: the granularity of one implementation of each op family
# ----------------------------------------------------------------------------------------------------

GEMM_BACKENDS = ("cublas", "triton")
MOE_BACKENDS = ("grouped_mm", "triton")
ATTENTION_BACKENDS = ("auto", "cudnn", "flash", "efficient", "triton", "paged")
GLUE_STYLES = ("eager", "fused")


@dataclass(frozen=True)
class GemmTile:
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 0  # 0: the host picks the split (the fastest power of two)
    max_tokens: int | None = None  # this tile serves token counts up to here (None: no limit)


@dataclass(frozen=True)
class GemmKernel:
    """Dense GEMM. ``triton``: ``tiles`` is the host's per-token-count rule, first entry whose
    ``max_tokens`` fits. ``cublas``: ``tiles`` are the candidate kernels the library's heuristic chooses
    from; the model takes the fastest for each shape (cuBLAS picks per shape, not per token range)."""

    backend: str
    tiles: tuple[GemmTile, ...]
    ctas_per_sm: int
    max_split_k: int
    launches: int = 1

    def select(self, tokens: int) -> GemmTile:
        for tile in self.tiles:
            if tile.max_tokens is None or tokens <= tile.max_tokens:
                return tile
        return self.tiles[-1]

    def candidates(self, tokens: int) -> tuple[GemmTile, ...]:
        return self.tiles if self.backend == "cublas" else (self.select(tokens),)


@dataclass(frozen=True)
class MoeKernel:
    """Routed experts as one grouped GEMM per projection: each expert's tokens padded to ``block_m`` rows."""

    backend: str
    block_m: int
    block_n: int
    block_k: int
    ctas_per_sm: int
    launches: int  # align/sort + gate_up + activation + down + combine, as the implementation runs them


@dataclass(frozen=True)
class AttentionKernel:
    """Decode attention over a KV cache with ``M`` new positions per sequence. ``backend``: nfpsim's
    ``triton`` kernel (tiles below), one of torch SDPA's backends (their tiling is theirs, see
    :mod:`nfpsim.latency.pricing.attention`), or ``auto``: the backend torch's SDPA picks on that GPU."""

    backend: str
    block_q: int = 16  # query rows per tile (after GQA packing); triton only
    block_kv: int = 64
    pack_gqa: bool = True  # one program serves all query heads of a KV head
    num_splits: int = 0  # split-KV chunks; 0: the host picks
    max_splits: int = 32
    ctas_per_sm: int = 2
    launches: int = 1  # the split-KV reduction adds one more when it runs
    page_size: int = 0  # paged backend: tokens per KV-cache page (reads round up to whole pages)


@dataclass(frozen=True)
class PointwiseKernel:
    """``fused``: one kernel per fused step (add+RMSNorm, rotary+KV write, SiLU*up, ...). ``eager``: the
    kernels a plain PyTorch forward launches (an fp32 RMSNorm is eight, rotate-half RoPE ten per layer)."""

    glue: str


@dataclass(frozen=True)
class KernelPreset:
    name: str
    gemm: GemmKernel
    moe: MoeKernel
    attention: AttentionKernel
    pointwise: PointwiseKernel
    description: str = ""
    # token counts a serving engine captured CUDA graphs for: a decode-only forward runs the graph of
    # the next size up, padded (empty: no padding, every forward priced at its own size)
    cuda_graph_batch_sizes: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, data: Any, prefix: str = "kernels") -> KernelPreset:
        r = ConfigReader(data, prefix)
        g, m, a, p = r.section("gemm"), r.section("moe"), r.section("attention"), r.section("pointwise")
        tiles = tuple(_gemm_tile(t) for t in g.items("tiles"))
        attention_backend = a.str("backend", choices=ATTENTION_BACKENDS)
        return cls(
            name=r.str("name"),
            description=r.str("description", default=""),
            gemm=GemmKernel(
                backend=g.str("backend", choices=GEMM_BACKENDS),
                tiles=tiles,
                ctas_per_sm=g.int("ctas_per_sm", low=1, default=1),
                max_split_k=g.int("max_split_k", low=1, default=1),
                launches=g.int("launches", low=1, default=1),
            ),
            moe=MoeKernel(
                backend=m.str("backend", choices=MOE_BACKENDS),
                block_m=m.int("block_m", low=1),
                block_n=m.int("block_n", low=1),
                block_k=m.int("block_k", low=1),
                ctas_per_sm=m.int("ctas_per_sm", low=1, default=1),
                launches=m.int("launches", low=1),
            ),
            attention=AttentionKernel(
                backend=attention_backend,
                block_q=a.int("block_q", low=1, default=16),
                block_kv=a.int("block_kv", low=1, default=64),
                pack_gqa=a.bool("pack_gqa", default=True),
                num_splits=a.int("num_splits", low=0, default=0),
                max_splits=a.int("max_splits", low=1, default=64),
                ctas_per_sm=a.int("ctas_per_sm", low=1, default=2),
                launches=a.int("launches", low=1, default=1),
                page_size=a.int("page_size", low=1, default=16) if attention_backend == "paged" else 0,
            ),
            pointwise=PointwiseKernel(glue=p.str("glue", choices=GLUE_STYLES)),
            cuda_graph_batch_sizes=_batch_sizes(r, "cuda_graph_batch_sizes"),
        )


def _batch_sizes(r: ConfigReader, key: str) -> tuple[int, ...]:
    """A strictly increasing list of positive integers (absent or empty: none)."""
    raw = r.raw(key, default=[])
    if isinstance(raw, (str, bytes, Mapping)) or not hasattr(raw, "__iter__"):
        raise ConfigError(f"{r.key(key)}: expected a list of positive integers")
    items = ConfigReader({str(i): v for i, v in enumerate(raw)}, r.key(key))
    sizes = tuple(items.int(str(i), low=1) for i in range(len(raw)))
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ConfigError(f"{r.key(key)}={list(sizes)}: must be strictly increasing")
    return sizes


def _gemm_tile(r: ConfigReader) -> GemmTile:
    return GemmTile(
        block_m=r.int("block_m", low=1),
        block_n=r.int("block_n", low=1),
        block_k=r.int("block_k", low=1),
        split_k=r.int("split_k", low=0, default=0),
        max_tokens=r.int("max_tokens", low=1, default=None),
    )


@dataclass(frozen=True)
class Specs:
    """The three things a latency question is about, as one composed config names them."""

    hardware: HardwareSpec
    model: ModelSpec
    kernels: KernelPreset

    @classmethod
    def from_config(cls, cfg: Any) -> Specs:
        r = ConfigReader(cfg, "")
        return cls(
            hardware=HardwareSpec.from_config(r.raw("hardware"), "hardware"),
            model=ModelSpec.from_config(r.raw("model"), "model"),
            kernels=KernelPreset.from_config(r.raw("kernels"), "kernels"),
        )


# ----------------------------------------------------------------------------------------------------
# Loading named configs outside Hydra (tests, search, simulator)
# ----------------------------------------------------------------------------------------------------

def available(group: str) -> list[str]:
    """Names of the configs in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def read_yaml(path: Path) -> dict:
    """A YAML mapping, read with libyaml's parser where PyYAML has it (the same data as ``safe_load``,
    several times faster: every command checks its overrides against all of ``conf/``)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open() as f:
        return yaml.load(f, Loader=loader) or {}


def load_group(group: str, name: str) -> dict:
    """The raw mapping of ``conf/<group>/<name>.yaml``; an unknown name lists the allowed ones."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{group}={name}: unknown {group}; allowed: {', '.join(available(group))}")
    data = read_yaml(path)
    data.pop("defaults", None)
    return data


def load_hardware(name: str) -> HardwareSpec:
    return HardwareSpec.from_config(load_group("hardware", name))


def load_model(name: str) -> ModelSpec:
    return ModelSpec.from_config(load_group("model", name))


def load_kernels(name: str) -> KernelPreset:
    return KernelPreset.from_config(load_group("kernels", name))
