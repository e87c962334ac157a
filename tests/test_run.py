"""Tests of the run module: the run a config describes, built once the config passes."""

import numpy as np
import pytest

from configs import smoke
from diffusion_bias import run as run_lib
from diffusion_bias.config import config_checks


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


def test_prepare_checks_the_config_before_it_builds(tmp_path):
    config = smoke.get_config()
    with config.unlocked():
        config.centering = "mean"
    with pytest.raises(config_checks.ConfigError, match="config.centering"):
        run_lib.prepare(config, str(tmp_path))
