"""Post-LN transformer encoder that predicts x_0 logits of one-hot tokens.

The denoiser of the controlled setting (PAPER.md, "Setting 2"): it mirrors a
stack of torch.nn.TransformerEncoderLayer(d_model=H, nhead, dim_feedforward=2H,
dropout=0.1, activation="relu", norm_first=False), so torch's LayerNorm epsilon
(1e-5) and its dropout on the attention weights are kept as well.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_bias.models.embeddings import sinusoidal_embedding

# torch.nn.LayerNorm's default, which the paper's model used.
_LN_EPSILON = 1e-5


class EncoderLayer(nn.Module):
    """One post-LN encoder layer: self-attention then a ReLU feed-forward.

    Attributes:
        width: model width H.
        num_heads: attention heads; must divide H.
        dropout_rate: dropout on attention weights, on each residual branch and
            inside the feed-forward.
    """

    width: int
    num_heads: int
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Applies the layer.

        Args:
            x: token features.  # [B, L, H]
            train: enables dropout (needs the "dropout" RNG stream).

        Returns:
            Token features.  # [B, L, H]
        """
        deterministic = not train
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dropout_rate=self.dropout_rate, name="attention"
        )(x, x, deterministic=deterministic)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        x = nn.LayerNorm(epsilon=_LN_EPSILON, name="norm_attention")(x + h)
        h = nn.Dense(2 * self.width, name="ff_in")(x)  # [B, L, 2H]
        h = nn.Dropout(self.dropout_rate)(nn.relu(h), deterministic=deterministic)
        h = nn.Dense(self.width, name="ff_out")(h)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return nn.LayerNorm(epsilon=_LN_EPSILON, name="norm_ff")(x + h)


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
    """

    num_symbols: int
    length: int
    width: int
    num_layers: int
    num_heads: int
    dropout_rate: float = 0.1
    time_embed_dim: int = 32

    @nn.compact
    def __call__(self, x_t: jax.Array, t: jax.Array, train: bool) -> jax.Array:
        """Predicts the logits of the clean tokens.

        Args:
            x_t: noisy one-hot tokens.  # [B, L, q]
            t: diffusion steps; a scalar is broadcast to the batch.  # [B]
            train: enables dropout (needs the "dropout" RNG stream).

        Returns:
            Logits of x_0.  # [B, L, q]

        Raises:
            ValueError: if x_t is not [B, length, num_symbols].
        """
        if x_t.ndim != 3 or x_t.shape[1:] != (self.length, self.num_symbols):
            raise ValueError(
                f"TokenTransformer expects x_t of shape [B, {self.length}, "
                f"{self.num_symbols}], got {x_t.shape}"
            )
        t = jnp.broadcast_to(t, x_t.shape[:1])
        pos = self.param(
            "pos_embedding", nn.initializers.normal(stddev=0.02), (self.length, self.width)
        )  # [L, H]
        temb = nn.Dense(self.width, name="embed_time")(
            sinusoidal_embedding(t, self.time_embed_dim)
        )  # [B, H]
        h = (
            nn.Dense(self.width, name="embed_tokens")(x_t) + pos[None] + temb[:, None, :]
        )  # [B, L, H]
        for i in range(self.num_layers):
            h = EncoderLayer(self.width, self.num_heads, self.dropout_rate, name=f"layer_{i}")(
                h, train
            )
        return nn.Dense(self.num_symbols, name="output")(h)
