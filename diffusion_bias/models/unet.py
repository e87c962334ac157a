"""DDPM U-Net (Ho et al. 2020) eps-denoiser for NHWC images, the paper (arXiv 2603.03469) "Setting 1".

Layout for channel_mults=(1, 2, 4), num_res_blocks=2 on 32x32 (levels 0, 1, 2 at
32, 16, 8 pixels): conv_in, then per level `num_res_blocks` ResBlocks (each followed
by self-attention if the level is in `attention_levels`) and a strided-conv
downsample except at the last level; a middle ResBlock-attention-ResBlock; then per
level in reverse `num_res_blocks + 1` ResBlocks on the concatenated skip features
and a nearest+conv upsample except at level 0; GroupNorm, SiLU, zero-initialised
conv_out. Module names carry the level (`down_1_attn_0`, `up_2_res_1`, ...).

`dtype` is the layers' compute dtype ("float32" or "bfloat16"); parameters stay
float32, group norms keep float32 statistics, and the prediction is float32.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_bias.models.dropout import Dropout
from diffusion_bias.models.embeddings import sinusoidal_embedding


def _group_norm(channels: int, dtype, name: str | None = None) -> nn.GroupNorm:
    # Up to 8 groups, but a count that divides odd widths such as skip concats.
    groups = max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(num_groups=groups, dtype=dtype, name=name)


class ResBlock(nn.Module):
    """GN-SiLU-conv, + time projection, GN-SiLU-dropout-conv, residual."""

    channels: int
    dropout_rate: float
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
        # x [B, H, W, C_in], temb [B, E] -> [B, H, W, channels]
        dtype = jnp.dtype(self.dtype)
        h = nn.silu(_group_norm(x.shape[-1], dtype)(x))
        h = nn.Conv(self.channels, (3, 3), dtype=dtype, name="conv_0")(h)
        h = h + nn.Dense(self.channels, dtype=dtype, name="time")(nn.silu(temb))[:, None, None, :]
        h = nn.silu(_group_norm(self.channels, dtype)(h))
        h = Dropout(self.dropout_rate)(h, deterministic=not train)
        h = nn.Conv(self.channels, (3, 3), dtype=dtype, name="conv_1")(h)
        if x.shape[-1] != self.channels:
            x = nn.Dense(self.channels, dtype=dtype, name="skip")(x)  # a 1x1 conv
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, residual (DDPM's AttnBlock)."""

    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        dtype = jnp.dtype(self.dtype)
        h = _group_norm(c, dtype)(x).reshape(b, height * width, c)  # [B, HW, C]
        h = nn.MultiHeadDotProductAttention(num_heads=1, dtype=dtype, name="attention")(h, h)
        return x + h.reshape(x.shape)


class UNet(nn.Module):
    """eps-prediction U-Net for images [B, H, W, C].

    Attributes:
        base_channels: channels at level 0; level i has base * channel_mults[i].
        channel_mults: one multiple per resolution level.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_levels: levels with self-attention; the middle block attends iff
            the lowest level is listed. Paper: (1, 2), never full resolution.
        dropout_rate: dropout inside every ResBlock.
        dtype: compute dtype, "float32" or "bfloat16" (module docstring).
    """

    base_channels: int = 32
    channel_mults: Sequence[int] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_levels: Sequence[int] = (1, 2)
    dropout_rate: float = 0.1
    dtype: str = "float32"

    def _check_input(self, x_t):
        """ValueError unless x_t is [B, H, W, C] with H, W halvable at every level."""
        num_levels = len(self.channel_mults)
        factor = 2 ** (num_levels - 1)
        if x_t.ndim != 4 or x_t.shape[1] % factor or x_t.shape[2] % factor:
            raise ValueError(
                f"UNet with {num_levels} levels needs [B, H, W, C] with H, W "
                f"divisible by {factor}, got {x_t.shape}"
            )
        if any(not 0 <= level < num_levels for level in self.attention_levels):
            raise ValueError(
                f"attention_levels {self.attention_levels} outside 0..{num_levels - 1}"
            )

    @nn.compact
    def __call__(self, x_t: jax.Array, t: jax.Array, train: bool) -> jax.Array:
        """Predicts the noise eps.

        Args:
            x_t: noisy images, NHWC; H and W divisible by 2^(levels-1).  # [B, H, W, C]
            t: diffusion steps; a scalar is broadcast to the batch.  # [B]
            train: enables dropout (needs the "dropout" RNG stream).

        Returns:
            Predicted noise, float32.  # [B, H, W, C]
        """
        self._check_input(x_t)
        dtype = jnp.dtype(self.dtype)
        num_levels = len(self.channel_mults)
        t = jnp.broadcast_to(t, x_t.shape[:1])
        temb_dim = 4 * self.base_channels
        temb = sinusoidal_embedding(t, self.base_channels)
        temb = nn.Dense(temb_dim, dtype=dtype, name="time_0")(temb)
        temb = nn.Dense(temb_dim, dtype=dtype, name="time_1")(nn.silu(temb))  # [B, 4*base]

        def res(h, level, name):
            channels = self.base_channels * self.channel_mults[level]
            return ResBlock(channels, self.dropout_rate, self.dtype, name=name)(h, temb, train)

        def attn(h, name):
            return AttnBlock(self.dtype, name=name)(h)

        def conv(h, channels, name, **kwargs):
            return nn.Conv(channels, (3, 3), dtype=dtype, name=name, **kwargs)(h)

        h = conv(x_t, self.base_channels, "conv_in")
        skips = [h]
        for level in range(num_levels):
            for i in range(self.num_res_blocks):
                h = res(h, level, f"down_{level}_res_{i}")
                if level in self.attention_levels:
                    h = attn(h, f"down_{level}_attn_{i}")
                skips.append(h)
            if level != num_levels - 1:
                h = conv(h, h.shape[-1], f"down_{level}_downsample", strides=(2, 2))
                skips.append(h)

        h = res(h, num_levels - 1, "mid_res_0")
        if num_levels - 1 in self.attention_levels:
            h = attn(h, "mid_attn")
        h = res(h, num_levels - 1, "mid_res_1")

        for level in reversed(range(num_levels)):
            for i in range(self.num_res_blocks + 1):
                h = res(jnp.concatenate([h, skips.pop()], axis=-1), level, f"up_{level}_res_{i}")
                if level in self.attention_levels:
                    h = attn(h, f"up_{level}_attn_{i}")
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest, x2
                h = conv(h, h.shape[-1], f"up_{level}_upsample")

        h = nn.silu(_group_norm(h.shape[-1], dtype, name="norm_out")(h))
        # Zero init: the untrained model predicts eps = 0, as in DDPM.
        out = conv(h, x_t.shape[-1], "conv_out", kernel_init=nn.initializers.zeros)
        return out.astype(jnp.float32)
