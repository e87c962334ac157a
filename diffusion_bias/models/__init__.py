"""Denoisers as flax.linen modules, and a factory from a config.

Every model is called as `model.apply(params, x_t, t, train, rngs=...)` with
`rngs={"dropout": key}` when train=True, so K twins can share one module and be
vmapped over stacked params.
"""

import dataclasses
from typing import Any
from typing import Mapping

import flax.linen as nn

from diffusion_bias.models.embeddings import sinusoidal_embedding
from diffusion_bias.models.mlp import MLPDenoiser
from diffusion_bias.models.transformer import TokenTransformer
from diffusion_bias.models.unet import UNet

__all__ = ["DTYPES", "MLPDenoiser", "TokenTransformer", "UNet", "get_model", "sinusoidal_embedding"]

MODELS = {"transformer": TokenTransformer, "unet": UNet, "mlp": MLPDenoiser}

# Every model's `dtype`: the compute dtype of its layers. Parameters, optimizer
# state and the EMA stay float32; bfloat16 is for accelerators with bfloat16
# matmul units (on this project's CPU it was no speed-up to count on; docs/speed.md).
DTYPES = ("float32", "bfloat16")

# Fields every linen Module has that are not hyper-parameters.
_MODULE_FIELDS = {"parent", "name"}


def get_model(config: Mapping[str, Any]) -> nn.Module:
    """Builds the model a config describes.

    Args:
        config: an ml_collections.ConfigDict (or mapping) such as `config.model`,
            with `name` in MODELS and otherwise only that model's fields; missing
            fields take the module's defaults.

    Returns:
        The unbound linen module.

    Raises:
        ValueError: on an unknown name or on a field the model does not have.
    """
    values = dict(config.items())
    name = values.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"Unknown model name {name!r}; valid names: {sorted(MODELS)}")
    cls = MODELS[name]
    known = {f.name for f in dataclasses.fields(cls)} - _MODULE_FIELDS
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"Fields {unknown} are not hyper-parameters of {cls.__name__} "
            f"({name!r}); valid fields: {sorted(known)}"
        )
    # Lists (e.g. from a command-line override) become tuples: module fields must hash.
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)
