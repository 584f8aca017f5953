"""The calibration pipeline end to end: on the CPU with a host clock (plumbing: workloads, fit, table,
loading), on a GPU with CUDA graphs (marked ``cuda``)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from nfpsim.calibration.measure import GraphTimer, WallTimer, workload_for
from nfpsim.calibration.plan import CalibPoint, PlanSettings, Recipe, TimingSettings
from nfpsim.calibration.run import CalibrationSettings, calibrate
from nfpsim.latency.table import CalibrationTable, load_table
from nfpsim.config import ModelSpec, load_hardware, load_kernels
from nfpsim.io import write_json
from nfpsim.latency.calibrated import CalibratedLatencyModel
from nfpsim.shapes import ForwardShape, Op, PointwiseShape, decompose

TINY = ModelSpec(name="tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, ffn_size=128,
                 vocab_size=256, max_context=4096)
TINY_MOE = dataclasses.replace(TINY, name="tiny_moe", num_experts=4, top_k=2, expert_ffn_size=32, num_dense_layers=0)


def settings(implementations, max_tokens=17):
    return CalibrationSettings(
        hardware=load_hardware("h100_sxm"),
        plan=PlanSettings(models=(TINY, TINY_MOE), implementations=tuple(load_kernels(i) for i in implementations),
                          max_tokens=max_tokens, batches=(1, 2), contexts=(16,), max_positions=4,
                          pointwise_tokens=(1, 16), eager_tokens=(1, 16), eager_positions=(4,)),
        timing=TimingSettings(warmup=1, repeats=3), holdout_fraction=0.3, seed=0, plan_only=False, output_dir=None,
        copy_mib=1, matmul_size=64, memory_fraction=0.05)


def test_cpu_pipeline_times_every_family_fits_and_round_trips(tmp_path):
    lines = []
    table = calibrate(settings(["vendor", "triton"]), torch.device("cpu"), torch.float32,
                      WallTimer(TimingSettings(warmup=1, repeats=3)), progress=False, log=lines.append)
    families = {(m.implementation, type(m.op.shape).__name__) for m in table.measurements}
    assert families == {(i, f) for i in ("vendor", "triton")
                        for f in ("GemmShape", "MoeShape", "AttentionShape", "PointwiseShape")}
    assert all(m.time_s > 0 for m in table.measurements)
    assert set(table.fitted) == {"vendor", "triton"}
    assert table.provenance["torch"] == torch.__version__ and table.provenance["date"]
    assert any(line.startswith("fit vendor/gemm") for line in lines)
    path = tmp_path / "cpu.json"
    write_json(path, table.to_dict())
    loaded = load_table(path)
    assert loaded == CalibrationTable.from_dict(json.loads(path.read_text()))
    cpu = dataclasses.replace(load_hardware("h100_sxm"), name="cpu")
    model = CalibratedLatencyModel(cpu, load_kernels("vendor"), loaded)
    breakdown = model.forward(TINY, ForwardShape.uniform(2, 1, 16))
    sources = {op.name: op.cost.source for op in breakdown.ops}
    assert sources["qkv_proj"] == "measured" and sources["attention"] == "measured"
    # eager glue: the vendor forward's own torch kernels were timed (as generic kernels of their class), never
    # the fused steps, and the generic pointwise constants are fitted from them
    vendor_pointwise = [m for m in loaded.measurements
                        if m.implementation == "vendor" and isinstance(m.op.shape, PointwiseShape)]
    assert vendor_pointwise and all("kernel" in dict(m.dims) for m in vendor_pointwise)
    assert not {m.op.name for m in vendor_pointwise} & {"add_norm", "act_mul", "rope_kv_write"}
    assert {"residual_add", "norm.pow", "norm.mean", "rope_q.mul_cos", "rope_k.cat", "act_mul.silu", "sampling",
            "router_topk", "mask_compare", "q_fold_copy"} <= {m.op.name for m in vendor_pointwise}
    assert "pointwise" in loaded.fitted["vendor"] and "pointwise.add_norm" not in loaded.fitted["vendor"]
    generic = [m for m in vendor_pointwise if m.op.shape.kind != "gather"]
    assert loaded.fit_quality["vendor"]["pointwise"]["points"] == len(generic)
    # an eager op answers as measured where its name and shape were timed, from the fit or a neighbour otherwise
    timed = {(m.op.name, m.op.shape) for m in vendor_pointwise}
    for shape in (ForwardShape.uniform(1, 1, 16), ForwardShape.uniform(16, 1, 16), ForwardShape.uniform(1, 4, 16)):
        ops = [op for op in decompose(TINY, shape, "eager") if isinstance(op.shape, PointwiseShape)]
        measured = {op.name for op in ops if model.op_cost(op).source == "measured"}
        assert measured == {op.name for op in ops if (op.name, op.shape) in timed} != set(), shape
        assert {model.op_cost(op).source for op in ops} <= {"measured", "corrected", "fitted"}


def test_every_generic_kernel_computes_its_op_on_the_cpu():
    """The eager-glue recipes run as the torch ops they name, on the set they allocate."""
    expected = {
        "add": lambda s: s["a"].double() + (s["b"].double() if "b" in s else 1),
        "copy": lambda s: s["a"].double().expand(s["out"].shape),
        "fill": lambda s: torch.ones(s["out"].shape),
        "sum": lambda s: s["a"].double().sum(-1),
        "argmax": lambda s: s["a"].argmax(-1),
        "gather": lambda s: s["a"][s["ids"]],
        "softmax": lambda s: s["a"].softmax(-1),
        "topk": lambda s: s["a"].topk(s["out"].shape[-1], -1).values,
    }
    recipes = [Recipe("add", 1, 8, "bf16", "bf16", b="bf16"), Recipe("add", 4, 16, "fp32", "bf16"),
               Recipe("add", 4, 16, "bf16", "bf16", b="bf16", b_shape="1w"),
               Recipe("add", 4, 16, "fp32", "fp32", b="fp32", b_shape="r1"),
               Recipe("add", 3, 5, "uint8", "int64", "r1", "int64", "1w"), Recipe("copy", 1, 8, "fp32", "bf16"),
               Recipe("copy", 4, 16, "uint8", "uint8", "1w"), Recipe("fill", 1, 1, "bf16"),
               Recipe("sum", 3, 8, "fp32", "fp32"), Recipe("argmax", 3, 64, "int64", "bf16"),
               Recipe("gather", 2, 8, "bf16", "bf16"), Recipe("softmax", 2, 8, "fp32", "fp32"),
               Recipe("topk", 2, 8, "fp32", "fp32", k=3)]
    for recipe in recipes:
        point = CalibPoint("vendor", "tiny", Op("op", "pointwise", recipe.shape("elementwise")),
                           (("tokens", 1), *recipe.dims))
        work = workload_for(point, load_kernels("vendor"), torch.device("cpu"), torch.float32, 1)
        data = work.make_set()
        work.variants[recipe.kernel](data)
        assert data["out"].numel() == recipe.out_elements, recipe
        assert torch.allclose(data["out"].double(), expected[recipe.kernel](data).double(), rtol=1e-2), recipe


@pytest.mark.cuda
def test_gpu_calibration_of_a_tiny_plan(tmp_path):
    timing = TimingSettings(warmup=2, repeats=5)
    table = calibrate(settings(["vendor", "triton"], max_tokens=64), torch.device("cuda"), torch.bfloat16,
                      GraphTimer(timing), progress=False, log=lambda line: None)
    assert table.ceilings["copy_bytes_per_s"] > 1e11
    assert table.gpu["num_sms"] > 1
    for implementation, families in table.fit_quality.items():
        for family, quality in families.items():
            assert quality["train_mape"] < 1.0, (implementation, family, quality)


def test_nfp_cli_with_a_calibration_table(tmp_path):
    from tests.calibration import small_plan, synthetic_measurements, synthetic_table, true_constants
    from nfpsim.config import load_model

    hw, kernels = load_hardware("h100_sxm"), load_kernels("triton")
    truth = true_constants(hw, kernels)
    plan = small_plan([kernels], [load_model("llama3_8b")], max_positions=16)
    measured = synthetic_measurements(plan.points, {"triton": kernels}, {"triton": truth})
    fitted = {"triton": {f: dataclasses.asdict(getattr(truth, f)) for f in ("gemm", "moe", "attention", "pointwise")}}
    path = tmp_path / "h100_sxm.json"
    write_json(path, synthetic_table(hw, [kernels], [], fitted, measured).to_dict())
    run = subprocess.run([sys.executable, "-m", "nfpsim.cli.nfp", "latency=calibrated", f"calibration={path}",
                          "kernels=triton", "plot=false", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env={**os.environ})
    assert run.returncode == 0, run.stderr
    assert "calibrated latency" in run.stdout and "op sources at M=1" in run.stdout
    data = json.loads((tmp_path / "run" / "nfp.json").read_text())
    assert data["latency"] == "calibrated" and data["sources"]
    missing = subprocess.run([sys.executable, "-m", "nfpsim.cli.nfp", "latency=calibrated", "hardware=b200",
                              f"hydra.run.dir={tmp_path / 'none'}"], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path)
    assert missing.returncode == 2 and "no calibration table for hardware=b200" in missing.stderr
