"""Brute-force references for the tree grammar, by explicit enumeration.

Independent of `diffusion_bias.exact.bp`: nothing here passes messages. Small trees
only (q**(number of nodes) configurations).
"""

import itertools

import numpy as np


def path_channels(transitions, level):
    """[2**k, q, q] products of M_L / M_R along each root-to-node path."""
    m_left = transitions.sum(axis=2)
    m_right = transitions.sum(axis=1)
    q = transitions.shape[0]
    chans = []
    for j in range(2**level):
        chan = np.eye(q)
        for bit in format(j, f"0{level}b") if level else "":
            chan = chan @ (m_left if bit == "0" else m_right)
        chans.append(chan)
    return np.stack(chans)


def tree_configurations(transitions, depth, factorized_layers=0):
    """Every configuration of the (factorised) tree with its prior probability.

    Returns:
        levels: list over levels 0..depth of int [C, 2**d] symbols, or None
            for levels 1..k-1, which the factorised model does not have.
        prior: float64 [C] probability of each configuration.
    """
    q = transitions.shape[0]
    k = factorized_layers
    present = [0] + list(range(max(k, 1), depth + 1))
    sizes = [2**d for d in present]
    configs = np.array(list(itertools.product(range(q), repeat=sum(sizes))))
    levels = [None] * (depth + 1)
    start = 0
    for d, size in zip(present, sizes):
        levels[d] = configs[:, start : start + size]
        start += size
    root = levels[0][:, 0]
    prior = np.full(len(configs), 1.0 / q)
    if k == 0:
        below = 0
    else:
        chans = path_channels(transitions, k)
        for j in range(2**k):
            prior *= chans[j][root, levels[k][:, j]]
        below = k
    for d in range(below, depth):
        parent = levels[d]
        prior *= np.prod(
            transitions[parent, levels[d + 1][:, 0::2], levels[d + 1][:, 1::2]], axis=1
        )
    return levels, prior


def sequence_distribution(transitions, depth, factorized_layers=0):
    """All q**L sequences [S, L] (lexicographic) and their probabilities [S]."""
    q = transitions.shape[0]
    k = factorized_layers
    # dist[a] = joint of a subtree's leaves given its top symbol, flattened.
    dist = np.eye(q)
    for _ in range(depth - k):
        dist = np.einsum("abc,bi,cj->aij", transitions, dist, dist).reshape(q, -1)
    joint = np.ones((q, 1))
    for chan in path_channels(transitions, k):
        sub = chan @ dist
        joint = (joint[:, :, None] * sub[:, None, :]).reshape(q, -1)
    probs = joint.mean(axis=0)
    length = 2**depth
    seqs = np.array(list(itertools.product(range(q), repeat=length)))
    return seqs, probs


def random_transitions(rng, q, zero_fraction=0.0):
    """Arbitrary [q, q, q] transitions, rows summing to one, some entries zero."""
    t = rng.random((q, q, q)) + 0.05
    if zero_fraction:
        t *= rng.random((q, q, q)) >= zero_fraction
        # Keep at least one allowed pair per parent.
        for a in range(q):
            if t[a].sum() == 0:
                t[a, rng.integers(q), rng.integers(q)] = 1.0
    return t / t.sum(axis=(1, 2), keepdims=True)
