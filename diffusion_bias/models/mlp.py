"""Residual MLP eps-denoiser for small images (a fast stand-in for the U-Net).

Design: flatten x_t to D = H*W*C features, project to `width`; embed t once
(sinusoidal -> Dense(width) -> SiLU) and add it to the input of every hidden
layer; each hidden layer is pre-LN residual, h += Dropout(SiLU(Dense(LN(h + temb))));
a final LN -> Dense(D) is reshaped back to the image. The residual form keeps a
deep stack trainable from the start; adding (not concatenating) the shared time
embedding costs no parameters per layer. Width 256, depth 3 on 8x8x1 has about
0.25M parameters.

`dtype` is the layers' compute dtype ("float32" or "bfloat16"); parameters stay
float32 and the prediction is returned as float32.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_bias.models.dropout import Dropout
from diffusion_bias.models.embeddings import sinusoidal_embedding


class MLPDenoiser(nn.Module):
    """eps-prediction MLP on flattened images.

    Attributes:
        width: hidden width.
        depth: number of residual hidden layers.
        dropout_rate: dropout on each hidden layer's branch (0 disables it).
        time_embed_dim: channels of the sinusoidal time embedding.
        dtype: compute dtype, "float32" or "bfloat16" (module docstring).
    """

    width: int = 256
    depth: int = 3
    dropout_rate: float = 0.0
    time_embed_dim: int = 64
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_t: jax.Array, t: jax.Array, train: bool) -> jax.Array:
        """Predicts the noise eps.

        Args:
            x_t: noisy images (any trailing shape).  # [B, H, W, C]
            t: diffusion steps; a scalar is broadcast to the batch.  # [B]
            train: enables dropout (needs the "dropout" RNG stream).

        Returns:
            Predicted noise, float32.  # [B, H, W, C]
        """
        dtype = jnp.dtype(self.dtype)
        batch, features = x_t.shape[0], int(np.prod(x_t.shape[1:]))
        t = jnp.broadcast_to(t, (batch,))
        temb = nn.silu(
            nn.Dense(self.width, dtype=dtype, name="time")(
                sinusoidal_embedding(t, self.time_embed_dim)
            )
        )  # [B, W]
        h = nn.Dense(self.width, dtype=dtype, name="input")(x_t.reshape(batch, features))  # [B, W]
        for i in range(self.depth):
            branch = nn.LayerNorm(dtype=dtype, name=f"norm_{i}")(h + temb)
            branch = nn.silu(nn.Dense(self.width, dtype=dtype, name=f"hidden_{i}")(branch))
            h = h + Dropout(self.dropout_rate)(branch, deterministic=not train)
        h = nn.LayerNorm(dtype=dtype, name="norm_out")(h)
        out = nn.Dense(features, dtype=dtype, name="output")(h)
        return out.reshape(x_t.shape).astype(jnp.float32)
