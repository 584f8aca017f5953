import optuna
import pytest
from hydra import compose, initialize_config_dir

from nfpsim.config import CONF_DIR, available, load_model
from nfpsim.errors import ConfigError
from nfpsim.search.settings import SearchSettings
from nfpsim.search.space import sample

optuna.logging.set_verbosity(optuna.logging.WARNING)


def settings_for(preset, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return SearchSettings.from_config(compose(config_name="search", overrides=[f"search={preset}", *overrides]))


@pytest.mark.parametrize("preset", available("search"))
def test_every_preset_composes_and_its_baseline_is_in_the_space(preset):
    s = settings_for(preset)
    assert s.n_trials >= 1 and s.problem.space.methods
    # the enqueued parameters rebuild exactly the baseline model
    trial = optuna.trial.FixedTrial(s.baseline_params)
    candidate = sample(trial, s.problem.space, s.problem.template, s.problem.budget.targets())
    assert candidate.model.param_counts() == s.baseline.model.param_counts()
    assert (candidate.method, candidate.width, candidate.max_num_seqs) == \
        (s.baseline.method, s.baseline.width, s.baseline.max_num_seqs)


def test_required_presets_exist():
    assert {"moe_30b_a3b_h100_speculative", "dense_8b_h200_diffusion", "width_batch_llama3_8b"} <= \
        set(available("search"))


@pytest.mark.parametrize("preset", ["moe_30b_a3b_h100_speculative", "dense_8b_h200_diffusion"])
def test_sampled_shapes_are_valid_and_spend_the_budget(preset):
    s = settings_for(preset)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    space, budget = s.problem.space, s.problem.budget
    unclamped = 0
    for _ in range(60):
        trial = study.ask()
        c = sample(trial, space, s.problem.template, budget.targets())
        m = c.model
        assert m.hidden_size % m.num_heads == 0 and m.num_heads % m.num_kv_heads == 0
        assert m.is_moe == ("moe" in space.families and trial.params["family"] == "moe")
        if m.is_moe:
            assert 1 <= m.top_k <= m.num_experts and "ffn_multiple" not in trial.params
        else:
            assert "num_experts" not in trial.params  # expert parameters only for MoE trials
        target = budget.targets()["moe" if m.is_moe else "dense"]
        if m.is_moe:
            width, low, high = m.expert_ffn_size, space.expert_ffn_size.low, space.expert_ffn_size.high
        else:
            width, low, high = m.ffn_size, space.ffn_multiple.low * space.ffn_unit, space.ffn_multiple.high * space.ffn_unit
        if low < width < high:  # the derived width was not clamped to the space's range
            unclamped += 1
            count = m.param_counts()[target.index]
            # met up to rounding the width to its unit (64 of ~1k expert channels: under 3% of the count)
            assert abs(count / (trial.params["budget_fill"] * target.params) - 1) < 0.03
        study.tell(trial, 0.0)
    assert unclamped >= 15  # the check above ran on a good share of the 60 trials


@pytest.mark.parametrize("override, message", [
    ("search.space.methods=[]", "search.space.methods: empty"),
    ("search.space.num_experts=[4]", "contradicts num_experts"),
    ("search.budget.total_params_b=0.3", "unreachable"),
    ("search.budget.active_params_b=100", "unreachable"),
    ("search.space.num_layers={low:8,high:12}", "outside the search space"),
    ("search.objective=speed", "search.objective='speed': allowed: throughput, throughput_tpot"),
])
def test_bad_search_configs_fail_before_any_trial(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        settings_for("moe_30b_a3b_h100_speculative", override)


def test_a_fixed_model_preset_derives_no_width_and_keeps_its_baseline():
    s = settings_for("width_batch_llama3_8b")
    assert s.problem.budget.targets() == {}
    assert s.baseline.model == load_model("llama3_8b")
