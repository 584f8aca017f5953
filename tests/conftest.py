"""Test set-up shared by every tier.

Triton kernels run on the CPU through the interpreter; the variable has to be set before the first
``@triton.jit`` is created, so it is set here, before any test module imports ``nfpsim.kernels``.
"""

import atexit
import os
import shutil
import tempfile

import pytest

try:
    import torch
except ImportError:  # the default install has no torch: the tests that run torch are not collected
    torch = None

collect_ignore_glob = [] if torch is not None else [
    "kernels/*", "validation/test_cli.py", "validation/test_pipeline.py", "validation/test_forward.py",
    "calibration/test_pipeline.py"]

# The apps' compose cache (nfpsim.cli.compose_cache) lives in a directory of this session's own, which
# every subprocess inherits: no test reads an entry a user's runs (or another checkout) left behind.
os.environ["NFPSIM_CACHE_DIR"] = tempfile.mkdtemp(prefix="nfpsim-test-cache-")
atexit.register(shutil.rmtree, os.environ["NFPSIM_CACHE_DIR"], ignore_errors=True)

HAS_CUDA = torch is not None and torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


# Tests that take tens of seconds of CPU each (measured on two cores): marked `slow` here, beside the
# ones marked in their own files, so that the README's test command stays within minutes. CI runs them.
SLOW = (
    "calibration/test_pipeline.py::test_cpu_pipeline_times_every_family_fits_and_round_trips",
    "calibration/test_fit.py::test_fit_recovers_the_constants_that_made_the_measurements",
    "calibration/test_fit.py::test_noise_free_measurements_are_fitted_closely",
    "validation/test_pipeline.py::test_cpu_run_writes_the_contract_with_a_calibration_table",
    "search/test_search_cli.py::test_an_incompatible_resume_or_bad_storage_is_one_line_and_damages_nothing",
    "search/test_search_cli.py::test_twenty_trials_on_defaults_meet_the_contract",
    "search/test_search_cli.py::test_same_seed_same_study",
    "search/test_search_cli.py::test_rerun_resumes_the_same_study",
    "search/test_search_cli.py::test_ctrl_c_writes_what_completed_and_says_how_to_resume",  # a real SIGINT
    "test_serving_experiment.py::test_the_concurrency_sweep_runs_on_both_gpus_and_reports_its_knee",
    # end-to-end runs of several seconds each (subprocesses, whole pipelines): in CI's slow pass
    "test_cli_report.py::test_a_simulate_run_gets_markdown_and_a_self_contained_page",
    "test_cli_simulate.py::test_an_experiment_sweep_writes_a_combined_summary",
    "validation/test_resilience.py::test_failures_in_a_row_stop_starting_curves_once_the_device_no_longer_runs_a_kernel",
    "validation/test_cli.py::test_measured_repredicts_a_stored_result_without_a_gpu",
    "search/test_study.py::test_a_silent_workers_trial_is_failed_over_and_the_study_ends_at_n_trials",
    "kernels/test_moe.py::test_align_invariants",
)


@pytest.hookimpl(tryfirst=True)  # before `-m 'not slow'` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.nodeid.split("tests/", 1)[-1].startswith(name) for name in SLOW):
            item.add_marker(pytest.mark.slow)
    if HAS_CUDA:
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)
