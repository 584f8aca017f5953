"""Views of a search outcome (``search.json`` data): console summary, CSV rows, plots, markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfpsim.report.render import Heading, RunKind, Table, Text, images

def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _describe(trial: dict | None, names: list[str]) -> list[str]:
    if not trial:
        return ["  (none)"]
    model = trial.get("model", {})
    objectives = trial.get("objectives") or {}
    lines = [f"  trial {trial['number']} ({trial['state'].lower()}, {'feasible' if trial['feasible'] else 'infeasible'})"]
    lines.append("  " + ", ".join(f"{n} {_fmt(objectives.get(n))}" for n in names))
    if model:
        shape = (f"{model['num_layers']} layers, hidden {model['hidden_size']}, {model['num_heads']}/"
                 f"{model['num_kv_heads']} heads x {model['head_dim']}")
        if model.get("num_experts"):
            shape += (f", {model['num_experts']} experts top-{model['top_k']} of {model['expert_ffn_size']}"
                      f" (+{model['num_shared_experts']} shared)")
        else:
            shape += f", FFN {model['ffn_size']}"
        lines.append(f"  {shape}")
    params = trial.get("total_params"), trial.get("active_params")
    if params[0]:
        lines.append(f"  {params[0] / 1e9:.2f}B total, {params[1] / 1e9:.2f}B active parameters; "
                     f"{trial.get('decoding', '')}, {trial.get('positions', '?')} positions per forward, "
                     f"max_num_seqs {trial['params'].get('max_num_seqs')}")
    if trial.get("constraints"):
        lines.append(f"  binding constraint: {trial['binding_constraint']} = "
                     f"{trial['constraints'][trial['binding_constraint']]:+.3f} (<= 0 is feasible)")
    return lines


def format_summary(data: dict) -> str:
    names = data["objectives"]
    lines = [f"search {data['preset']} on {data['hardware']} ({data['kernels']} kernels): {data['n_trials']} trials "
             f"({data['n_complete']} complete, {data['n_pruned']} pruned, {data['n_feasible']} feasible)",
             "baseline:", *_describe(data["baseline"], names), "best:", *_describe(data["best"], names)]
    lines += _gain_lines(data)
    if len(names) > 1:
        lines.append(f"Pareto front: {len(data['pareto'])} trials")
    lines.append(f"best trials violating a constraint: {data['violations']}")
    return "\n".join(lines)


def _gain_lines(data: dict) -> list[str]:
    """How much the best design gains on the primary objective, split into serving knobs and shape."""
    gains = data.get("gains") or {}
    name = data["objectives"][0]
    lines = []
    if data["improvement"] is not None:
        lines.append(f"improvement on {name} over the tuned reference ({gains.get('tuned_reference')}): "
                     f"{data['improvement']:.3f}x")
    if gains.get("from_serving_knobs") is not None and gains.get("from_shape") is not None:
        lines.append(f"  from serving knobs {gains['from_serving_knobs']:.3f}x x from shape {gains['from_shape']:.3f}x "
                     f"= {gains['over_given_reference']:.3f}x over the reference as given")
    if gains.get("reason"):
        lines.append(f"  ({gains['reason']})")
    return lines


def trial_rows(data: dict) -> tuple[list[dict], list[str]]:
    constraint_keys = sorted({k for t in data["trials"] for k in t["constraints"]})
    param_keys = sorted({k for t in data["trials"] for k in t["params"]})
    fields = (["number", "state", "role", "feasible"] + data["objectives"] + ["total_params", "active_params"]
              + [f"param_{k}" for k in param_keys] + [f"constraint_{k}" for k in constraint_keys])
    rows = []
    for t in data["trials"]:
        row = {"number": t["number"], "state": t["state"], "role": t["role"] or "", "feasible": t["feasible"],
               "total_params": t.get("total_params"), "active_params": t.get("active_params")}
        row.update({n: (t["objectives"] or {}).get(n) for n in data["objectives"]})
        row.update({f"param_{k}": t["params"].get(k) for k in param_keys})
        row.update({f"constraint_{k}": t["constraints"].get(k) for k in constraint_keys})
        rows.append(row)
    return rows, fields


def plots(data: dict, study) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    names = data["objectives"]
    # trials ruled out before simulation (budgets, memory) carry placeholder objectives: leave them out
    done = [t for t in data["trials"] if t["objectives"] and not t.get("skipped")]
    skipped = sum(bool(t.get("skipped")) for t in data["trials"])
    feasible = [t for t in done if t["feasible"]]
    infeasible = [t for t in done if not t["feasible"]]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if len(names) > 1:
        x, y = names[1], names[0]
        for group, style, label in _groups(((infeasible, "x", "infeasible"), (feasible, "o", "feasible"))):
            ax.plot([t["objectives"][x] for t in group], [t["objectives"][y] for t in group], style, alpha=0.6,
                    label=label)
        front = sorted(data["pareto"], key=lambda t: t["objectives"][x])
        if front:
            ax.plot([t["objectives"][x] for t in front], [t["objectives"][y] for t in front], "-", color="black",
                    label="Pareto front")
        ax.set_xlabel(x)
        ax.set_title(f"throughput per GPU against p99 TPOT ({skipped} trials not simulated: budgets, memory)")
    else:
        y = names[0]
        for group, style, label in _groups(((infeasible, "x", "simulated, over the near-free budget"),
                                            (feasible, "o", "feasible"))):
            ax.plot([t["number"] for t in group], [t["objectives"][y] for t in group], style, alpha=0.7, label=label)
        ax.set_xlabel("trial")
        ax.set_title(f"throughput per GPU by simulated trial ({skipped} not simulated: budgets, memory)")
    if data["baseline"] and data["baseline"]["objectives"]:
        ax.axhline(data["baseline"]["objectives"][names[0]], color="firebrick", linestyle="--", label="baseline")
    ax.set_ylabel(names[0])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    figures["pareto.png" if len(names) > 1 else "trials.png"] = fig
    importance = _importances(study, data)
    if importance:
        fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(importance) + 1.2))
        keys = list(importance)[::-1]
        ax.barh(keys, [importance[k] for k in keys], color="C2")
        ax.set_xlabel(f"importance for {names[0]}")
        fig.tight_layout()
        figures["importance.png"] = fig
    return figures


def _groups(groups):
    """Only the marker groups that have points: an empty one would still get a legend entry."""
    return [g for g in groups if g[0]]


def _importances(study, data: dict) -> dict[str, float]:
    """Parameter importances for the primary objective over the feasible simulated trials only (an
    infeasible trial scores the worst value, so over all trials importance would mostly explain
    feasibility); empty when there are too few of them. The evaluator looks for low target values,
    so a maximized objective is negated."""
    import warnings

    import optuna

    feasible = {t["number"] for t in data["trials"] if t["feasible"]}
    trials = [t for t in study.get_trials(deepcopy=False) if t.number in feasible]
    if len(trials) < 4:
        return {}
    view = optuna.create_study(directions=study.directions)
    view.add_trials(trials)
    sign = -1.0 if data["directions"][0] == "maximize" else 1.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(view, target=lambda t: sign * t.values[0])
    except (ValueError, RuntimeError, ZeroDivisionError, IndexError):
        return {}


def _foreign(data: dict) -> bool:
    """A search.json nfpsim did not write (or an older format): shown by its scalars only."""
    return not all(key in data for key in ("objectives", "trials", "baseline", "best", "n_trials"))


def _scalars(data: dict) -> dict[str, Any]:
    return {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool))}


def key_figures(data: dict) -> dict[str, Any]:
    if _foreign(data):
        return _scalars(data)
    best, names = data.get("best") or {}, data["objectives"]
    return {"preset": data["preset"], "hardware": data["hardware"], "trials": data["n_trials"],
            "feasible": data["n_feasible"], names[0]: (best.get("objectives") or {}).get(names[0]),
            "improvement": data["improvement"], "violations": data["violations"]}


def section(path: Path, data: dict) -> list:
    """The body of a search report (for ``report.md`` and ``nfpsim-report``)."""
    if _foreign(data):
        return [Table(("figure", "value"), tuple(_scalars(data).items()))] + images(
            path, {p.name: p.stem for p in sorted(path.glob("*.png"))})
    names = data["objectives"]
    rows = []
    for label, trial in (("baseline", data["baseline"]), ("best", data["best"])):
        if trial:
            objectives = trial["objectives"] or {}
            rows.append((f"{label} (trial {trial['number']})", *(objectives.get(n) for n in names),
                         (trial.get("total_params") or 0) / 1e9, (trial.get("active_params") or 0) / 1e9,
                         "yes" if trial["feasible"] else "no", trial["binding_constraint"]))
    blocks = [
        Text(f"{data['n_trials']} trials of {data['preset']} on {data['hardware']} with {data['kernels']} kernels: "
             f"{data['n_complete']} complete, {data.get('n_simulated', '?')} simulated, {data['n_feasible']} feasible. "
             f"Objective: {data.get('objective_measure', names[0])}. Constraints are feasible when <= 0: "
             f"parameter budgets (over and under), memory, and the near-free budget: decode-step time "
             f"(proposer included) over the one-position forward, minus (1 + eps), over the steps simulated."),
        Table(("trial", *names, "total params (B)", "active params (B)", "feasible", "binding constraint"),
              tuple(rows)),
    ]
    gain_lines = _gain_lines(data)
    if gain_lines:
        blocks.append(Text(" ".join(line.strip() for line in gain_lines) +
                           f". Best trials violating a constraint: {data['violations']}."))
    if data["best"]:
        best = data["best"]
        blocks += [Heading(f"Best: trial {best['number']}", 3),
                   Text(" ".join(line.strip() for line in _describe(best, names)[2:])),
                   Table(("parameter", "value"), tuple(sorted(best["params"].items())))]
    blocks += images(path, {"pareto.png": "Pareto front", "trials.png": "trials",
                            "importance.png": "parameter importance"})
    if (path / "study.db").is_file():
        blocks.append(Text("The study is in study.db: `optuna-dashboard sqlite:///study.db` opens it."))
    return blocks


KIND = RunKind("search", "search.json", key_figures, section)
