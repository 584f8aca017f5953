import json
import subprocess
import sys

import pytest

from nfpsim.calibration.plan import TimingSettings, attention_positions, estimate_seconds, token_grid
from nfpsim.config import load_hardware, load_kernels, load_model
from tests.calibration import small_plan


def test_token_grid_straddles_every_tile_multiple():
    grid = set(token_grid(1024))
    for tile, top in ((16, 128), (32, 256), (64, 512), (128, 1024)):
        for m in range(tile, top + 1, tile):
            assert m in grid, m  # the last size that fits the tiles
            if m < 1024:
                assert m + 1 in grid  # the first that needs another
    assert max(grid) == 1024 and min(grid) == 1


def test_attention_grid_straddles_query_tiles_after_gqa_packing():
    triton, llama = load_kernels("triton"), load_model("llama3_8b")
    grid = set(attention_positions(triton, llama, 256))
    step = triton.attention.block_q // llama.gqa_group  # 16 rows / 4 heads per KV head = 4 positions
    for m in range(step, 33, step):
        assert {m, m + 1} <= grid


def test_plan_points_are_the_decomposition_shapes_and_unique():
    presets = [load_kernels("triton"), load_kernels("vendor")]
    plan = small_plan(presets, [load_model("llama3_8b"), load_model("qwen3_30b_a3b")])
    keys = [p.key for p in plan.points]
    assert len(keys) == len(set(keys))
    families = {(p.implementation, p.family) for p in plan.points}
    assert families == {(i, f) for i in ("triton", "vendor") for f in ("gemm", "moe", "attention", "pointwise")}
    names = {p.op.name for p in plan.points}
    assert {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head", "router", "experts", "attention",
            "add_norm"} <= names


def test_default_plan_fits_in_six_minutes_on_an_h200(tmp_path):
    run = subprocess.run([sys.executable, "-m", "nfpsim.cli.calibrate", "plan=true", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["hardware"] == "h200" and 0 < data["estimated_gpu_seconds"] <= 360
    assert data["models"] == ["llama3_8b", "qwen3_30b_a3b"]
    assert data["num_points"] == len(data["points"]) > 1000


def test_estimate_grows_with_repeats():
    presets = {k.name: k for k in (load_kernels("triton"), load_kernels("vendor"))}
    plan = small_plan(presets.values(), [load_model("llama3_8b")])
    hw = load_hardware("h100_sxm")
    few = estimate_seconds(plan, hw, presets, TimingSettings(repeats=5))
    many = estimate_seconds(plan, hw, presets, TimingSettings(repeats=50))
    assert many > few > 0


def test_calibrate_without_cuda_exits_nonzero_and_writes_nothing(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "tables"
    run = subprocess.run([sys.executable, "-m", "nfpsim.cli.calibrate", f"output_dir={out}",
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert run.returncode == 2
    assert "needs a CUDA GPU" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_small_sizes_come_first_so_a_budget_cut_loses_large_ones():
    presets = [load_kernels("triton"), load_kernels("vendor")]
    plan = small_plan(presets, [load_model("llama3_8b")], max_tokens=256, max_positions=128)

    def size(p):
        if p.family == "attention":
            return p.op.shape.positions
        return dict(p.dims)["tokens"] if p.dims else p.op.shape.tokens

    sizes = [size(p) for p in plan.points]
    first_large = next(i for i, s in enumerate(sizes) if s > 65)
    assert all(s > 65 for s in sizes[first_large:]) and first_large > 0
    assert {p.family for p in plan.points[:first_large]} == {"gemm", "attention", "pointwise"}
