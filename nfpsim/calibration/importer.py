"""Build calibration tables from measurements taken elsewhere (``nfpsim-calibrate source=...``).

For each GPU in the source: every imported point becomes a measurement of its implementation, the
kernel constants of each implementation present are fitted on the training points only, and the table
records where every number came from (``provenance.imported_from``) so nobody mistakes it for a run of
``nfpsim-calibrate`` on that GPU. A later real calibration replaces it.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from nfpsim.calibration.fit import fit_implementation
from nfpsim.calibration.reference import ImportedSet, read_source
from nfpsim.config import load_hardware, load_kernels
from nfpsim.latency.calibrated import preset_fingerprint
from nfpsim.latency.constants import LatencyConstants
from nfpsim.latency.table import CalibrationTable, table_path, write_table


def build_table(sets: Iterable[ImportedSet], progress=None, **fit_options) -> CalibrationTable:
    """One table from the imported sets of one GPU."""
    sets = list(sets)
    slug = sets[0].slug
    hardware = load_hardware(slug)
    measurements = tuple(m for s in sets for m in s.measurements)
    ceilings = next((s.ceilings for s in sets if s.ceilings), None) or {
        "copy_bytes_per_s": hardware.stream_bytes_per_s, "bf16_flop_per_s": hardware.matmul_flop_per_s("bf16")}
    ceilings = {**ceilings, "launch_overhead_s": hardware.launch_overhead_s}
    by_impl: dict[str, list] = defaultdict(list)
    for m in measurements:
        by_impl[m.implementation].append(m)
    fitted, quality, configs = {}, {}, {}
    for impl, ms in sorted(by_impl.items()):
        kernels = load_kernels(impl)
        defaults = LatencyConstants.defaults(hardware, kernels)
        # the GPU's own measured ceilings price the fit
        defaults = CalibrationTable(gpu={"slug": slug}, provenance={}, ceilings=ceilings, kernel_configs={},
                                    measurements=(), fitted={}, fit_quality={}).constants(impl, hardware, defaults)
        fitted[impl], quality[impl] = fit_implementation(ms, hardware, kernels, defaults, **fit_options)
        configs[impl] = preset_fingerprint(kernels)
        if progress:
            progress(impl)
    gpu_name = next((s.gpu_name for s in sets if s.gpu_name), hardware.description)
    return CalibrationTable(
        gpu={"name": gpu_name, "slug": slug, "arch": hardware.arch, "num_sms": hardware.num_sms,
             "l2_bytes": hardware.l2_bytes, "memory_bytes": hardware.memory_bytes},
        provenance={"imported_from": [s.source for s in sets],
                    "note": "built from external measurements, not timed by nfpsim-calibrate; a run of "
                            "nfpsim-calibrate on this GPU replaces it",
                    "date": datetime.date.today().isoformat()},
        ceilings=ceilings, kernel_configs=configs, measurements=measurements, fitted=fitted, fit_quality=quality)


def import_source(source: Path, directory: Path | None = None, progress=None, **fit_options) -> list[Path]:
    """Import every GPU found in ``source``; write ``<directory>/<slug>.json`` for each (atomically)."""
    by_slug: dict[str, list[ImportedSet]] = defaultdict(list)
    for imported in read_source(Path(source)):
        by_slug[imported.slug].append(imported)
    written = []
    for slug, sets in sorted(by_slug.items()):
        table = build_table(sets, progress=progress, **fit_options)
        written.append(write_table(table_path(slug, directory), table))
    return written
