"""One validation: time real forwards, predict the same points, compare (no file writes).

Per curve (model, implementation, batch, context) every grid position is built as a real forward
(:mod:`nfpsim.validation.forward`) and timed whole inside a CUDA graph (median of replays). A forward
streams all its weights and KV, far more than the L2, so one input set suffices; only a forward smaller
than three L2s gets several independent sets. At the ``profile_positions`` each op is also timed alone
on the forward's own buffers (all its layers' instances in one graph): the per-op evidence for a miss.
Small pointwise ops timed alone find their inputs in L2, so their profile is a lower bound.

The prediction prices the same reduced model at the same points with the latency model (calibrated when
a table for the GPU exists); NFP at each eps is the first crossing on the same grid for both, next to
the idle-compute NFP and the over-prediction factor ``idle / NFP``. A result holds everything needed to
re-predict it later on any machine (:func:`repredict`). A curve that fails (out of memory, an op error) is
recorded under ``failed`` with its reason and the next one starts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from nfpsim.calibration.fit import mape
from nfpsim.calibration.run import STOP, hardware_for_device
from nfpsim.latency.table import load_table, table_path
from nfpsim.config import HardwareSpec, KernelPreset, ModelSpec, available, load_hardware, load_kernels
from nfpsim.errors import ConfigError
from nfpsim.latency import make_latency_model
from nfpsim.latency.calibrated import preset_fingerprint
from nfpsim.nfp import analyze, first_crossing
from nfpsim.shapes import MODULES, ForwardShape
from nfpsim.validation.plan import CurvePlan, ValidationSettings, forward_sets, peak_bytes, plan_curves

FORMAT = "nfpsim-validation/1"
MAPE_TARGET = 0.05
NFP_EXACT_TARGET = 0.8  # share of curves whose NFP(eps) is predicted exactly on the grid
TARGET_EPS = 0.1
MAX_CONSECUTIVE_FAILURES = 3  # then the device is probed; where it no longer runs a kernel no curve starts


def eps_key(eps: float) -> str:
    return f"{eps:g}"


@dataclass(frozen=True)
class MeasuredPoint:
    positions: int
    time_s: float
    spread_s: float
    splits: dict  # op -> split-K / split-KV the triton forward ran (empty for vendor)


# ----------------------------------------------------------------------------------------------------
# Prediction and comparison (pure: no torch)
# ----------------------------------------------------------------------------------------------------


def curve_entry(curve: CurvePlan, latency, eps: tuple[float, ...], points: list[MeasuredPoint],
                op_profile: dict[int, dict[str, float]]) -> dict:
    """The contract entry of one curve: measured and predicted latency per point, MAPE, NFP measured and
    predicted per eps, idle-compute NFP and over-prediction factors, per-op profile against prediction."""
    grid = tuple(p.positions for p in points)
    measured = [p.time_s for p in points]
    reports = {e: analyze(latency, curve.model, batch=curve.batch, context=curve.context, eps=e, positions=grid)
               for e in eps}
    first = reports[eps[0]]
    predicted = list(first.forward.latency_s)
    modules = {k: first.modules[k].latency_s for k in MODULES if k in first.modules}
    entry = {
        "model": curve.model.name, "implementation": curve.implementation, "batch": curve.batch,
        "context": curve.context, "num_layers": curve.model.num_layers, "full_num_layers": curve.full_num_layers,
        "beyond_max_context": curve.beyond_max_context, "latency": latency.kind,
        "points": [{"positions": p.positions, "measured_s": p.time_s, "predicted_s": t, "spread_s": p.spread_s,
                    "error": t / p.time_s - 1.0, "splits": p.splits,
                    "predicted_modules": {k: v[i] for k, v in modules.items()}}
                   for i, (p, t) in enumerate(zip(points, predicted))],
        "mape": mape(predicted, measured),
        "max_abs_error": max(abs(t / m - 1.0) for t, m in zip(predicted, measured)),
        "sources_at_1": first.sources,
    }
    nfp_m, nfp_p, idle, crossings, dips = {}, {}, {}, {}, {}
    for e, report in reports.items():
        k = eps_key(e)
        point = first_crossing(grid, measured, e)
        nfp_m[k], crossings[k], dips[k] = point.nfp, point.crossing, list(point.later_within)
        nfp_p[k], idle[k] = report.forward.nfp.nfp, report.forward.idle_nfp
    entry.update(
        nfp_measured=nfp_m, nfp_predicted=nfp_p,
        nfp_exact={k: nfp_m[k] == nfp_p[k] for k in nfp_m},
        first_crossing_measured=crossings, later_within_measured=dips,
        idle_nfp=idle,
        overprediction_measured={k: idle[k] / nfp_m[k] if idle[k] else None for k in idle},
        overprediction_predicted={k: idle[k] / nfp_p[k] if idle[k] else None for k in idle},
        op_profile=[_profile_entry(latency, curve, m, ops) for m, ops in sorted(op_profile.items())],
    )
    return entry


def _profile_entry(latency, curve: CurvePlan, positions: int, measured_ops: dict[str, float]) -> dict:
    predicted = latency.forward(curve.model, ForwardShape.uniform(curve.batch, positions, curve.context)).by_op()
    ops = {name: {"measured_s": t, "predicted_s": predicted.get(name, 0.0),
                  "error": predicted.get(name, 0.0) / t - 1.0 if t > 0 else None}
           for name, t in measured_ops.items()}
    return {"positions": positions, "ops": ops}


def summarize(curves: list[dict]) -> dict:
    """Targets per implementation and overall (MAPE <= 5% per curve, NFP(0.1) exact on >= 80% of curves),
    and every curve that misses one, with its worst point and the op that misses most where profiled."""
    key = eps_key(TARGET_EPS)

    def group(entries: list[dict]) -> dict:
        if not entries:
            return {"curves": 0}
        within = sum(c["mape"] <= MAPE_TARGET for c in entries)
        exact = sum(bool(c["nfp_exact"].get(key)) for c in entries)
        return {"curves": len(entries), "mape_within_target": within, "max_mape": max(c["mape"] for c in entries),
                "nfp_exact": exact, "nfp_exact_fraction": exact / len(entries),
                "meets_targets": within == len(entries) and exact / len(entries) >= NFP_EXACT_TARGET}

    by_impl: dict[str, list[dict]] = {}
    for c in curves:
        by_impl.setdefault(c["implementation"], []).append(c)
    misses = []
    for c in curves:
        if c["mape"] <= MAPE_TARGET and c["nfp_exact"].get(key):
            continue
        worst = max(c["points"], key=lambda p: abs(p["error"]))
        miss = {"model": c["model"], "implementation": c["implementation"], "batch": c["batch"],
                "context": c["context"], "mape": c["mape"], "nfp_measured": c["nfp_measured"].get(key),
                "nfp_predicted": c["nfp_predicted"].get(key),
                "worst_point": {"positions": worst["positions"], "error": worst["error"]}}
        ops = [(m["positions"], name, o) for m in c["op_profile"] for name, o in m["ops"].items()]
        if ops:
            positions, name, o = max(ops, key=lambda item: abs(item[2]["predicted_s"] - item[2]["measured_s"]))
            miss["largest_op_miss"] = {"positions": positions, "op": name, **o}
        misses.append(miss)
    return {"targets": {"mape": MAPE_TARGET, "eps": TARGET_EPS, "nfp_exact_fraction": NFP_EXACT_TARGET},
            "overall": group(curves), "by_implementation": {k: group(v) for k, v in by_impl.items()},
            "misses": misses}


def format_summary(result: dict) -> list[str]:
    """Console lines: one per curve, then the targets per implementation."""
    key = eps_key(TARGET_EPS)
    lines = [f"{'model':<16}{'impl':<8}{'B':>3}{'L':>7}{'MAPE':>8}{'NFP meas':>10}{'NFP pred':>10}{'idle':>6}"
             f"{'factor':>8}   (NFP at eps {key}; factor = idle / measured NFP)"]
    for c in result["curves"]:
        factor = c["overprediction_measured"].get(key)
        lines.append(f"{c['model']:<16}{c['implementation']:<8}{c['batch']:>3}{c['context']:>7}{c['mape']:>8.1%}"
                     f"{c['nfp_measured'][key]:>10}{c['nfp_predicted'][key]:>10}{c['idle_nfp'][key] or '-':>6}"
                     f"{'-' if factor is None else f'{factor:.1f}':>8}")
    for impl, g in result["summary"]["by_implementation"].items():
        if g["curves"]:
            lines.append(f"{impl}: {g['mape_within_target']}/{g['curves']} curves within {MAPE_TARGET:.0%} MAPE "
                         f"(max {g['max_mape']:.1%}), NFP({key}) exact on {g['nfp_exact']}/{g['curves']}"
                         f"{'' if g['meets_targets'] else ' -- misses the targets'}")
    return lines


# ----------------------------------------------------------------------------------------------------
# Latency models
# ----------------------------------------------------------------------------------------------------


def latency_models(settings: ValidationSettings, hardware: HardwareSpec, presets: dict[str, KernelPreset]) -> dict:
    """One latency model per implementation, on ``hardware``'s table in ``calibration_dir`` (fails here,
    before anything is timed, where ``latency=calibrated`` finds no usable table)."""
    path = table_path(hardware.name, settings.calibration_dir)
    table = path if path.exists() or settings.latency == "calibrated" else None
    return {name: make_latency_model(settings.latency, hardware, kernels, table) for name, kernels in presets.items()}


def table_provenance(settings: ValidationSettings, hardware: HardwareSpec) -> dict | None:
    path = table_path(hardware.name, settings.calibration_dir)
    if settings.latency == "analytic" or not path.exists():
        return None
    table = load_table(path)
    return {"path": str(path), "date": table.provenance.get("date"), "git": table.provenance.get("git"),
            "gpu": table.gpu.get("name")}


# ----------------------------------------------------------------------------------------------------
# Measurement (torch from here on)
# ----------------------------------------------------------------------------------------------------


def measure_curve(curve: CurvePlan, weight_sets, cache_sets, constants, timer, profile_positions,
                  log: Callable[[str], None]) -> tuple[list[MeasuredPoint], dict[int, dict[str, float]]]:
    """Median time of the whole forward at every grid position; at ``profile_positions`` also each op."""
    from nfpsim.validation.forward import build_forward

    points, profile = [], {}
    for m in curve.positions:
        forwards = [build_forward(w, c, curve.implementation, curve.kernels, batch=curve.batch, positions=m,
                                  context=curve.context, constants=constants)
                    for w, c in zip(weight_sets, cache_sets)]
        time_s, spread_s = timer(forwards)
        points.append(MeasuredPoint(m, time_s, spread_s, forwards[0].splits))
        if m in profile_positions:
            ops = dict.fromkeys(step.op for step in forwards[0].steps)
            profile[m] = {}
            for op in ops:
                calls = [call for f in forwards for call in f.op_calls(op)]
                per_call, _ = timer(calls)
                profile[m][op] = per_call * len(forwards[0].op_calls(op))
        del forwards
    log(f"  {curve.model.name} {curve.implementation} batch {curve.batch} context {curve.context}: "
        f"{points[0].time_s * 1e3:.3f} ms at M=1, {points[-1].time_s * 1e3:.3f} ms at M={points[-1].positions}")
    return points, profile


def agreement(weights, model: ModelSpec, presets: dict[str, KernelPreset], constants, batch: int, context: int,
              positions: int, device, dtype) -> dict:
    """Logits of the two implementations on one input: relative error and greedy-token agreement."""
    from nfpsim.validation.forward import build_forward
    from nfpsim.validation.model import KVCache

    cache = KVCache.random(model, batch, context + positions, device, dtype)
    logits = {}
    for name in ("triton", "vendor"):
        forward = build_forward(weights, cache.clone(), name, presets[name], batch=batch, positions=positions,
                                context=context, constants=constants)
        forward()
        logits[name] = forward.logits.float()
    diff = (logits["triton"] - logits["vendor"]).norm() / logits["vendor"].norm()
    same = (logits["triton"].argmax(-1) == logits["vendor"].argmax(-1)).float().mean()
    return {"batch": batch, "context": context, "positions": positions, "logits_rel_error": float(diff),
            "token_agreement": float(same)}


def _agreement_or_reason(weights, model: ModelSpec, settings: ValidationSettings, constants, device, dtype) -> dict:
    """The two implementations' agreement, or why it could not be checked (it is evidence, not a gate:
    a vendor path that fails here fails its own curves with their reasons)."""
    from nfpsim.calibration import measure

    try:
        return agreement(weights, model, settings.presets, constants, min(settings.batches), min(settings.contexts),
                         min(3, settings.max_positions), device, dtype)
    except Exception as error:  # noqa: BLE001
        return {"error": measure.recover(error, device)}


class _Loaded:
    """The weights of the current model and the caches of the current (batch, context), made once and
    kept while consecutive curves share them."""

    def __init__(self):
        self.drop()

    def drop(self) -> None:
        self.weights = self.caches = None
        self.model = self.cache_key = None

    def load(self, curve: CurvePlan, settings: ValidationSettings, sets: int, device, dtype, constants: dict,
             result: dict) -> None:
        from nfpsim.validation.model import KVCache, ModelWeights

        if curve.model.name != self.model:
            self.drop()
            self.weights = [ModelWeights.random(curve.model, device, dtype, settings.seed + i) for i in range(sets)]
            self.model = curve.model.name
            result["models"][curve.model.name] = {**dataclasses.asdict(curve.model),
                                                  "full_num_layers": curve.full_num_layers}
            if {"triton", "vendor"} <= set(settings.presets):
                result["agreement"][curve.model.name] = _agreement_or_reason(
                    self.weights[0], curve.model, settings, constants["triton"], device, dtype)
        if (curve.batch, curve.context) != self.cache_key:
            self.caches = None
            slots = curve.context + settings.max_positions
            self.caches = [KVCache.random(curve.model, curve.batch, slots, device, dtype, settings.seed + 100 + i)
                           for i in range(sets)]
            self.cache_key = (curve.batch, curve.context)


def validate(settings: ValidationSettings, device, dtype, timer, log: Callable[[str], None] = print,
             on_curve: Callable[[dict], None] | None = None) -> dict:
    """Measure and predict every planned curve on ``device``; ``on_curve(result)`` sees the partial result
    after each curve (the CLI writes it, so a run cut short keeps what it measured)."""
    import torch

    from nfpsim.calibration import measure
    from nfpsim.validation.splits import constants_of

    started = time.perf_counter()
    info = measure.device_info(device)
    hardware = hardware_for_device(info, settings.hardware, log)
    curves, skipped = plan_curves(settings)
    latency = latency_models(settings, hardware, settings.presets)
    constants = {name: constants_of(model) for name, model in latency.items()}
    log(f"device: {info['name']} ({info['slug']}); latency: "
        + ", ".join(f"{name} {model.kind}" for name, model in latency.items()))
    free_bytes = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 2**40
    result = {
        "format": FORMAT, "gpu": info, "provenance": measure.provenance(device),
        "settings": {"batches": list(settings.batches), "contexts": list(settings.contexts),
                     "max_positions": settings.max_positions, "max_points": settings.max_points,
                     "num_layers": settings.num_layers, "eps": list(settings.eps), "latency": settings.latency,
                     "timing": dataclasses.asdict(settings.timing), "seed": settings.seed,
                     "profile_positions": list(settings.profile_positions)},
        "calibration_table": table_provenance(settings, hardware),
        "models": {}, "kernel_configs": {n: preset_fingerprint(k) for n, k in settings.presets.items()},
        "agreement": {}, "curves": [], "skipped": skipped, "failed": [], "not_run": [], "complete": False,
    }

    state = _Loaded()
    failures_in_a_row, interrupted = 0, False
    for curve in curves:
        where = {"model": curve.model.name, "implementation": curve.implementation, "batch": curve.batch,
                 "context": curve.context}
        if settings.time_budget_s is not None and time.perf_counter() - started > settings.time_budget_s:
            result["not_run"].append({**where, "reason": "time budget"})
            continue
        if failures_in_a_row >= MAX_CONSECUTIVE_FAILURES and not measure.device_ok(device):
            result["not_run"].append({**where, "reason": f"{failures_in_a_row} curves failed in a row and the "
                                      "device no longer runs a kernel"})
            continue
        if interrupted or STOP.is_set():
            result["not_run"].append({**where, "reason": "interrupted"})
            continue
        if curve.implementation == "vendor" and curve.model.is_moe and not hasattr(torch, "_grouped_mm"):
            skipped.append({**where, "reason": "this torch has no torch._grouped_mm"})
            continue
        sets = forward_sets(curve.model, info["l2_bytes"])
        need = peak_bytes(curve, torch.tensor([], dtype=dtype).element_size(), sets, settings.max_positions)
        if need > settings.memory_fraction * free_bytes:
            skipped.append({**where, "reason": f"needs {need / 2**30:.1f} GiB, more than memory_fraction of the "
                            f"free {free_bytes / 2**30:.1f} GiB: lower num_layers"})
            continue
        try:
            state.load(curve, settings, sets, device, dtype, constants, result)
            points, profile = measure_curve(curve, state.weights, state.caches, constants[curve.implementation],
                                            timer, settings.profile_positions, log)
        except KeyboardInterrupt:
            result["not_run"].append({**where, "reason": "interrupted"})
            interrupted = True
            continue
        except Exception as error:  # noqa: BLE001 -- one curve's failure must not lose the others
            state.drop()
            reason = measure.recover(error, device)
            result["failed"].append({**where, "reason": reason})
            log(f"  {curve.model.name} {curve.implementation} batch {curve.batch} context {curve.context} "
                f"failed: {reason}")
            failures_in_a_row += 1
            continue
        failures_in_a_row = 0
        result["curves"].append(curve_entry(curve, latency[curve.implementation], settings.eps, points, profile))
        result["summary"] = summarize(result["curves"])
        result["provenance"]["gpu_seconds"] = time.perf_counter() - started
        if on_curve is not None:
            on_curve(result)
    result["complete"] = not result["not_run"] and not result["failed"]
    result["summary"] = summarize(result["curves"])
    result["provenance"]["gpu_seconds"] = time.perf_counter() - started
    return result


# ----------------------------------------------------------------------------------------------------
# Re-prediction of stored measurements (any machine)
# ----------------------------------------------------------------------------------------------------


def repredict(data: dict, settings: ValidationSettings, log: Callable[[str], None] = print) -> dict:
    """``data`` (a validate.json) with every curve predicted again by the current latency model and the
    table in ``settings.calibration_dir``: a model change is checked against GPU measurements without a GPU."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"measured: not an nfpsim validation result (format {data.get('format')!r}, "
                          f"expected {FORMAT})" if isinstance(data, dict) else "measured: not a validation result")
    slug = data["gpu"]["slug"]
    hardware = load_hardware(slug) if slug in available("hardware") else dataclasses.replace(
        settings.hardware, name=slug, num_sms=int(data["gpu"].get("num_sms") or settings.hardware.num_sms))
    presets = {}
    for name, recorded in data["kernel_configs"].items():
        presets[name] = load_kernels(name)
        if preset_fingerprint(presets[name]) != recorded:
            log(f"warning: kernels={name} changed since these forwards were measured; predicting the current one")
    latency = latency_models(settings, hardware, presets)
    models = {name: ModelSpec(**{k: v for k, v in spec.items() if k != "full_num_layers"})
              for name, spec in data["models"].items()}
    eps = tuple(float(e) for e in data["settings"]["eps"])
    curves = []
    for c in data["curves"]:
        model = models[c["model"]]
        points = [MeasuredPoint(p["positions"], p["measured_s"], p.get("spread_s", 0.0), p.get("splits", {}))
                  for p in c["points"]]
        plan = CurvePlan(model, c["full_num_layers"], presets[c["implementation"]], c["batch"], c["context"],
                         tuple(p.positions for p in points), c["beyond_max_context"])
        profile = {m["positions"]: {op: o["measured_s"] for op, o in m["ops"].items()} for m in c["op_profile"]}
        curves.append(curve_entry(plan, latency[c["implementation"]], eps, points, profile))
    out = dict(data)
    out.update(curves=curves, summary=summarize(curves), calibration_table=table_provenance(settings, hardware))
    out["repredicted"] = {"latency": settings.latency, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return out
