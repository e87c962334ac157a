"""Seconds-long runs for tests: tiny twins, a few snapshots, a light analysis.

python -m launch.train --config=configs/smoke.py --workdir=/tmp/smoke
python -m launch.train --config=configs/smoke.py:grammar --workdir=/tmp/smoke_grammar
"""

import ml_collections

from diffusion_bias.config import default_config


def get_config(arg="digits"):
    config = default_config.get_config()
    config.splits.update(num_splits=2, split_size=64, heldout_size=32)
    config.diffusion.num_steps = 100
    config.model.update(width=32, depth=1)
    config.training.update(batch_size=16, num_epochs=10, steps_per_call=4, log_every_steps=8)
    config.snapshots.update(num_snapshots=4, first_epoch=1, latest_every_steps=8)
    config.analysis.update(
        num_samples=64,
        sampling_steps=20,
        loss_items=32,
        loss_repeats=2,
        score_times=(10, 50),
        uturn_items=16,
        kl_items=16,
        decomposition_items=16,
        uturn_ratios=(0.05, 0.1),
        uturn_random_items=16,
        uturn_random_ratios=(0.05, 0.1),
        memorizing_items=16,
        bootstrap=50,
    )
    if arg == "grammar":
        config.data = ml_collections.ConfigDict(
            dict(
                name="grammar",
                q=4,
                depth=3,
                sigma=1.0,
                q_eff=2,
                grammar_seed=0,
                pool_size=2000,
                pool_seed=0,
            )
        )
        config.splits.drop_overlap = False
        config.diffusion.update(schedule="token", num_steps=100)
        config.model = ml_collections.ConfigDict(
            dict(name="transformer", width=16, num_layers=1, num_heads=2, dtype="float32")
        )
    elif arg != "digits":
        raise ValueError(f"smoke.py:ARG takes 'digits' or 'grammar', got {arg!r}")
    config.lock()
    return config
