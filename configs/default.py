"""The base config (diffusion_bias/config/default_config.py), unchanged.

python -m launch.train --config=configs/default.py --workdir=workdirs/default
"""

from diffusion_bias.config import default_config


def get_config():
    config = default_config.get_config()
    config.lock()
    return config
