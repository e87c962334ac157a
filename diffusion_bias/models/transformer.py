"""Post-LN transformer encoder that predicts x_0 logits of one-hot tokens.

The denoiser of the controlled setting (the paper (arXiv 2603.03469), "Setting 2"): it mirrors a
stack of torch.nn.TransformerEncoderLayer(d_model=H, nhead, dim_feedforward=2H,
dropout=0.1, activation="relu", norm_first=False), so torch's LayerNorm epsilon
(1e-5) and its dropout on the attention weights are kept as well: torch drops
each attention weight of each sequence and head on its own (`torch_attention`),
where flax's default would share one L x L mask across batch and heads. Every
dropout is `models.dropout` (16 random bits a mask element).

Initialisation, `param_init` (`init` is taken by linen's Module.init):
- "flax": Flax's defaults (lecun-normal kernels, zero biases, positional table
  N(0, 0.02^2)).
- "torch": the authors' model as torch builds it. nn.Linear: kernel and bias
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform, a=sqrt(5)); the
  positional nn.Embedding N(0, 1); nn.MultiheadAttention: the packed [3H, H]
  in-projection xavier-uniform, U(+-sqrt(6 / 4H)), its bias 0, the output
  projection a Linear's kernel with bias 0; LayerNorm 1 and 0. And
  nn.TransformerEncoder deep-copies one layer, so every encoder layer starts
  from the same parameters.

`dtype` is the layers' compute dtype ("float32" or "bfloat16"); parameters stay
float32 (so do the optimizer state and the EMA), layer norms keep float32
statistics, and the logits are returned as float32.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_bias.models.dropout import Dropout
from diffusion_bias.models.dropout import dropout
from diffusion_bias.models.embeddings import sinusoidal_embedding

# torch.nn.LayerNorm's default, which the paper's model used.
_LN_EPSILON = 1e-5

INITS = ("flax", "torch")


def torch_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None = None,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    dtype: jax.typing.DTypeLike | None = None,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """Scaled dot-product attention with torch's dropout, an `attention_fn` for flax.

    softmax(q k^T / sqrt(d)) with every weight dropped on its own (torch's
    nn.MultiheadAttention), then the weighted sum of the values. Flax's own
    attention does the same with broadcast_dropout=False, but draws its mask with
    `jax.random.bernoulli` inside; this one draws it with `models.dropout`.

    Args:
        query, key, value: per-head projections.  # [B, L, heads, d]
        mask: where attention is allowed (flax's convention), or None.  # [B, heads, L, L]
        dropout_rng: the key of the weights' mask (when not deterministic).
        dropout_rate: probability of dropping a weight.
        deterministic: no dropout.
        dtype: the computation's dtype.
        precision: the matmuls' precision.

    Returns:
        The attended values.  # [B, L, heads, d]
    """
    weights = nn.dot_product_attention_weights(
        query, key, mask=mask, deterministic=True, dtype=dtype, precision=precision
    )  # [B, heads, L, L]
    if not deterministic:
        weights = dropout(dropout_rng, dropout_rate, weights)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


def _uniform(bound):
    """Initializer U(-bound, bound) of any shape."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _torch_linear(fan_in):
    """nn.Linear's kernel and bias initializers for `fan_in` input features."""
    bound = 1.0 / math.sqrt(fan_in)
    return dict(kernel_init=_uniform(bound), bias_init=_uniform(bound))


class _KeysInOrder:
    """Initializers whose keys come from one key, by creation order.

    Every encoder layer creates its parameters in the same order, so layers
    given the same key start identical (torch's deep copy of one layer). The
    per-parameter keys Flax passes in differ by layer and are ignored.
    """

    def __init__(self, key):
        self.key, self.count = key, 0

    def __call__(self, init):
        def keyed(_, shape, dtype=jnp.float32):
            self.count += 1
            return init(jax.random.fold_in(self.key, self.count), shape, dtype)

        return keyed


class EncoderLayer(nn.Module):
    """One post-LN encoder layer: self-attention then a ReLU feed-forward.

    Attributes:
        width: model width H.
        num_heads: attention heads; must divide H.
        dropout_rate: dropout on attention weights, on each residual branch and
            inside the feed-forward.
        param_init: "flax" or "torch" (see the module docstring).
        dtype: compute dtype, "float32" or "bfloat16".
    """

    width: int
    num_heads: int
    dropout_rate: float = 0.1
    param_init: str = "flax"
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, init_key: jax.Array | None = None) -> jax.Array:
        """Applies the layer.

        Args:
            x: token features.  # [B, L, H]
            train: enables dropout (needs the "dropout" RNG stream).
            init_key: "torch" param_init only, while initialising: the key all of this
                layer's parameters are drawn from (the same for every layer).

        Returns:
            Token features.  # [B, L, H]
        """
        deterministic = not train
        dtype = jnp.dtype(self.dtype)
        attention, ff_in, ff_out = {}, {}, {}
        if self.param_init == "torch":
            keyed = _KeysInOrder(init_key) if init_key is not None else (lambda init: init)
            zeros = nn.initializers.zeros
            attention = dict(
                kernel_init=keyed(_uniform(math.sqrt(6.0 / (4 * self.width)))),
                bias_init=keyed(zeros),
                out_kernel_init=keyed(_uniform(1.0 / math.sqrt(self.width))),
                out_bias_init=keyed(zeros),
            )
            ff_in = {k: keyed(v) for k, v in _torch_linear(self.width).items()}
            ff_out = {k: keyed(v) for k, v in _torch_linear(2 * self.width).items()}
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dropout_rate=self.dropout_rate,
            attention_fn=torch_attention,
            dtype=dtype,
            name="attention",
            **attention,
        )(x, x, deterministic=deterministic)
        h = Dropout(self.dropout_rate)(h, deterministic=deterministic)
        x = nn.LayerNorm(epsilon=_LN_EPSILON, dtype=dtype, name="norm_attention")(x + h)
        h = nn.Dense(2 * self.width, dtype=dtype, name="ff_in", **ff_in)(x)  # [B, L, 2H]
        h = Dropout(self.dropout_rate)(nn.relu(h), deterministic=deterministic)
        h = nn.Dense(self.width, dtype=dtype, name="ff_out", **ff_out)(h)
        h = Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return nn.LayerNorm(epsilon=_LN_EPSILON, dtype=dtype, name="norm_ff")(x + h)


class TokenTransformer(nn.Module):
    """x_0-denoiser for noisy one-hot token sequences.

    Embedding = Dense(q -> H)(x_t) + learned positional embedding
    + Dense(H)(sinusoidal(t, time_embed_dim)), then `num_layers` post-LN
    encoder layers (no mask: every leaf sees every other), then Dense(H -> q).

    Attributes:
        num_symbols: vocabulary size q.
        length: sequence length L (the positional table has L rows).
        width: model width H (paper: 512).
        num_layers: encoder layers (paper: 8).
        num_heads: attention heads (paper: 4).
        dropout_rate: dropout everywhere in the encoder layers (paper: 0.1).
        time_embed_dim: channels of the sinusoidal time embedding (paper: 32).
        param_init: "flax" (default) or "torch", the authors' (module docstring).
        dtype: compute dtype, "float32" (default) or "bfloat16" (module docstring).
    """

    num_symbols: int
    length: int
    width: int
    num_layers: int
    num_heads: int
    dropout_rate: float = 0.1
    time_embed_dim: int = 32
    param_init: str = "flax"
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_t: jax.Array, t: jax.Array, train: bool) -> jax.Array:
        """Predicts the logits of the clean tokens.

        Args:
            x_t: noisy one-hot tokens.  # [B, L, q]
            t: diffusion steps; a scalar is broadcast to the batch.  # [B]
            train: enables dropout (needs the "dropout" RNG stream).

        Returns:
            Logits of x_0, float32.  # [B, L, q]

        Raises:
            ValueError: if x_t is not [B, length, num_symbols], or on an unknown
                param_init.
        """
        if x_t.ndim != 3 or x_t.shape[1:] != (self.length, self.num_symbols):
            raise ValueError(
                f"TokenTransformer expects x_t of shape [B, {self.length}, "
                f"{self.num_symbols}], got {x_t.shape}"
            )
        if self.param_init not in INITS:
            raise ValueError(
                f"TokenTransformer param_init must be one of {INITS}, got {self.param_init!r}"
            )
        torch = self.param_init == "torch"
        dtype = jnp.dtype(self.dtype)
        t = jnp.broadcast_to(t, x_t.shape[:1])
        pos = self.param(
            "pos_embedding",
            nn.initializers.normal(stddev=1.0 if torch else 0.02),
            (self.length, self.width),
        )  # [L, H]
        temb = nn.Dense(
            self.width,
            dtype=dtype,
            name="embed_time",
            **(_torch_linear(self.time_embed_dim) if torch else {}),
        )(sinusoidal_embedding(t, self.time_embed_dim))  # [B, H]
        embed = nn.Dense(
            self.width,
            dtype=dtype,
            name="embed_tokens",
            **(_torch_linear(self.num_symbols) if torch else {}),
        )
        h = embed(x_t) + pos[None].astype(dtype) + temb[:, None, :]  # [B, L, H]
        # One key for all layers: torch's encoder clones one initialised layer.
        layer_key = self.make_rng("params") if torch and self.is_initializing() else None
        for i in range(self.num_layers):
            h = EncoderLayer(
                self.width,
                self.num_heads,
                self.dropout_rate,
                self.param_init,
                self.dtype,
                name=f"layer_{i}",
            )(h, train, layer_key)
        out = _torch_linear(self.width) if torch else {}
        logits = nn.Dense(self.num_symbols, dtype=dtype, name="output", **out)(h)
        return logits.astype(jnp.float32)
