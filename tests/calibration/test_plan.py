import json
import subprocess
import sys

import pytest

from nfpsim.calibration.plan import (ROW_KINDS, PlanSettings, Recipe, TimingSettings, attention_positions, build_plan,
                                     estimate_seconds, recipe_for, token_grid)
from nfpsim.config import load_hardware, load_kernels, load_model
from nfpsim.shapes import ForwardShape, PointwiseShape, decompose
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


def _eager_ops(model, settings):
    """Every pointwise op of ``model``'s eager forwards the plan draws from (one position per sequence at
    each eager token count, then the masks and copies of several positions)."""
    single = {op.name for op in decompose(model, ForwardShape.uniform(1, 1, 0), "eager")}
    for t in settings.eager_tokens:
        yield from (op for op in decompose(model, ForwardShape.uniform(t, 1, 0), "eager")
                    if isinstance(op.shape, PointwiseShape))
    for m in settings.eager_positions:
        for context in settings.contexts:
            yield from (op for op in decompose(model, ForwardShape.uniform(1, m, context), "eager")
                        if isinstance(op.shape, PointwiseShape) and op.name not in single)


def test_eager_glue_times_its_torch_kernels_and_fused_glue_its_fused_steps():
    vendor, triton = load_kernels("vendor"), load_kernels("triton")
    models = [load_model("llama3_8b"), load_model("qwen3_30b_a3b")]
    settings = PlanSettings(models=tuple(models), implementations=(triton, vendor), max_tokens=16, batches=(1,),
                            contexts=(4096, 32768), max_positions=4)
    plan = build_plan(settings)
    pointwise = [p for p in plan.points if p.family == "pointwise"]
    fused = {"add_norm", "act_mul", "rope_kv_write"}
    assert {p.op.name for p in pointwise if p.implementation == "triton"} == fused
    assert not any(p.generic for p in pointwise if p.implementation == "triton")
    eager = [p for p in pointwise if p.implementation == "vendor"]
    assert all(p.generic for p in eager) and not {p.op.name for p in eager} & fused
    names, recipes = {p.op.name for p in eager}, {Recipe.from_dims(p.dims) for p in eager}
    assert len(recipes) == len(eager)  # each generic kernel timed once, whatever the model or layer role
    for model in models:
        for op in _eager_ops(model, settings):
            recipe, timed = recipe_for(op.shape, model.num_experts if op.shape.kind in ROW_KINDS else 0)
            assert timed == op.shape, op  # every kernel of these models has a recipe moving exactly its bytes
            assert recipe in recipes, op  # a point times it, whichever op's name it kept
    # the M > 1 kernels are there too (their layout copies are the rotary's cat kernel at M tokens)
    assert {"mask_compare", "mask_fold", "mask_bias.fill", "mask_bias.where"} <= names


def test_a_recipe_reproduces_its_op_or_its_point_prices_what_it_times():
    # Llama-3-8B's eager ops at one token (residual_add, norm.mean), at M=4 over 4096 tokens (rope_cos's
    # gather, mask_bias.fill), and two sizes of mixed dtypes (bytes per element not a whole number)
    for shape in (PointwiseShape(24576.0, 4096, "elementwise"), PointwiseShape(16388.0, 1, "reduction"),
                  PointwiseShape(4160.0, 2048, "gather"), PointwiseShape(2.0, 1.0, "fill"),
                  PointwiseShape(1280.0, 416, "elementwise"), PointwiseShape(2080.0, 1664, "copy")):
        recipe, timed = recipe_for(shape)
        assert timed == shape and recipe.bytes == shape.bytes and recipe.out_elements == shape.elements
        assert Recipe.from_dims(recipe.dims) == recipe
    # 1001 bytes into 3 elements: no kernel moves that; the point's shape is the nearest kernel's own
    for shape in (PointwiseShape(1001.0, 3, "elementwise"), PointwiseShape(1000.5, 7.5, "copy"),
                  PointwiseShape(999.0, 5, "reduction"), PointwiseShape(100.0, 4, "topk")):
        recipe, timed = recipe_for(shape)
        assert timed != shape and (timed.bytes, timed.elements) == (recipe.bytes, recipe.out_elements)
        assert recipe_for(timed)[1] == timed  # what it times is exact for its own recipe
