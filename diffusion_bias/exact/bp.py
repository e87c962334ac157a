"""Exact belief propagation on the grammar's tree, and its factorised variants.

The tree (see `grammar.py`) has no loops, so one upward and one downward sweep
give exact marginals.

Two arithmetics run the same sweep. The fast one multiplies probabilities,
every message rescaled to a maximum of one (its log-scale kept aside), so a
message update is a small matrix product. It can underflow only when the
evidence forces an impossible combination of symbols (fields of ~1e4, as in the
exact denoiser near t = 1, applied to ungrammatical inputs): each batch element
checks that every normaliser it divided by stayed far above the float's
smallest normal number, and elements that fail are recomputed in log space,
where sums are log-sum-exps and nothing underflows. Both give the same numbers
to float tolerance; the log-space path costs ~q times more.

`factorized_layers=k` is BP_k of the paper (arXiv 2603.03469): the top k levels are replaced by
independent channels from the root to each level-k node, the channel of a node
being the product, along its path from the root, of the marginal transition
matrices M_L[a, b] = sum_c M[a, b, c] (left turn) and M_R[a, c] = sum_b M[a, b, c]
(right turn). k = 0 is the exact tree.

Shapes: q symbols, depth l, L = 2**l leaves, `...` any batch shape.
"""

import functools

import jax
import jax.numpy as jnp

from diffusion_bias import checks


def channels(transitions: jax.Array, level: int) -> jax.Array:
    """Root-to-node channels of the level-`level` nodes for BP_k.

    Args:
        transitions: [q, q, q].
        level: k >= 0.

    Returns:
        [2**k, q, q]; entry [j, a, x] = P(node j of level k is x | root is a)
        under the factorised model. Node j's path reads the bits of j from the
        most significant (0 = left, 1 = right). For k = 0 the identity.
    """
    m_left = transitions.sum(axis=2)
    m_right = transitions.sum(axis=1)
    q = transitions.shape[0]
    chans = jnp.eye(q, dtype=transitions.dtype)[None]
    for _ in range(level):
        # The new turn is the least significant bit, so the two children of
        # node j land at 2j and 2j + 1.
        chans = jnp.stack([chans @ m_left, chans @ m_right], axis=1)
        chans = chans.reshape(-1, q, q)
    return chans


def _pairs(msgs):
    """[..., 2n, q] -> left, right children messages, each [..., n, q]."""
    return msgs[..., 0::2, :], msgs[..., 1::2, :]


def _interleave(left, right):
    """Two [..., n, q] -> [..., 2n, q] with left children at even positions."""
    both = jnp.stack([left, right], axis=-2)
    return both.reshape(*both.shape[:-3], -1, both.shape[-1])


class _LogSpace:
    """Messages are log-potentials shifted to a maximum of zero."""

    @staticmethod
    def normalize(raw):
        shift = jnp.max(raw, axis=-1, keepdims=True)
        # An all -inf message (impossible hard evidence) keeps its -inf
        # entries and reports a -inf log-scale, never NaN.
        safe = jnp.where(jnp.isfinite(shift), shift, 0.0)
        return raw - safe, shift[..., 0], jnp.ones(shift.shape[:-2], bool)

    @staticmethod
    def from_log(log_msg):
        return log_msg

    @staticmethod
    def to_log(msg):
        return msg

    @staticmethod
    def up(m, children):
        left, right = _pairs(children)
        log_m = jnp.log(m)
        # Axis order (b, c, a) keeps the two reduced axes together.
        terms = jnp.moveaxis(log_m, 0, -1) + left[..., :, None, None] + right[..., None, :, None]
        return jax.nn.logsumexp(terms, axis=(-3, -2))

    @staticmethod
    def down(m, outside, children):
        left, right = _pairs(children)
        log_m = jnp.log(m)
        parent = outside[..., :, None, None]
        to_left = jax.nn.logsumexp(parent + log_m + right[..., None, None, :], axis=(-3, -1))
        to_right = jax.nn.logsumexp(parent + log_m + left[..., None, :, None], axis=(-3, -2))
        return _interleave(to_left, to_right)

    @staticmethod
    def marginal(outside, up):
        return jax.nn.softmax(outside + up, axis=-1), None


class _Scaled:
    """Messages are probabilities rescaled to a maximum of one."""

    @staticmethod
    def _tiny(dtype):
        # Far above the smallest normal number, so that terms lost to
        # underflow are negligible relative to every normaliser.
        return jnp.sqrt(jnp.finfo(dtype).tiny)

    @classmethod
    def normalize(cls, raw):
        shift = jnp.max(raw, axis=-1, keepdims=True)
        ok = shift >= cls._tiny(raw.dtype)
        msg = raw / jnp.where(ok, shift, 1.0)
        return msg, jnp.log(shift[..., 0]), jnp.all(ok[..., 0], axis=-1)

    @staticmethod
    def from_log(log_msg):
        return jnp.exp(log_msg)

    @staticmethod
    def to_log(msg):
        return jnp.log(msg)

    @staticmethod
    def up(m, children):
        left, right = _pairs(children)
        return jnp.einsum("...nb,...nc,abc->...na", left, right, m)

    @staticmethod
    def down(m, outside, children):
        left, right = _pairs(children)
        to_left = jnp.einsum("...na,abc,...nc->...nb", outside, m, right)
        to_right = jnp.einsum("...na,abc,...nb->...nc", outside, m, left)
        return _interleave(to_left, to_right)

    @classmethod
    def marginal(cls, outside, up):
        raw = outside * up
        total = raw.sum(-1, keepdims=True)
        ok = jnp.max(raw, axis=-1) >= cls._tiny(raw.dtype)
        return raw / jnp.where(ok[..., None], total, 1.0), jnp.all(ok, axis=-1)


def _sweep(space, transitions, log_evidence, k, downward):
    """One upward (and optionally downward) sweep in the given arithmetic.

    Returns:
        log_z: [...] log P(evidence) with a uniform root prior.
        marginals: tuple over levels 0..depth of [..., 2**d, q], None for
            levels 1..k-1 (absent from BP_k); None when not `downward`.
        ok: [...] bool, False where the scaled arithmetic lost precision.
    """
    depth = log_evidence.shape[-2].bit_length() - 1
    q = transitions.shape[0]
    oks = []

    log_msg, log_z, _ = _LogSpace.normalize(log_evidence)
    log_z = log_z.sum(-1)
    ups = {depth: space.from_log(log_msg)}
    for level in range(depth - 1, k - 1, -1):
        ups[level], shift, ok = space.normalize(space.up(transitions, ups[level + 1]))
        log_z = log_z + shift.sum(-1)
        oks.append(ok)

    # The root stage is small (2**k channels of q x q) and runs in log space
    # whatever the arithmetic below it.
    log_chan = jnp.log(channels(transitions, k))  # [2**k, a, x]
    up_k = space.to_log(ups[k])  # [..., 2**k, x]
    per_node = jax.nn.logsumexp(log_chan + up_k[..., None, :], axis=-1)  # [..., 2**k, a]
    root_up = per_node.sum(-2)  # [..., a]
    log_prior = -jnp.log(jnp.asarray(q, log_evidence.dtype))
    log_z = log_z + jax.nn.logsumexp(root_up + log_prior, axis=-1)
    if not downward:
        return log_z, None, _all(oks, log_z.shape)

    root = jax.nn.softmax(root_up, axis=-1)[..., None, :]
    # Everything the root hears except from node j (all finite: every row of
    # a channel has a positive entry and the evidence is finite).
    others = root_up[..., None, :] - per_node  # [..., 2**k, a]
    outside, _, _ = _LogSpace.normalize(
        jax.nn.logsumexp((others + log_prior)[..., None] + log_chan, axis=-2)
    )  # [..., 2**k, x]
    outside = space.from_log(outside)
    marginals = [root] + [None] * depth
    for level in range(k, depth + 1):
        marginals[level], ok = space.marginal(outside, ups[level])
        oks.append(ok)
        if level < depth:
            outside, _, ok = space.normalize(space.down(transitions, outside, ups[level + 1]))
            oks.append(ok)
    return log_z, tuple(marginals), _all(oks, log_z.shape)


def _all(oks, shape):
    oks = [ok for ok in oks if ok is not None]
    return functools.reduce(jnp.logical_and, oks, jnp.ones(shape, bool))


def _bp(transitions, log_evidence, k, downward):
    """Scaled sweep, with the elements that lost precision redone in log space."""
    fast = _sweep(_Scaled, transitions, log_evidence, k, downward)
    ok = fast[2]

    def redo():
        exact = _sweep(_LogSpace, transitions, log_evidence, k, downward)

        def pick(a, b):
            return jnp.where(ok.reshape(ok.shape + (1,) * (a.ndim - ok.ndim)), a, b)

        return jax.tree.map(pick, fast[:2], exact[:2])

    # The log-space sweep runs only when some element needs it.
    return jax.lax.cond(jnp.all(ok), lambda: fast[:2], redo)


def _check(transitions, log_evidence, factorized_layers):
    if transitions.ndim != 3 or not (
        transitions.shape[0] == transitions.shape[1] == transitions.shape[2]
    ):
        raise ValueError(f"transitions must have shape [q, q, q], got {transitions.shape}")
    q = transitions.shape[0]
    length = log_evidence.shape[-2] if log_evidence.ndim >= 2 else 0
    if log_evidence.ndim < 2 or log_evidence.shape[-1] != q or length < 2 or length & (length - 1):
        raise ValueError(
            f"leaf evidence must have shape [..., 2**depth, q={q}] with depth >= 1, "
            f"got {log_evidence.shape}"
        )
    depth = length.bit_length() - 1
    if not checks.is_int(factorized_layers) or not 0 <= factorized_layers <= depth:
        raise ValueError(
            f"factorized_layers must be an integer in [0, depth={depth}], got {factorized_layers!r}"
        )


def _as_float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("factorized_layers",))
def level_marginals(
    transitions: jax.typing.ArrayLike,
    leaf_log_evidence: jax.typing.ArrayLike,
    factorized_layers: int = 0,
) -> tuple[jax.Array | None, ...]:
    """Posterior marginals of every node given leaf evidence.

    Args:
        transitions: [q, q, q], each `transitions[a]` summing to one (zeros
            allowed); any such tensor, not only grammars of `random_grammar`.
        leaf_log_evidence: [..., L, q] finite log-potentials of each leaf's
            symbols; a per-leaf additive constant is irrelevant.
        factorized_layers: k of BP_k (0 = exact), a Python int in [0, depth].

    Returns:
        Tuple over levels d = 0..depth of [..., 2**d, q] marginals (level 0 is
        the root, level depth the leaves); levels 1..k-1 are None (absent from
        the factorised model).
    """
    leaf_log_evidence = _as_float(leaf_log_evidence)
    transitions = jnp.asarray(transitions, leaf_log_evidence.dtype)
    _check(transitions, leaf_log_evidence, factorized_layers)
    return _bp(transitions, leaf_log_evidence, factorized_layers, downward=True)[1]


@functools.partial(jax.jit, static_argnames=("factorized_layers",))
def leaf_marginals(
    transitions: jax.typing.ArrayLike,
    leaf_log_evidence: jax.typing.ArrayLike,
    factorized_layers: int = 0,
) -> jax.Array:
    """Posterior leaf marginals [..., L, q]; arguments as `level_marginals`."""
    return level_marginals(transitions, leaf_log_evidence, factorized_layers)[-1]


@functools.partial(jax.jit, static_argnames=("factorized_layers",))
def free_energy(
    transitions: jax.typing.ArrayLike, sequences: jax.typing.ArrayLike, factorized_layers: int = 0
) -> jax.Array:
    """Negative log-likelihood of sequences in units of log q.

    This is the Bethe free energy of the sequence, exact on a tree.

    Args:
        transitions: [q, q, q].
        sequences: [..., L] integer symbols; -1 marks an unobserved leaf,
            which is summed over.
        factorized_layers: k of BP_k (0 = exact).

    Returns:
        [...] float32 -log_q P(sequence); +inf where it is impossible.
    """
    transitions = jnp.asarray(transitions, jnp.float32)
    q = transitions.shape[-1]
    sequences = jnp.asarray(sequences)
    hit = jax.nn.one_hot(sequences, q, dtype=jnp.bool_)
    observed = (sequences >= 0)[..., None]
    log_evidence = jnp.where(hit | ~observed, 0.0, -jnp.inf).astype(jnp.float32)
    _check(transitions, log_evidence, factorized_layers)
    log_z, _ = _bp(transitions, log_evidence, factorized_layers, downward=False)
    return -log_z / jnp.log(jnp.float32(q))
