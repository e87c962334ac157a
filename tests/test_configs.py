"""The paper configs carry the paper's protocol; the CPU configs keep theirs."""

import math

import ml_collections
import numpy as np
import pytest

from configs import celeba_paper
from configs import digits_cpu
from configs import grammar_cpu
from configs import grammar_paper
from configs import smoke
from diffusion_bias import models
from diffusion_bias import run as run_lib
from diffusion_bias.config import config_checks


def test_celeba_paper_scales_centres_and_samples_as_the_paper():
    config = celeba_paper.get_config()
    assert config.data.pixel_range == "unit"  # ToTensor
    assert config.centering == "per_split"  # each split by its own mean
    assert config.analysis.image_sampler == "paper"
    assert config.diffusion.num_steps == 1000
    assert run_lib.steps_per_epoch(config) == math.ceil(1024 / 512)
    assert config.snapshots.epochs == tuple(
        int(e) for e in np.linspace(10, 4999, 50)[1:21].astype(int)
    )
    # The authors' CelebA: every aligned file, in order, in contiguous blocks.
    assert config.data.name == "image_folder" and config.splits.assignment == "contiguous"
    assert not config.splits.drop_overlap
    config_checks.check_config(config, pool_size=202_599)
    # Without its folder the config says what to set, in one line.
    with pytest.raises(config_checks.ConfigError, match="config.data.path must name"):
        config_checks.check_config(config)


@pytest.mark.parametrize("n", ["5000", "12000", "70000"])
def test_grammar_paper_uses_the_torch_initialisation_and_ceil_epochs(n):
    config = grammar_paper.get_config(n)
    assert config.model.param_init == "torch"
    assert config.training.steps_per_call == math.ceil(int(n) / 512)
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    with model_config.unlocked():
        model_config.update(num_symbols=6, length=16)
    assert models.get_model(model_config).param_init == "torch"
    config_checks.check_config(config)


@pytest.mark.parametrize("get_config", [digits_cpu.get_config, smoke.get_config])
def test_digits_configs_keep_their_validated_image_protocol(get_config):
    config = get_config()
    assert "pixel_range" not in config.data  # the source default, [-1, 1]
    assert config.centering == "none"
    assert config.analysis.image_sampler == "posterior" and config.analysis.clip_x0 == 1.0
    n, batch = config.splits.split_size, config.training.batch_size
    assert n % batch == 0  # full batches: training unchanged by the partial-batch rule


@pytest.mark.parametrize(
    "get_config", [grammar_cpu.get_config, lambda: smoke.get_config("grammar")]
)
def test_cpu_transformers_keep_the_flax_initialisation(get_config):
    config = get_config()
    assert "param_init" not in config.model
    assert models.TokenTransformer.param_init == "flax"
    assert config.splits.split_size % config.training.batch_size == 0
