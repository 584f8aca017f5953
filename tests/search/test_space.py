import dataclasses

import optuna
import pytest
from hydra import compose, initialize_config_dir

from nfpsim.config import CONF_DIR, available, load_model
from nfpsim.errors import ConfigError
from nfpsim.search.objective import ExpertParallel
from nfpsim.search.search_settings import SearchSettings
from nfpsim.search.space import IntRange, derive_budget_sizes, sample, solve_size
from nfpsim.shapes import ForwardShape, MoeShape, decompose

optuna.logging.set_verbosity(optuna.logging.WARNING)


def settings_for(preset, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return SearchSettings.from_config(compose(config_name="search", overrides=[f"search={preset}", *overrides]))


@pytest.mark.parametrize("preset", available("search"))
def test_every_preset_composes_and_its_baseline_is_in_the_space(preset):
    s = settings_for(preset)
    assert s.n_trials >= 1 and s.problem.space.methods
    # the enqueued parameters rebuild exactly the baseline: shape and serving knobs
    trial = optuna.trial.FixedTrial(s.baseline_params)
    candidate = sample(trial, s.problem.space, s.problem.template, s.problem.budget)
    assert candidate.model.param_counts() == s.baseline.model.param_counts()
    assert candidate.serving() == s.baseline.serving()


def test_required_presets_exist():
    assert {"moe_30b_a3b_h100_speculative", "dense_8b_h200_diffusion", "width_batch_llama3_8b"} <= \
        set(available("search"))


def test_solve_size_inverts_an_affine_count():
    model = load_model("llama3_8b")
    rng = IntRange(1024, 28672, 256)
    target = dataclasses.replace(model, ffn_size=14336).param_counts()[0]
    assert solve_size(model, "ffn_size", rng, target, 0) == 14336
    # halfway between two steps rounds to one of them; beyond the range clamps to its ends
    half = (target + dataclasses.replace(model, ffn_size=14592).param_counts()[0]) / 2
    assert solve_size(model, "ffn_size", rng, half, 0) in (14336, 14592)
    assert solve_size(model, "ffn_size", rng, 1e15, 0) == 28672
    assert solve_size(model, "ffn_size", rng, 0, 0) == 1024


def test_moe_shapes_meet_both_budgets_by_construction():
    """Issue 12 #7: 295 of 300 random MoE samples used to break a budget."""
    s = settings_for("moe_30b_a3b_h100_speculative")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    budget = s.problem.budget
    within = 0
    for _ in range(300):
        trial = study.ask()
        m = sample(trial, s.problem.space, s.problem.template, budget).model
        assert m.hidden_size % m.num_heads == 0 and m.num_heads % m.num_kv_heads == 0 and m.top_k <= m.num_experts
        within += max(budget.violations(*m.param_counts()).values()) <= 0
        study.tell(trial, 0.0)
    assert within >= 0.9 * 300


def test_derived_sizes_hit_the_sampled_fills():
    s = settings_for("moe_30b_a3b_h100_speculative")
    budget, space = s.problem.budget, s.problem.space
    model = dataclasses.replace(s.baseline.model, num_layers=40, top_k=6, num_experts=64)
    derived = derive_budget_sizes(model, space, budget, {"fill_active": 0.93, "fill_total": 0.95})
    total, active = derived.param_counts()
    # up to one step: 64 expert channels (~2% of active) and 8 experts (~3% of total)
    assert abs(active / (0.93 * budget.active_params) - 1) < 0.03
    assert abs(total / (0.95 * budget.total_params) - 1) < 0.04


def test_dense_width_follows_the_total_budget():
    s = settings_for("dense_8b_h200_diffusion")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(40):
        trial = study.ask()
        c = sample(trial, s.problem.space, s.problem.template, s.problem.budget)
        assert "ffn_multiple" not in trial.params and "num_experts" not in trial.params
        assert c.model.ffn_size % s.problem.space.ffn_unit == 0
        study.tell(trial, 0.0)


@pytest.mark.parametrize("override, message", [
    ("search.space.methods=[]", "search.space.methods: empty"),
    ("search.space.num_experts={low:4,high:64}", "contradicts num_experts"),
    ("search.budget.total_params_b=0.3", "unreachable"),
    ("search.budget.active_params_b=100", "unreachable"),
    ("search.space.num_layers={low:8,high:12}", "outside the search space"),
    ("search.objective=speed", "search.objective='speed': allowed: throughput, throughput_tpot"),
    ("search.baseline.tp=3", "search.baseline.tp=3: tp=3 must divide"),
    ("search.workload.think_time_s=1.0", "the objective is capacity"),
    ("search.workload.num_clients=64", "num_clients > 128"),
])
def test_bad_search_configs_fail_before_any_trial(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        settings_for("moe_30b_a3b_h100_speculative", override)


def test_a_fixed_model_preset_derives_no_width_and_keeps_its_baseline():
    s = settings_for("width_batch_llama3_8b")
    assert s.problem.budget.fills("dense") == {}
    assert s.baseline.model == load_model("llama3_8b")


def _experts(model, tokens, tp, ep):
    shape = ForwardShape(ForwardShape.uniform(tokens, 1, 0).groups, tp, ep)
    return next(op.shape for op in decompose(model, shape) if op.name == "experts")


def test_expert_parallel_ranks_hold_whole_experts_and_their_share_of_the_work():
    model = load_model("qwen3_30b_a3b")  # 128 experts, top-8
    split, spread = _experts(model, 1, 8, 1), _experts(model, 1, 8, 8)
    assert isinstance(spread, MoeShape)
    # weights: a rank holds 1/8 of all expert weights either way
    assert split.num_experts * split.expert_bytes == spread.num_experts * spread.expert_bytes
    # one token's 8 choices land on ~1 expert per rank (uniform routing), not 8 slices of 8 experts
    assert split.active_experts == pytest.approx(8)
    assert spread.active_experts == pytest.approx(1)
    # the FLOPs per rank are the same share of the token's expert work
    assert spread.flops == pytest.approx(split.flops)
    with pytest.raises(ConfigError, match="ep=3 must divide tp=8"):
        _experts(model, 1, 8, 3)


def test_expert_parallel_is_used_by_the_latency_of_an_ep_candidate():
    seen = []

    class Stub:
        def forward_time(self, model, shape):
            seen.append(shape.ep)
            return 1.0

    ExpertParallel(Stub(), 4).forward_time(load_model("qwen3_30b_a3b"), ForwardShape.uniform(2, 1, 0, 4))
    assert seen == [4]
