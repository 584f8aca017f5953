"""Overlays of a validation result: measured against predicted latency / latency(1) per curve."""

from __future__ import annotations

from nfpsim.validation.run import TARGET_EPS, eps_key


def models_of(result: dict) -> list[str]:
    return list(dict.fromkeys(c["model"] for c in result["curves"]))


def overlay(result: dict, model: str):
    """One figure per model: a subplot per (implementation, batch, context), measured (solid) and predicted
    (dashed) latency relative to one position, the (1+eps) budget, both NFPs at eps 0.1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")

    curves = [c for c in result["curves"] if c["model"] == model]
    impls = list(dict.fromkeys(c["implementation"] for c in curves))
    columns = list(dict.fromkeys((c["batch"], c["context"]) for c in curves))
    fig, axes = plt.subplots(len(impls), len(columns), figsize=(3.1 * len(columns), 2.5 * len(impls)),
                             squeeze=False, sharex=True)
    key = eps_key(TARGET_EPS)
    for c in curves:
        ax = axes[impls.index(c["implementation"])][columns.index((c["batch"], c["context"]))]
        m = [p["positions"] for p in c["points"]]
        measured = [p["measured_s"] / c["points"][0]["measured_s"] for p in c["points"]]
        predicted = [p["predicted_s"] / c["points"][0]["predicted_s"] for p in c["points"]]
        ax.plot(m, measured, "-o", color="black", markersize=2.5, linewidth=1.3, label="measured")
        ax.plot(m, predicted, "--", color="C0", linewidth=1.3, label="predicted")
        ax.axhline(1 + TARGET_EPS, color="grey", linestyle=":", linewidth=0.8)
        ax.axvline(c["nfp_measured"][key], color="black", linestyle=":", linewidth=0.8)
        ax.axvline(c["nfp_predicted"][key], color="C0", linestyle=":", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{c['implementation']} B={c['batch']} L={c['context']}\nMAPE {c['mape']:.1%}, NFP "
                     f"{c['nfp_measured'][key]} vs {c['nfp_predicted'][key]}", fontsize=7)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)))
        ax.tick_params(labelsize=6)
        ax.grid(True, which="both", alpha=0.2)
    for ax in axes[-1]:
        ax.set_xlabel("positions M", fontsize=7)
    for row in axes:
        row[0].set_ylabel("t(M) / t(1)", fontsize=7)
    axes[0][0].legend(fontsize=6, loc="upper left")
    layers = curves[0]["num_layers"], curves[0]["full_num_layers"]
    fig.suptitle(f"{model} ({layers[0]}/{layers[1]} layers) on {result['gpu']['name']}: measured vs predicted, "
                 f"NFP at eps {key} dotted", fontsize=8)
    fig.tight_layout()
    return fig
