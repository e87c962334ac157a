"""Tests of the config checks: every check names its field; the shipped configs pass."""

import os
import re

import pytest

from configs import smoke
from diffusion_bias.config import config_checks


# More fields, through `check_config` itself (what the launchers call first).
@pytest.mark.parametrize(
    "setting,path,value,match",
    [
        ("grammar", "data.sigma", -1.0, "config.data.sigma"),
        ("grammar", "data.grammar_seed", -1, "config.data.grammar_seed"),
        ("grammar", "data.grammar_rng", "numpy", "config.data.grammar_rng"),
        ("grammar", "data.grammar_rng", None, "config.data.grammar_rng"),
        ("grammar", "model.num_heads", 3, "config.model.num_heads"),
        ("grammar", "model.name", "mlp", "config.model.name"),
        ("digits", "splits.heldout_size", 0, "config.splits.heldout_size"),
        ("digits", "training.batch_size", 0, "config.training.batch_size"),
        ("digits", "snapshots.first_epoch", 11, "config.snapshots.first_epoch"),
        ("digits", "training.twin_devices", 3, "config.training.twin_devices"),
        ("digits", "training.num_devices", 2, "config.training.num_devices"),
        ("digits", "training.num_devices", -1, "config.training.num_devices"),
        ("digits", "model.dropout_rate", 1.0, "config.model.dropout_rate"),
        ("digits", "model.dtype", "float16", "config.model.dtype = 'float16' is not offered"),
        ("grammar", "model.dtype", "half", "config.model.dtype"),
        ("digits", "optimizer.b2", 1.0, "config.optimizer.b2"),
        ("digits", "analysis.critical_ratio", 0.0, "config.analysis.critical_ratio"),
        ("digits", "analysis.clip_x0", -1.0, "config.analysis.clip_x0"),
        ("digits", "analysis.score_times", (), "config.analysis.score_times"),
        ("digits", "analysis.loss_repeats", 0, "config.analysis.loss_repeats"),
        ("grammar", "analysis.sampling_steps", 5000, "exceeds the chain's T = config.diffusion"),
        ("digits", "analysis.privacy_times", (0.0, 0.1), "config.analysis.privacy_times"),
        ("grammar", "analysis.privacy_times", (1.5,), "config.analysis.privacy_times"),
        ("digits", "analysis.privacy_confidence", 1.0, "config.analysis.privacy_confidence"),
        ("digits", "analysis.privacy_delta", 0.0, "config.analysis.privacy_delta"),
        ("digits", "analysis.privacy_bootstrap", 0, "config.analysis.privacy_bootstrap"),
        ("digits", "analysis.aggregate", "mode", "config.analysis.aggregate"),
        ("grammar", "analysis.aggregate", None, "config.analysis.aggregate"),
        ("digits", "snapshots.include_last", False, "config.snapshots.include_last"),
        ("digits", "splits.seeds_per_split", 0, "config.splits.seeds_per_split"),
        ("digits", "analysis.eval_centering", "pooled", "config.analysis.eval_centering"),
        ("digits", "analysis.eval_centering_items", -1, "config.analysis.eval_centering_items"),
    ],
)
def test_check_config_names_the_field(setting, path, value, match):
    config = smoke.get_config(setting)
    section, name = path.split(".")
    with config.unlocked():
        config[section][name] = value
    with pytest.raises(config_checks.ConfigError, match=re.escape(match)):
        config_checks.check_config(config)


@pytest.mark.parametrize("setting", ["digits", "grammar"])
def test_the_shipped_configs_pass(setting):
    config_checks.check_config(smoke.get_config(setting))


def test_grammar_rng_is_optional_and_checks_the_legacy_seed():
    config = smoke.get_config("grammar")
    assert "grammar_rng" not in config.data  # as in configs saved before the field
    with config.unlocked():
        config.data.grammar_rng = "legacy"
    config_checks.check_config(config)
    with config.unlocked():
        config.data.grammar_seed = 2**32
    with pytest.raises(config_checks.ConfigError, match=re.escape("config.data.grammar_seed")):
        config_checks.check_config(config)


def test_aggregate_is_mean_or_median_in_one_line_and_absent_means_mean():
    config = smoke.get_config()
    assert config.analysis.aggregate == "mean"
    for value in ("mean", "median"):
        with config.unlocked():
            config.analysis.aggregate = value
        config_checks.check_config(config)
    with config.unlocked():
        config.analysis.aggregate = "trimmed"
    with pytest.raises(config_checks.ConfigError) as err:
        config_checks.check_config(config)
    assert str(err.value) == (
        "config.analysis.aggregate must be one of ['mean', 'median'], got 'trimmed'"
    )
    with config.unlocked():
        del config.analysis["aggregate"]  # as in configs saved before the field
    config_checks.check_config(config)


def test_data_pool_size_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_checks.data_pool_size(smoke.get_config("grammar").data) == 2000
    assert config_checks.data_pool_size(smoke.get_config("digits").data) == 1797
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("field,value", [("centering", "mean"), ("analysis.image_sampler", "ddim")])
def test_protocol_fields_are_checked(field, value):
    config = smoke.get_config()
    with config.unlocked():
        if "." in field:
            section, name = field.split(".")
            config[section][name] = value
        else:
            config[field] = value
    with pytest.raises(config_checks.ConfigError, match=field):
        config_checks.check_config(config)


def test_steps_per_call_must_divide_the_ceil_based_total():
    config = smoke.get_config()
    with config.unlocked():
        config.splits.split_size = 56  # 4 steps per epoch, 40 in all (n // batch: 30)
        config.training.steps_per_call = 3  # divides 30, not 40
    with pytest.raises(config_checks.ConfigError, match="ceil"):
        config_checks.check_config(config)
    with config.unlocked():
        config.training.steps_per_call = 8
    config_checks.check_config(config)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("stop", "never", "config.monitor.stop"),
        ("stop", "bias_onset", "config.monitor.enabled"),
        ("patience", 0, "config.monitor.patience"),
        ("auc_threshold", 1.5, "config.monitor.auc_threshold"),
        ("tpr_threshold", -0.1, "config.monitor.tpr_threshold"),
        ("epsilon_threshold", -1.0, "config.monitor.epsilon_threshold"),
        ("epsilon_threshold", float("inf"), "config.monitor.epsilon_threshold"),
    ],
)
def test_monitor_fields_are_checked(field, value, match):
    config = smoke.get_config()
    with config.unlocked():
        config.monitor[field] = value
    with pytest.raises(config_checks.ConfigError, match=re.escape(match)):
        config_checks.check_config(config)


@pytest.mark.parametrize("path", ["splits.num_splits", "analysis.seed", "data.pool_seed"])
def test_true_is_not_an_integer_field(path):
    # ConfigDict lets a bool into an int field; the check refuses it (True is not 1).
    config = smoke.get_config("grammar")
    section, name = path.split(".")
    with config.unlocked():
        config[section][name] = True
    with pytest.raises(config_checks.ConfigError, match=re.escape(f"config.{path} must be")):
        config_checks.check_config(config)


def test_seeds_per_split_multiplies_the_models_and_excludes_coins_and_the_monitor():
    config = smoke.get_config("digits")
    assert config_checks.num_models(config) == 2
    config.splits.seeds_per_split = 2
    config_checks.check_config(config)
    assert config_checks.num_models(config) == 4
    coins = smoke.get_config("digits")
    coins.splits.update(seeds_per_split=2, assignment="coin")
    with pytest.raises(config_checks.ConfigError, match="needs config.splits.assignment 'fixed'"):
        config_checks.check_config(coins)
    blocks = smoke.get_config("digits")
    blocks.splits.update(seeds_per_split=2, assignment="contiguous", drop_overlap=False)
    config_checks.check_config(blocks)
    blocks.splits.drop_overlap = True
    with pytest.raises(config_checks.ConfigError, match="needs config.splits.drop_overlap = False"):
        config_checks.check_config(blocks)
    monitored = smoke.get_config("digits")
    monitored.splits.seeds_per_split = 2
    monitored.monitor.enabled = True
    with pytest.raises(config_checks.ConfigError, match="needs config.monitor.enabled = False"):
        config_checks.check_config(monitored)


@pytest.mark.parametrize("field,value", [("layout", "torch"), ("param_init", "jax")])
def test_unet_layout_and_init_are_named_choices(field, value):
    config = smoke.get_config("digits")
    config.model = dict(name="unet", base_channels=8, channel_mults=(1, 2), **{field: value})
    with pytest.raises(config_checks.ConfigError, match=f"config.model.{field} must be one of"):
        config_checks.check_config(config)


def test_min_train_step_lies_in_1_to_t():
    config = smoke.get_config("digits")
    config.diffusion.min_train_step = config.diffusion.num_steps + 1
    with pytest.raises(config_checks.ConfigError, match="config.diffusion.min_train_step"):
        config_checks.check_config(config)
