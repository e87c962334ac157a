"""Biased generalization in diffusion models: twin models, exact references, bias statistics.

What a user calls directly; the rest is reached through its module
(`diffusion_bias.coupled`, `diffusion_bias.statistics.nearest`, ...), as the
README shows.
"""

from diffusion_bias.monitor import BiasMonitor

__all__ = ["BiasMonitor"]
