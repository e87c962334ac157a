"""The random tree grammar of the controlled setting (the paper (arXiv 2603.03469), "Setting 2").

A sequence is the leaf row of a full binary tree of depth `depth`: the root symbol
is uniform over `q` symbols and a node with symbol `a` emits the ordered (left,
right) pair of child symbols `(b, c)` with probability `transitions[a, b, c]`.
Node `j` of level `d` has children `2j` and `2j + 1` of level `d + 1`, so the
leaves of level `depth` read left to right.
"""

import dataclasses

import numpy as np

from diffusion_bias import checks

# The generators `random_grammar` can draw with: "default", numpy's `Generator`
# (this package's own draw), or "legacy", the authors' draw with the legacy
# `RandomState` (their grammar, bit for bit, for the same seed).
GRAMMAR_RNGS = ("default", "legacy")


@dataclasses.dataclass(frozen=True, eq=False)
class Grammar:
    """A tree grammar.

    Attributes:
        transitions: float64 [q, q, q], `transitions[a, b, c] = P(left=b, right=c |
            parent=a)`; each `transitions[a]` sums to one.
        depth: number of levels below the root; sequences have `2**depth` leaves.
    """

    transitions: np.ndarray
    depth: int

    def __post_init__(self):
        t = np.asarray(self.transitions, dtype=np.float64)
        if t.ndim != 3 or not t.shape[0] == t.shape[1] == t.shape[2]:
            raise ValueError(f"transitions must have shape [q, q, q], got {t.shape}")
        if not np.all(np.isfinite(t)) or np.any(t < 0):
            raise ValueError("transitions must be finite and non-negative")
        sums = t.reshape(t.shape[0], -1).sum(-1)
        if not np.allclose(sums, 1.0, atol=1e-6):
            raise ValueError(f"transitions[a] must sum to one for every parent a, got sums {sums}")
        _check_int("depth", self.depth, minimum=1)
        t.setflags(write=False)
        object.__setattr__(self, "transitions", t)

    @property
    def q(self) -> int:
        return self.transitions.shape[0]

    @property
    def length(self) -> int:
        """Number of leaves of a sequence."""
        return 2**self.depth


def _check_int(name, value, minimum, maximum=None):
    if not checks.is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def random_grammar(
    q: int = 6,
    depth: int = 4,
    sigma: float = 1.0,
    q_eff: int = 4,
    seed: int = 0,
    rng: str = "default",
) -> Grammar:
    """Draws the random grammar of the paper (arXiv 2603.03469).

    The q**2 ordered child pairs are shuffled and dealt out in blocks of q, one
    block per parent, so each pair has at most one parent (which makes the
    grammar unambiguous: a pair of children determines its parent). The first
    `q_eff` pairs of a parent's block are allowed, with probabilities
    softmax(sigma * N(0, 1)) over them; all other pairs have probability zero.

    `rng` picks the generator, and so which grammar a seed gives:

    * "default": `np.random.default_rng(seed)` draws the permutation, then the
      [q, q_eff] logits.
    * "legacy": the authors' procedure (`get_M_wforbidden` of
      modules/gen_filtered_hierarchical_data_wforbidden.py in their code, after
      `np.random.seed(seed)`), on a local `np.random.RandomState(seed)`: the
      global numpy state is neither read nor changed. The transitions equal
      theirs bit for bit (tests/test_grammar.py re-implements their code).

    Args:
        q: vocabulary size, >= 2.
        depth: tree depth, >= 1 (sequences of 2**depth leaves).
        sigma: scale of the logits, >= 0 (0 gives uniform allowed pairs).
        q_eff: allowed pairs per parent, 1 <= q_eff <= q.
        seed: seed of the numpy generator that draws the grammar (< 2**32 for
            "legacy").
        rng: one of GRAMMAR_RNGS.

    Returns:
        The grammar.

    Raises:
        ValueError: a parameter is out of range or of the wrong type; the message
            names it.
    """
    _check_int("q", q, minimum=2)
    _check_int("depth", depth, minimum=1)
    _check_int("q_eff", q_eff, minimum=1, maximum=q)
    if rng not in GRAMMAR_RNGS:
        raise ValueError(f"rng must be one of {GRAMMAR_RNGS}, got {rng!r}")
    # RandomState takes seeds in [0, 2**32).
    _check_int("seed", seed, minimum=0, maximum=2**32 - 1 if rng == "legacy" else None)
    if not checks.is_number(sigma) or not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")

    if rng == "legacy":
        return Grammar(transitions=_legacy_transitions(q, sigma, q_eff, seed), depth=depth)
    generator = np.random.default_rng(seed)
    pairs = generator.permutation(q * q).reshape(q, q)  # [parent, slot] -> pair b*q+c
    logits = sigma * generator.standard_normal((q, q_eff))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    transitions = np.zeros((q, q * q))
    np.put_along_axis(transitions, pairs[:, :q_eff], probs, axis=-1)
    return Grammar(transitions=transitions.reshape(q, q, q), depth=depth)


def _legacy_transitions(q, sigma, q_eff, seed) -> np.ndarray:
    """The authors' transitions [q, q, q] for `seed`, drawn on a local RandomState.

    Their procedure: shuffle the rows of the [q**2, 2] array of (left, right)
    pairs in row-major order; then for each parent `a` in turn, for each of the
    first `q_eff` pairs of block `a` (rows a*q .. a*q + q_eff - 1), one
    `sigma * randn()`; then `scipy.special.softmax` of the parent's [q, q]
    logits, -inf off the allowed pairs. The same draws, in bulk: shuffling the
    rows consumes what `permutation(q * q)` does (the same Fisher-Yates swaps, so
    row j of the shuffled array is pair `perm[j]`), and `standard_normal((q,
    q_eff))` returns the successive `randn()` draws in row-major order. The
    softmax is scipy's arithmetic (max, exp of the difference, division by the
    sum over all q**2 entries of the parent), so the floats are theirs too.
    """
    state = np.random.RandomState(seed)
    pairs = state.permutation(q * q).reshape(q, q)  # [parent, slot] -> pair b*q+c
    logits = np.full((q, q * q), -np.inf)
    np.put_along_axis(logits, pairs[:, :q_eff], sigma * state.standard_normal((q, q_eff)), axis=-1)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return (shifted / shifted.sum(-1, keepdims=True)).reshape(q, q, q)


def sample_levels(grammar: Grammar, n: int, seed: int) -> list[np.ndarray]:
    """Draws `n` trees by ancestral sampling, level by level.

    Fully determined by `seed` (one numpy generator, consumed in a fixed order).

    Args:
        grammar: the grammar.
        n: number of trees, >= 1.
        seed: seed of the numpy generator.

    Returns:
        `depth + 1` arrays; level `d` is int32 [n, 2**d] (level 0 holds the roots,
        level `depth` the leaves).
    """
    _check_int("n", n, minimum=1)
    _check_int("seed", seed, minimum=0)
    q = grammar.q
    rng = np.random.default_rng(seed)
    pair_probs = grammar.transitions.reshape(q, q * q)
    levels = [rng.integers(0, q, size=(n, 1), dtype=np.int32)]
    for _ in range(grammar.depth):
        parents = levels[-1]
        pairs = np.empty(parents.shape, dtype=np.int32)
        # One vectorised draw per parent symbol: q small draws beat a per-node loop
        # and keep the stream independent of how the nodes are laid out.
        for a in range(q):
            mask = parents == a
            pairs[mask] = rng.choice(q * q, size=int(mask.sum()), p=pair_probs[a])
        children = np.stack([pairs // q, pairs % q], axis=-1)  # [n, 2**d, 2]
        levels.append(children.reshape(n, -1))
    return levels


def sample(grammar: Grammar, n: int, seed: int) -> np.ndarray:
    """Draws `n` sequences: int32 [n, 2**depth] leaf symbols."""
    return sample_levels(grammar, n, seed)[-1]
