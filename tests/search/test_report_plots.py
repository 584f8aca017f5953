"""Issue 11 item 5 (search): plot legends list only what is drawn; importance ignores infeasible trials."""

import optuna

from nfpsim.report.search import _importances, plots


def _trial(number, value, feasible):
    return {"number": number, "objectives": {"t": value}, "feasible": feasible, "params": {},
            "constraints": {"near_free": -0.1 if feasible else 0.2}}


def _study(points):
    study = optuna.create_study(direction="maximize")
    for x, y, value in points:
        study.add_trial(optuna.trial.create_trial(
            params={"x": x, "y": y}, value=value,
            distributions={"x": optuna.distributions.FloatDistribution(0, 10),
                           "y": optuna.distributions.FloatDistribution(0, 10)}))
    return study


def test_the_trials_plot_legend_lists_only_drawn_groups():
    data = {"objectives": ["t"], "directions": ["maximize"], "trials": [_trial(0, 5.0, True), _trial(1, 6.0, True)],
            "pareto": [], "baseline": None}
    figure = plots(data, _study([]))["trials.png"]
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["feasible"]


def test_importance_is_computed_over_feasible_trials_only():
    # feasible trials: the value follows x alone; the infeasible ones (scored 0) differ only in y
    points = [(x, 5.0, 10.0 * x) for x in range(1, 9)] + [(5.0, y, 0.0) for y in range(1, 9)]
    study = _study(points)
    trials = [_trial(i, v, feasible=i < 8) for i, (_, _, v) in enumerate(points)]
    importance = _importances(study, {"trials": trials, "directions": ["maximize"]})
    assert importance["x"] > 4 * importance["y"]
