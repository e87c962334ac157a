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

`layout` "authors" is the paper's CelebA U-Net as its authors built it in torch
(same layers and parameter count; `LAYOUTS`): 4-head attention, channel-wise
dropout (torch's Dropout2d), a GELU time MLP on the sinusoids of their 0-indexed
step (t - 1 here) with frequencies 10000^(-j / (half - 1)), a stride-2 conv padded
by one pixel on each side, and torch's GroupNorm epsilon. `param_init` "torch"
is torch's initialisation: every conv and linear kernel and bias uniform in
+-1/sqrt(fan_in), the attention's q, k, v kernels xavier-uniform over torch's
[3C, C] in-projection with zero biases, its output bias zero, and conv_out not
zeroed.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_bias.models.dropout import Dropout
from diffusion_bias.models.embeddings import sinusoidal_embedding

LAYOUTS = ("ddpm", "authors")
INITS = ("flax", "torch")

# What "ddpm" and "authors" differ in, besides the time embedding.
NUM_HEADS = {"ddpm": 1, "authors": 4}
DROPOUT_BROADCAST = {"ddpm": (), "authors": (1, 2)}  # NHWC: (1, 2) drops whole channels
DOWNSAMPLE_PADDING = {"ddpm": "SAME", "authors": ((1, 1), (1, 1))}
GROUP_NORM_EPSILON = {"ddpm": 1e-6, "authors": 1e-5}


def _uniform(bound):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_init(fan_in: int) -> dict:
    """torch's Conv2d and Linear initializers (kernel and bias U(+-1/sqrt(fan_in)))."""
    bound = 1.0 / math.sqrt(fan_in)
    return dict(kernel_init=_uniform(bound), bias_init=_uniform(bound))


def time_embedding(t: jax.Array, dim: int, layout: str) -> jax.Array:
    """The sinusoids the time MLP reads: [B] steps 1..T -> [B, dim].

    "authors" embeds their 0-indexed step t - 1 (the same noise level) with the
    exponent's denominator dim/2 - 1, as their SinusoidalPositionEmbeddings.
    """
    if layout == "authors":
        return sinusoidal_embedding(t - 1, dim, denominator=dim // 2 - 1)
    return sinusoidal_embedding(t, dim)


def _group_norm(channels: int, dtype, name: str | None = None, epsilon=1e-6) -> nn.GroupNorm:
    # Up to 8 groups, but a count that divides odd widths such as skip concats.
    groups = max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(num_groups=groups, dtype=dtype, name=name, epsilon=epsilon)


class ResBlock(nn.Module):
    """GN-SiLU-conv, + time projection, GN-SiLU-dropout-conv, residual."""

    channels: int
    dropout_rate: float
    dtype: str = "float32"
    layout: str = "ddpm"
    param_init: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
        # x [B, H, W, C_in], temb [B, E] -> [B, H, W, channels]
        dtype, eps = jnp.dtype(self.dtype), GROUP_NORM_EPSILON[self.layout]
        torch = self.param_init == "torch"

        def init(fan_in):
            return torch_init(fan_in) if torch else {}

        c_in, c = x.shape[-1], self.channels
        h = nn.silu(_group_norm(c_in, dtype, epsilon=eps)(x))
        h = nn.Conv(c, (3, 3), dtype=dtype, name="conv_0", **init(9 * c_in))(h)
        temb = nn.Dense(c, dtype=dtype, name="time", **init(temb.shape[-1]))(nn.silu(temb))
        h = h + temb[:, None, None, :]
        h = nn.silu(_group_norm(c, dtype, epsilon=eps)(h))
        h = Dropout(self.dropout_rate, broadcast_dims=DROPOUT_BROADCAST[self.layout])(
            h, deterministic=not train
        )
        h = nn.Conv(c, (3, 3), dtype=dtype, name="conv_1", **init(9 * c))(h)
        if c_in != c:
            x = nn.Dense(c, dtype=dtype, name="skip", **init(c_in))(x)  # a 1x1 conv
        return x + h


class AttnBlock(nn.Module):
    """Self-attention over all pixels, residual: DDPM's single head, or the authors' 4."""

    dtype: str = "float32"
    layout: str = "ddpm"
    param_init: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        dtype = jnp.dtype(self.dtype)
        eps = GROUP_NORM_EPSILON[self.layout]
        h = _group_norm(c, dtype, epsilon=eps)(x).reshape(b, height * width, c)  # [B, HW, C]
        init = {}
        if self.param_init == "torch":
            # torch's MultiheadAttention: xavier-uniform over its [3C, C] in-projection,
            # zero in- and out-projection biases, the out-projection a Linear's kernel.
            inner = dict(
                kernel_init=_uniform(math.sqrt(6.0 / (4 * c))), bias_init=nn.initializers.zeros
            )
            init = dict(
                kernel_init=inner["kernel_init"],
                bias_init=inner["bias_init"],
                out_kernel_init=_uniform(1.0 / math.sqrt(c)),
                out_bias_init=nn.initializers.zeros,
            )
        h = nn.MultiHeadDotProductAttention(
            num_heads=NUM_HEADS[self.layout], dtype=dtype, name="attention", **init
        )(h, h)
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
        layout: "ddpm" or "authors" (module docstring).
        param_init: "flax" or "torch" (module docstring).
    """

    base_channels: int = 32
    channel_mults: Sequence[int] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_levels: Sequence[int] = (1, 2)
    dropout_rate: float = 0.1
    dtype: str = "float32"
    layout: str = "ddpm"
    param_init: str = "flax"

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
        if self.layout not in LAYOUTS or self.param_init not in INITS:
            raise ValueError(
                f"UNet layout must be one of {LAYOUTS} and param_init one of {INITS}, "
                f"got {self.layout!r} and {self.param_init!r}"
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
        base, layout, torch = self.base_channels, self.layout, self.param_init == "torch"

        def init(fan_in):
            return torch_init(fan_in) if torch else {}

        temb_dim = 4 * base
        temb = time_embedding(t, base, layout)
        temb = nn.Dense(temb_dim, dtype=dtype, name="time_0", **init(base))(temb)
        act = (lambda x: nn.gelu(x, approximate=False)) if layout == "authors" else nn.silu
        temb = nn.Dense(temb_dim, dtype=dtype, name="time_1", **init(temb_dim))(act(temb))

        def res(h, level, name):
            channels = base * self.channel_mults[level]
            block = ResBlock(
                channels, self.dropout_rate, self.dtype, layout, self.param_init, name=name
            )
            return block(h, temb, train)

        def attn(h, name):
            return AttnBlock(self.dtype, layout, self.param_init, name=name)(h)

        def conv(h, channels, name, **kwargs):
            kwargs = {**init(9 * h.shape[-1]), **kwargs}
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
                h = conv(
                    h,
                    h.shape[-1],
                    f"down_{level}_downsample",
                    strides=(2, 2),
                    padding=DOWNSAMPLE_PADDING[layout],
                )
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

        eps = GROUP_NORM_EPSILON[layout]
        h = nn.silu(_group_norm(h.shape[-1], dtype, name="norm_out", epsilon=eps)(h))
        # flax: zero init, the untrained model predicts eps = 0, as in DDPM; torch: its default.
        out_init = {} if torch else dict(kernel_init=nn.initializers.zeros)
        out = conv(h, x_t.shape[-1], "conv_out", **out_init)
        return out.astype(jnp.float32)
