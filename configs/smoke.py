"""Seconds-long run for tests: tiny twins on digits, a few snapshots.

python -m launch.train --config=configs/smoke.py --workdir=/tmp/smoke
"""

from diffusion_bias import default_config


def get_config():
    config = default_config.get_config()
    config.splits.update(num_splits=2, split_size=64, heldout_size=32)
    config.diffusion.num_steps = 100
    config.model.update(width=32, depth=1)
    config.training.update(batch_size=16, num_epochs=10, steps_per_call=4, log_every_steps=8)
    config.snapshots.update(num_snapshots=4, first_epoch=1, latest_every_steps=8)
    config.lock()
    return config
