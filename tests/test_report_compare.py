"""Reports that compare runs: what tells two runs apart, NFP's '+', unreadable runs, sweep plot axes."""

import json
import warnings

import pytest

from nfpsim.report import render


def write_run(path, kind, data):
    path.mkdir(parents=True)
    (path / f"{kind}.json").write_text(json.dumps(data))


def simulate_data(kernels="vendor", k=2, seed=0, workload="Poisson 8 req/s, 20 requests"):
    return {"model": "llama3_8b", "hardware": "h100_sxm", "kernels": kernels, "latency": "analytic", "eps": 0.1,
            "workload": {"description": workload}, "decoding": {"description": f"speculative k={k}"},
            "throughput_tokens_per_s": 1000.0,
            "config": {"seed": seed, "kernels": {"name": kernels}, "engine": {"max_num_seqs": 128},
                       "decoding": {"name": "speculative", "k": k}, "output": {"plot": seed == 0}}}


def listing_rows(root):
    table = [b for b in render.listing_report(root).blocks if isinstance(b, render.Table)][0]
    return table.columns, {row[0]: dict(zip(table.columns, row)) for row in table.rows}


def test_the_listing_shows_kernels_workload_decoding_and_any_other_setting_that_differs(tmp_path):
    write_run(tmp_path / "a", "simulate", simulate_data(kernels="vendor"))
    write_run(tmp_path / "b", "simulate", simulate_data(kernels="triton"))
    write_run(tmp_path / "c", "simulate", simulate_data(k=4))
    write_run(tmp_path / "d", "simulate", simulate_data(workload="bursty"))
    write_run(tmp_path / "e", "simulate", simulate_data(seed=1))  # and output.plot, which changes no figure
    columns, rows = listing_rows(tmp_path)
    assert {"kernels", "workload", "decoding", "other settings"} <= set(columns)
    assert rows["b"]["kernels"] == "triton" and rows["c"]["decoding"] == "speculative k=4"
    assert rows["d"]["workload"] == "bursty"
    assert rows["e"]["other settings"] == "seed=1" and rows["a"]["other settings"] == "seed=0"
    shown = [tuple(v for k, v in row.items() if k not in ("run", "written")) for row in rows.values()]
    assert len(set(shown)) == len(shown)


@pytest.mark.parametrize("saturated, label", [(True, "512+"), (False, "512")])
def test_nfp_keeps_its_plus_when_near_free_over_the_whole_grid(tmp_path, saturated, label):
    write_run(tmp_path / "n", "nfp", {"model": "m", "kernels": "vendor", "nfp": 512,
                                      "forward": {"nfp": 512, "saturated": saturated}})
    _, rows = listing_rows(tmp_path)
    assert rows["n"]["NFP"] == label


def test_an_unreadable_run_warns_and_shows_dashes(tmp_path):
    write_run(tmp_path / "good", "simulate", simulate_data())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "simulate.json").write_text('{"model": "llama3_8b", ')
    with pytest.warns(UserWarning, match=r"bad/simulate.json: unreadable \(JSONDecodeError\)"):
        _, rows = listing_rows(tmp_path)
    assert rows["bad"]["model"] is None and rows["bad"]["other settings"] == "(no readable config)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        render.load_run(tmp_path / "good")  # a good run does not warn


def test_one_swept_number_is_one_line_in_its_order():
    settings = [{"decoding.k": 4}, {"decoding.k": 1}, {"decoding.k": 2}]
    axes = render.SweepAxes.of(settings, ["k=4", "k=1", "k=2"])
    assert axes.x == (4, 1, 2) and axes.xlabel == "decoding.k"
    assert axes.lines == (("", (1, 2, 0)),)


def test_a_two_setting_sweep_draws_one_line_per_value_of_the_other():
    settings = [{"decoding.k": k, "kernels": kern} for kern in ("triton", "vendor") for k in (1, 2)]
    axes = render.SweepAxes.of(settings, ["a", "b", "c", "d"])
    assert axes.lines == (("kernels=triton", (0, 1)), ("kernels=vendor", (2, 3)))


def test_unrelated_jobs_are_points_without_lines():
    settings = [{"decoding": "ar", "kernels": "triton"}, {"decoding": "jacobi", "kernels": "vendor"}]
    axes = render.SweepAxes.of(settings, ["ar, triton", "jacobi, vendor"])
    assert all(len(jobs) == 1 for _, jobs in axes.lines) and axes.ticks == ("ar, triton", "jacobi, vendor")


def test_sweep_plots_start_every_axis_at_zero():
    from nfpsim.report import simulate as sim_report

    rows = [{"settings": f"k={k}", "throughput_tokens_per_s": 1482.0 + k, "goodput_tokens_per_s": 1480.0,
             "ttft_s.p50": 0.5, "ttft_s.p99": 0.6, "tpot_s.p50": 0.01, "tpot_s.p99": 0.011} for k in (1, 2, 4)]
    figure = sim_report.sweep_plot(rows, [{"decoding.k": k} for k in (1, 2, 4)], "t")
    for ax in figure.axes:
        assert ax.get_ylim()[0] == 0


def test_wide_tables_scroll_inside_their_box():
    page = render.to_html("t", [render.Table(("a", "b"), (("x" * 300, 1),))])
    assert "<div class='table'><table>" in page and ".table{overflow-x:auto" in page
