"""The calibrated latency model: measurements where they exist, the fitted analytic model elsewhere.

For each op it answers, in this order (``OpCost.source`` says which):

- ``measured``: this exact shape was timed on this GPU with this implementation;
- ``corrected``: timed neighbours of the same op in the same *tile bucket* exist (same GEMM tile and
  M-tile count, same attention query-tile count, ...). The fitted analytic time is scaled by the
  neighbours' measured/fitted ratio, interpolated between the two neighbours that bracket the shape.
  Steps at tile boundaries come from the analytic model and are never smoothed over, because a
  neighbour across a boundary is never used;
- ``fitted``: the analytic model with the constants fitted from the table (efficiencies, L2 hit
  fraction, launch overhead) and the measured ceilings.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from nfpsim.config import GemmTile, HardwareSpec, KernelPreset
from nfpsim.errors import ConfigError
from nfpsim.latency.analytic import AnalyticLatencyModel
from nfpsim.latency.base import LatencyModel, OpCost
from nfpsim.latency.constants import LatencyConstants
from nfpsim.latency.pricing import attention_backend, family_of, pricer_key
from nfpsim.latency.table import CalibrationTable, Measurement, check_matches, load_table, table_path
from nfpsim.shapes import AttentionShape, GemmShape, MoeShape, Op, PointwiseShape


class CalibrationWarning(UserWarning):
    """A table is usable but only partly applies (other kernel configuration, missing family)."""


def preset_fingerprint(kernels: KernelPreset) -> dict:
    """The kernel configuration as JSON data, as a table records it."""
    return json.loads(json.dumps(dataclasses.asdict(kernels)))


# ----------------------------------------------------------------------------------------------------
# Neighbours: which measured shapes may correct a given shape
# ----------------------------------------------------------------------------------------------------


# Attention neighbours may differ in batch, context and positions (within one query-tile count);
# the nearest one within a factor 4 overall (sum of log distances) corrects.
MAX_ATTENTION_DISTANCE = math.log(4.0)


def _neighbour_key(op: Op, kernels: KernelPreset) -> tuple[tuple, tuple, tuple[float, ...]] | None:
    """(static identity, tile bucket, position along the varying axes) of an op, or None if the family
    is never measured. Two shapes may correct each other only with equal identity and bucket."""
    shape = op.shape
    if isinstance(shape, GemmShape):
        identity = (GemmShape, shape.n, shape.k, shape.bytes_per_element, shape.batch)
        if kernels.gemm.backend == "cublas":  # the library's kernel choice is per shape: no buckets known
            return identity, (), (math.log(shape.tokens),)
        tile = kernels.gemm.select(shape.tokens)
        bucket = (kernels.gemm.tiles.index(tile), math.ceil(shape.tokens / tile.block_m))
        return identity, bucket, (math.log(shape.tokens),)
    if isinstance(shape, MoeShape):
        identity = (MoeShape, shape.hidden, shape.ffn, shape.num_experts, shape.top_k, shape.routing_skew,
                    shape.bytes_per_element)
        # expected padded blocks are smooth in T: neighbours within a factor 1.5 of tokens
        return identity, (round(math.log(shape.tokens) / math.log(1.5)),), (math.log(shape.tokens),)
    if isinstance(shape, AttentionShape):
        attn = kernels.attention
        if attn.backend == "triton":
            rows, block = shape.positions * (shape.group if attn.pack_gqa else 1), attn.block_q
        else:  # SDPA backends tile queries by 64 or 128 rows of the call
            rows, block = shape.positions * (shape.group if shape.folded_gqa else 1), 64
        identity = (AttentionShape, shape.q_heads, shape.kv_heads, shape.qk_dim, shape.v_dim, shape.cache_dim,
                    shape.bytes_per_element, shape.folded_gqa, shape.explicit_mask, rows == 1)
        axes = (math.log(shape.num_seqs), math.log(max(shape.context, 1)), math.log(shape.positions))
        return identity, (math.ceil(rows / block),), axes
    if isinstance(shape, PointwiseShape):
        # a per-token kernel's time depends on its row width: only rows of the same width correct each other
        width = round(shape.elements / shape.rows) if shape.rows else None
        return (PointwiseShape, op.name, width), (round(math.log2(max(shape.bytes, 1.0))),), \
            (math.log(max(shape.bytes, 1.0)),)
    return None


class MeasurementIndex:
    """Measured times of one implementation, grouped for neighbour lookups."""

    def __init__(self, measurements: Iterable[tuple[Op, float]], kernels: KernelPreset,
                 fitted: AnalyticLatencyModel):
        self.kernels, self.fitted = kernels, fitted
        self.exact: dict[tuple, float] = {}
        groups: dict[tuple, list[tuple[tuple[float, ...], float, Op]]] = defaultdict(list)
        for op, time_s in measurements:
            self.exact[self._exact_key(op)] = time_s
            key = _neighbour_key(op, kernels)
            if key is not None:
                identity, bucket, axes = key
                groups[(identity, bucket)].append((axes, time_s, op))
        self.groups = {k: sorted(v, key=lambda item: item[0]) for k, v in groups.items()}

    @staticmethod
    def _exact_key(op: Op) -> tuple:
        return (op.name if isinstance(op.shape, PointwiseShape) else None, op.shape)

    def _ratio(self, item: tuple[tuple[float, ...], float, Op]) -> float:
        _, time_s, op = item
        return time_s / self.fitted.op_cost(op).time_s

    def lookup(self, op: Op, fitted_s: float) -> tuple[float, str] | None:
        measured = self.exact.get(self._exact_key(op))
        if measured is not None:
            return measured, "measured"
        key = _neighbour_key(op, self.kernels)
        if key is None:
            return None
        identity, bucket, axes = key
        group = self.groups.get((identity, bucket))
        if not group:
            return None
        if len(axes) > 1:  # attention: the nearest neighbour, if near enough
            near = min(group, key=lambda item: sum(abs(a - b) for a, b in zip(item[0], axes)))
            if sum(abs(a - b) for a, b in zip(near[0], axes)) > MAX_ATTENTION_DISTANCE:
                return None
            return fitted_s * self._ratio(near), "corrected"
        i = bisect.bisect_left([item[0] for item in group], axes)
        if 0 < i < len(group):  # bracketed: interpolate the measured/fitted ratio
            low, high = group[i - 1], group[i]
            w = (axes[0] - low[0][0]) / (high[0][0] - low[0][0])
            ratio = (1 - w) * self._ratio(low) + w * self._ratio(high)
        else:
            ratio = self._ratio(group[0] if i == 0 else group[-1])
        return fitted_s * ratio, "corrected"


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------


class CalibratedLatencyModel(LatencyModel):
    kind = "calibrated"

    def __init__(self, hardware: HardwareSpec, kernels: KernelPreset, table: CalibrationTable,
                 source: str = "calibration table"):
        super().__init__(hardware, kernels)
        what = "imported from external measurements" if table.imported else "measured by nfpsim-calibrate"
        self.origin = f"calibration table {source} ({what})"
        check_matches(table, hardware, source)
        if kernels.name not in table.fitted:
            raise ConfigError(f"{source} has no measurements of kernels={kernels.name}; measured: "
                              f"{', '.join(table.implementations()) or 'none'}")
        constants = table.constants(kernels.name, hardware, LatencyConstants.defaults(hardware, kernels))
        self.fitted = AnalyticLatencyModel(hardware, kernels, constants)
        self.fitted_families = set(table.fitted[kernels.name])
        self.table = table
        recorded = table.kernel_configs.get(kernels.name) or {}
        current = preset_fingerprint(kernels)
        # a measurement stays valid while its own family's configuration is the one it was timed with
        stale = {f for f in ("gemm", "moe", "attention", "pointwise") if recorded.get(f) != current.get(f)}
        if stale:
            warnings.warn(f"{source}: the {', '.join(sorted(stale))} configuration of kernels={kernels.name} "
                          f"changed since it was measured; those families use only its fitted constants",
                          CalibrationWarning, stacklevel=2)
        ops = [(m.op, m.time_s) for m in table.measurements
               if m.implementation == kernels.name and family_of(m.op) not in stale
               and is_preset_choice(m, kernels, hardware.arch)]
        self.index = MeasurementIndex(ops, kernels, self.fitted)

    def __fingerprint__(self) -> tuple:
        """Everything its prices follow from (the fitted model, index and families are derived from these),
        for :mod:`nfpsim.latency.remembered`."""
        return (self.hardware, self.kernels, self.table)

    def _price(self, op: Op) -> OpCost:
        cost = self.fitted.op_cost(op)
        key = pricer_key(op, self.kernels, self.hardware.arch)
        source = "fitted" if key in self.fitted_families else "analytic"
        hit = self.index.lookup(op, cost.time_s)
        if hit is not None:
            return dataclasses.replace(cost, time_s=hit[0], source=hit[1])
        return dataclasses.replace(cost, source=source)


def is_preset_choice(m: Measurement, kernels: KernelPreset, arch: str) -> bool:
    """A measurement of the kernel the preset itself runs for that op (not a variant timed for the fit:
    a fixed tile, or an attention backend the preset would not pick)."""
    dims = {k: v for k, v in m.dims if k in VARIANT_DIMS}
    if not dims:
        return True
    if set(dims) == {"backend"} and isinstance(m.op.shape, AttentionShape):
        return attention_backend(m.op.shape, kernels, arch) == dims["backend"]
    return False


# dims that name a kernel variant (others, like the train/held-out split, only describe the point)
VARIANT_DIMS = ("block_m", "block_n", "block_k", "split_k", "backend")


def variant_preset(kernels: KernelPreset, dims: dict) -> KernelPreset:
    """``kernels`` running the variant a measurement timed: a fixed GEMM or MoE tile, a forced backend."""
    out = kernels
    if "block_m" in dims:
        tile = GemmTile(int(dims["block_m"]), int(dims["block_n"]), int(dims["block_k"]), int(dims.get("split_k", 1)))
        out = dataclasses.replace(
            out, gemm=dataclasses.replace(out.gemm, backend="triton", tiles=(tile,)),
            moe=dataclasses.replace(out.moe, backend="triton", block_m=tile.block_m, block_n=tile.block_n,
                                    block_k=tile.block_k))
    if "backend" in dims:
        out = dataclasses.replace(out, attention=dataclasses.replace(out.attention, backend=str(dims["backend"])))
    return out


def load_calibrated(hardware: HardwareSpec, kernels: KernelPreset, path: Path | None = None) -> CalibratedLatencyModel:
    path = Path(path) if path else table_path(hardware.name)
    if not path.exists():
        raise ConfigError(f"latency=calibrated: no calibration table for hardware={hardware.name} ({path}); run "
                          f"nfpsim-calibrate on that GPU, or use latency=analytic")
    return CalibratedLatencyModel(hardware, kernels, load_table(path), str(path))
