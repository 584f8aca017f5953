"""The calibration table: what ``nfpsim-calibrate`` writes to ``calibration/<gpu-slug>.json``.

One file per GPU: provenance (device, driver, CUDA, torch, triton, date, kernel configs), measured
ceilings, every timed point (implementation, op, shape, median seconds) and the latency constants fitted
from them per implementation and op family, with their held-out error. Loading validates all of it:
a file from another GPU, another format or a truncated write is a one-line ConfigError, never a silent
wrong answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfpsim.config import CONF_DIR, HardwareSpec, available, load_group
from nfpsim.errors import ConfigError
from nfpsim.latency.constants import FAMILIES, KernelConstants, LatencyConstants
from nfpsim.shapes import AttentionShape, GemmShape, GroupedGemmShape, MoeShape, Op, PointwiseShape

FORMAT = "nfpsim-calibration/1"
CALIBRATION_DIR = CONF_DIR.parent / "calibration"

SHAPE_TYPES = {cls.__name__: cls for cls in (GemmShape, GroupedGemmShape, MoeShape, AttentionShape, PointwiseShape)}


def shape_to_dict(shape) -> dict:
    return {"type": type(shape).__name__, **{f.name: getattr(shape, f.name) for f in dataclasses.fields(shape)}}


def shape_from_dict(data: dict):
    data = dict(data)
    cls = SHAPE_TYPES.get(data.pop("type", None))
    if cls is None:
        raise ValueError(f"unknown shape type in {data}")
    return cls(**data)


@dataclass(frozen=True)
class Measurement:
    implementation: str
    op: Op  # name, module and shape exactly as decompose() produced them
    time_s: float
    spread_s: float = 0.0  # interquartile range of the repeats
    # the kernel variant timed where it is not the preset's own choice: a fixed GEMM/MoE tile
    # (block_m, block_n, block_k, split_k) or a forced attention backend (backend)
    dims: tuple[tuple[str, int | str], ...] = ()

    def to_dict(self) -> dict:
        return {"implementation": self.implementation, "op": self.op.name, "module": self.op.module,
                "shape": shape_to_dict(self.op.shape), "dims": dict(self.dims),
                "time_s": self.time_s, "spread_s": self.spread_s}

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        op = Op(data["op"], data["module"], shape_from_dict(data["shape"]))
        return cls(data["implementation"], op, float(data["time_s"]), float(data.get("spread_s", 0.0)),
                   tuple(sorted(data.get("dims", {}).items())))


@dataclass(frozen=True)
class CalibrationTable:
    gpu: dict  # name, slug, num_sms, l2_bytes, memory_bytes, capability
    provenance: dict  # driver, cuda, torch, triton, date, host, nfpsim
    ceilings: dict  # copy_bytes_per_s, bf16_flop_per_s, launch_overhead_s
    kernel_configs: dict  # implementation -> preset as used (dict)
    measurements: tuple[Measurement, ...]
    fitted: dict  # implementation -> pricer key -> KernelConstants fields
    fit_quality: dict  # implementation -> family -> {train_mape, heldout_mape, points}
    # sha256 of the file it was read from (None: built in memory); not part of what the table says
    source_sha256: str | None = dataclasses.field(default=None, compare=False, repr=False)

    def __fingerprint__(self) -> str:
        """What names this table's contents for :mod:`nfpsim.latency.remembered`: its file's digest, or
        the digest of its data."""
        if self.source_sha256 is not None:
            return self.source_sha256
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def slug(self) -> str:
        return self.gpu["slug"]

    def implementations(self) -> list[str]:
        return sorted(self.fitted)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "gpu": self.gpu, "provenance": self.provenance, "ceilings": self.ceilings,
                "kernel_configs": self.kernel_configs, "fitted": self.fitted, "fit_quality": self.fit_quality,
                "measurements": [m.to_dict() for m in self.measurements]}

    @classmethod
    def from_dict(cls, data: Any, source: str = "calibration table") -> CalibrationTable:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ConfigError(f"{source}: not an nfpsim calibration table (format {found!r}, expected {FORMAT})")
        try:
            table = cls(
                gpu=dict(data["gpu"]), provenance=dict(data["provenance"]), ceilings=dict(data["ceilings"]),
                kernel_configs=dict(data["kernel_configs"]),
                measurements=tuple(Measurement.from_dict(m) for m in data["measurements"]),
                fitted={impl: {fam: dict(c) for fam, c in fams.items()} for impl, fams in data["fitted"].items()},
                fit_quality=dict(data.get("fit_quality", {})),
            )
            for impl, families in table.fitted.items():
                for family, constants in families.items():
                    if family not in FAMILIES:
                        raise ValueError(f"unknown family {family!r}")
                    KernelConstants(**constants)
            for key in ("copy_bytes_per_s", "bf16_flop_per_s", "launch_overhead_s"):
                if not float(table.ceilings[key]) > 0:
                    raise ValueError(f"ceiling {key} must be positive")
            table.gpu["slug"]
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{source}: malformed calibration table ({error})") from None
        return table

    # -- what the latency model needs ------------------------------------------------------------------
    @property
    def arch(self) -> str:
        """The GPU architecture (tables older than the field: that of the hardware config of its slug)."""
        if "arch" in self.gpu:
            return str(self.gpu["arch"])
        return str(load_group("hardware", self.slug).get("arch", "")) if self.slug in available("hardware") else ""

    @property
    def imported(self) -> bool:
        """Built from external measurements (``nfpsim-calibrate source=``), not timed by nfpsim."""
        return "imported_from" in self.provenance

    def constants(self, implementation: str, hardware: HardwareSpec, defaults: LatencyConstants) -> LatencyConstants:
        """``defaults`` with this GPU's measured ceilings and the fitted constants of ``implementation``."""
        device = dataclasses.replace(
            defaults.device,
            num_sms=int(self.gpu.get("num_sms", defaults.device.num_sms)),
            stream_bytes_per_s=float(self.ceilings["copy_bytes_per_s"]),
            bf16_flop_per_s=float(self.ceilings["bf16_flop_per_s"]),
        )
        # the measured launch overhead is every kernel's fixed cost until a fit says otherwise
        defaults = defaults.with_launch_overhead(float(self.ceilings["launch_overhead_s"]))
        return dataclasses.replace(self.kernel_constants(implementation, defaults), device=device)

    def kernel_constants(self, implementation: str, defaults: LatencyConstants) -> LatencyConstants:
        """``defaults`` (device ceilings untouched) with the kernel constants fitted for ``implementation``:
        what carries to another GPU of the same architecture."""
        out = defaults
        for key, fields in self.fitted.get(implementation, {}).items():
            out = out.with_kernel(key, KernelConstants(**fields))
        return out


def write_table(path: Path, table: CalibrationTable) -> Path:
    """The table as JSON, atomically; one measurement per line (tables hold tens of thousands)."""
    from nfpsim.io import write_text

    data = table.to_dict()
    measurements = data.pop("measurements")
    head = json.dumps(data, indent=1)[:-2]  # the object without its closing brace
    body = ",\n".join(json.dumps(m, separators=(",", ":")) for m in measurements)
    return write_text(path, f'{head},\n "measurements": [\n{body}\n ]\n}}\n')


def load_table(path: Path) -> CalibrationTable:
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except FileNotFoundError:
        raise ConfigError(f"calibration table {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error.__class__.__name__}: {error}); the file is corrupt, "
                          f"re-run nfpsim-calibrate") from None
    table = CalibrationTable.from_dict(data, str(path))
    return dataclasses.replace(table, source_sha256=hashlib.sha256(raw).hexdigest())


def table_path(slug: str, directory: Path | None = None) -> Path:
    return Path(directory or CALIBRATION_DIR) / f"{slug}.json"


def slug_for_device(device_name: str) -> str:
    """The hardware config a device name belongs to (``device_names`` patterns in conf/hardware),
    else a slug made from the name itself."""
    for name in available("hardware"):
        for pattern in load_group("hardware", name).get("device_names", []) or []:
            if re.search(pattern, device_name, flags=re.IGNORECASE):
                return name
    return re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")


def check_matches(table: CalibrationTable, hardware: HardwareSpec, source: str) -> None:
    if table.slug != hardware.name:
        raise ConfigError(f"{source} was measured on {table.gpu.get('name', '?')} ({table.slug}), not on "
                          f"hardware={hardware.name}; calibrate that GPU or use latency=analytic")
