"""Embedded real-image default: twin MLP denoisers on the UCI digits (8x8).

K=2 twins of 848 digits each, 100 held out, eps-prediction MLP (width 256,
depth 3), Adam 1e-3, batch 256, 6000 steps, 15 log-spaced snapshots from
step 90. About 5 minutes of training on 2 CPU cores.

    python -m launch.train --config=configs/digits_cpu.py --workdir=workdirs/digits
"""

from diffusion_bias import default_config


def get_config():
    config = default_config.get_config()
    config.lock()
    return config
