"""What differs between the two kinds of data the instrument reads: images and tokens.

Images (the paper's Setting 1) are real-valued arrays [..., H, W, C]; the network
predicts the noise, twins may be centred by per-channel means, and the bias
onset is the peak of the coupled samples' cosine similarity. Tokens (Setting 2)
are integer sequences [..., L] over q symbols, diffused as one-hot vectors; the
network predicts the clean tokens' logits, the grammar's belief propagation is
an exact reference, and the bias onset is the minimum of the nearest-neighbour
divergence. Every place that treats the two differently asks their `Setting`
(`of(kind)`); no other module compares a kind.
"""

from collections.abc import Sequence
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

KINDS = ("images", "tokens")


@dataclasses.dataclass(frozen=True)
class Setting:
    """The properties and the few operations that differ between images and tokens.

    Attributes:
        kind: "images" or "tokens".
        discrete: items are integer ids diffused as one-hot vectors over q
            symbols (the model needs q); otherwise real values, which twins may
            centre and which pixel-space extras (score cosine, examples, a
            classifier's quality) apply to.
        exact_reference: the data have an exact denoiser to compare the model
            with (the grammar's belief propagation).
        parametrization: what the network predicts: "eps" (the noise) or "x0"
            (the clean item's logits); the sampler's step and clipping follow.
        metric: the nearest-neighbour distance: "l2" or "hamming".
        similarity: the coupled pair similarity: "cosine" or "overlap" (the
            fraction of equal tokens).
        similarity_bins: np.linspace arguments of the similarity histograms.
        bias_statistic: the curve whose extremum is the bias onset:
            "similarity" or "nn_divergence".
        bias_direction: where that curve's onset is: "max" or "min".
        similarity_label: the similarity's words on a figure's axis.
        quality_name, quality_meaning: what the samples' quality statistic is
            called in the report, and what it measures.
        noun: how messages name one item ("image", "token").
        layout: the pool's item array, for messages ("[N, H, W, C]").
        pool_ndim, pool_dtype: the rank and dtype of a pool's items.
    """

    kind: str
    discrete: bool
    exact_reference: bool
    parametrization: str
    metric: str
    similarity: str
    similarity_bins: tuple[float, float, int]
    bias_statistic: str
    bias_direction: str
    similarity_label: str
    quality_name: str
    quality_meaning: str
    noun: str
    layout: str
    pool_ndim: int
    pool_dtype: str

    def encode(
        self, items: jax.Array | np.ndarray, num_symbols: int | None = None
    ) -> jax.Array | np.ndarray:
        """Items as the diffusion sees them: one-hot [..., L, q] tokens, images as they are."""
        return jax.nn.one_hot(items, num_symbols) if self.discrete else items

    def decode(self, x0: jax.Array) -> jax.Array:
        """The sampler's final x0 as items: int32 tokens by argmax, images as they are."""
        return x0.argmax(-1).astype(jnp.int32) if self.discrete else x0

    def denoiser_output(self, out: jax.Array) -> jax.Array:
        """The network's output as the sampler reads it: x0 probabilities or eps."""
        return jax.nn.softmax(out, axis=-1) if self.discrete else out

    def sample_shape(
        self, item_shape: Sequence[int], num_symbols: int | None = None
    ) -> tuple[int, ...]:
        """The shape the sampler draws for one item: (L, q) for tokens."""
        item_shape = tuple(item_shape)
        return item_shape + (num_symbols,) if self.discrete else item_shape

    def training_loss(self, out: jax.Array, x0: jax.Array, noise: jax.Array) -> jax.Array:
        """Per-element training loss: cross-entropy [B, L] of the logits against the
        tokens, or the squared error [B, H, W, C] of the predicted noise."""
        if self.discrete:
            return optax.softmax_cross_entropy_with_integer_labels(out, x0)
        return (out - noise) ** 2

    def item_loss(self, out: jax.Array, clean: jax.Array, noise: jax.Array) -> jax.Array:
        """Per-item evaluation loss [B] of the denoiser's output (`denoiser_output`):
        the cross-entropy of the x0 probabilities per token, or the noise's MSE."""
        if self.discrete:
            log_p = jnp.log(jnp.clip(out, 1e-12))
            return -jnp.sum(clean * log_p, axis=(-1, -2)) / clean.shape[1]
        return jnp.mean((out - noise) ** 2, axis=tuple(range(1, out.ndim)))

    def histogram_bins(self) -> np.ndarray:
        """The edges of the similarity histograms."""
        return np.linspace(*self.similarity_bins)

    def check_pool_items(self, items: np.ndarray) -> None:
        """Raises ValueError unless a pool's items have this kind's rank and dtype."""
        if items.ndim != self.pool_ndim or items.dtype != self.pool_dtype:
            raise ValueError(
                f"{self.noun} items must be {self.pool_dtype} {self.layout}, got "
                f"{items.dtype} {items.shape}"
            )


IMAGES = Setting(
    kind="images",
    discrete=False,
    exact_reference=False,
    parametrization="eps",
    metric="l2",
    similarity="cosine",
    similarity_bins=(-1.0, 1.0, 41),
    bias_statistic="similarity",
    bias_direction="max",
    similarity_label="cosine of standardised twin samples",
    quality_name="sample quality",
    quality_meaning="mean confidence of a classifier of the held-out items",
    noun="image",
    layout="[N, H, W, C]",
    pool_ndim=4,
    pool_dtype="float32",
)

TOKENS = Setting(
    kind="tokens",
    discrete=True,
    exact_reference=True,
    parametrization="x0",
    metric="hamming",
    similarity="overlap",
    similarity_bins=(0.0, 1.0, 21),
    bias_statistic="nn_divergence",
    bias_direction="min",
    similarity_label="fraction of equal tokens in twin samples",
    quality_name="grammatical share",
    quality_meaning="share of samples the grammar allows",
    noun="token",
    layout="[N, L]",
    pool_ndim=2,
    pool_dtype="int32",
)

_SETTINGS = {s.kind: s for s in (IMAGES, TOKENS)}


def of(kind: str) -> Setting:
    """The Setting of a kind.

    Raises:
        ValueError: `kind` is not "images" or "tokens".
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return _SETTINGS[kind]
