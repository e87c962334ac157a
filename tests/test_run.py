"""Tests of the run module: every config check names its field; the run a config describes."""

import os
import re

import numpy as np
import pytest

from configs import smoke
from diffusion_bias import run as run_lib


# More fields, through `check_config` itself (what the launchers call first).
@pytest.mark.parametrize(
    "setting,path,value,match",
    [
        ("grammar", "data.sigma", -1.0, "config.data.sigma"),
        ("grammar", "data.grammar_seed", -1, "config.data.grammar_seed"),
        ("grammar", "model.num_heads", 3, "config.model.num_heads"),
        ("grammar", "model.name", "mlp", "config.model.name"),
        ("digits", "splits.heldout_size", 0, "config.splits.heldout_size"),
        ("digits", "training.batch_size", 0, "config.training.batch_size"),
        ("digits", "snapshots.first_epoch", 11, "config.snapshots.first_epoch"),
        ("digits", "training.twin_devices", 3, "config.training.twin_devices"),
        ("digits", "model.dropout_rate", 1.0, "config.model.dropout_rate"),
        ("digits", "optimizer.b2", 1.0, "config.optimizer.b2"),
        ("digits", "analysis.critical_ratio", 0.0, "config.analysis.critical_ratio"),
        ("digits", "analysis.clip_x0", -1.0, "config.analysis.clip_x0"),
        ("digits", "analysis.score_times", (), "config.analysis.score_times"),
        ("digits", "analysis.loss_repeats", 0, "config.analysis.loss_repeats"),
    ],
)
def test_check_config_names_the_field(setting, path, value, match):
    config = smoke.get_config(setting)
    section, name = path.split(".")
    with config.unlocked():
        config[section][name] = value
    with pytest.raises(run_lib.ConfigError, match=re.escape(match)):
        run_lib.check_config(config)


@pytest.mark.parametrize("setting", ["digits", "grammar"])
def test_the_shipped_configs_pass(setting):
    run_lib.check_config(smoke.get_config(setting))


def test_data_pool_size_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_lib.data_pool_size(smoke.get_config("grammar").data) == 2000
    assert run_lib.data_pool_size(smoke.get_config("digits").data) == 1797
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
    with pytest.raises(run_lib.ConfigError, match=field):
        run_lib.check_config(config)


def test_steps_per_call_must_divide_the_ceil_based_total():
    config = smoke.get_config()
    with config.unlocked():
        config.splits.split_size = 56  # 4 steps per epoch, 40 in all (n // batch: 30)
        config.training.steps_per_call = 3  # divides 30, not 40
    with pytest.raises(run_lib.ConfigError, match="ceil"):
        run_lib.check_config(config)
    with config.unlocked():
        config.training.steps_per_call = 8
    run_lib.check_config(config)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("stop", "never", "config.monitor.stop"),
        ("stop", "bias_onset", "config.monitor.enabled"),
        ("patience", 0, "config.monitor.patience"),
        ("auc_threshold", 1.5, "config.monitor.auc_threshold"),
    ],
)
def test_monitor_fields_are_checked(field, value, match):
    config = smoke.get_config()
    with config.unlocked():
        config.monitor[field] = value
    with pytest.raises(run_lib.ConfigError, match=re.escape(match)):
        run_lib.check_config(config)


def test_prepare_describes_the_run_the_config_alone_plans(tmp_path):
    config = smoke.get_config()
    run = run_lib.prepare(config, str(tmp_path))
    k, n = config.splits.num_splits, config.splits.split_size
    assert run.kind == "images"
    assert run.train.shape[:2] == run.twin_data.train.shape[:2] == (k, n)
    assert run.schedule.num_steps == config.diffusion.num_steps
    assert run.steps_per_epoch == run_lib.steps_per_epoch(config)
    assert run.total_steps == config.training.num_epochs * run.steps_per_epoch
    np.testing.assert_array_equal(run.snapshot_steps, run_lib.snapshot_steps(config))
    assert run.snapshot_steps[-1] == run.total_steps
