"""One snapshot's measurement, typed: what the instrument hands the summary.

`measure.Instrument.compute` returns a `SnapshotRecord`; the analysis caches its
arrays (`arrays`, one .npz per snapshot) and reads them back (`from_arrays`);
`summary.summarize` turns a sequence of records into curves and the verdict.
The fields are the schema. Shapes: K models (twins), P = K(K-1)/2 pairs of
them, N coupled samples a model, m held-out items, n' loss-grid items of each
model's own (and its partner's) split, S times of the privacy grid.
"""

from collections.abc import Mapping
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SnapshotRecord:
    """The per-item arrays of one snapshot, numpy.

    Both kinds (the probe's, `probe.Probe.measure`; the monitor measures the same):
        similarity: [P, N] each coupled pair's similarity (cosine or token overlap).
        own_d1, own_d2: [K, N] nearest and second-nearest distance of model k's
            samples in its own training set.
        own_index: [K, N] the index of that nearest item.
        other_d1: [K, N] nearest distance in the closest other split.
        heldout_d1, heldout_d2: [K, m] the held-out items' nearest distances in
            training set k (the no-bias reference).
        test_losses: [K, m] each model's loss on the held-out items (loss grid).
        train_losses: [K, n'] on its own items; partner_losses: [K, n'] on its
            partner's (`sample_split.partner`).
        own_losses_t, partner_losses_t: [K, S, n'] and heldout_losses_t:
            [K, S, m]: the membership scores at each time of the privacy grid.

    Where the run or the kind has them (else None):
        canary_twin: [n'] the twin each position's canary landed in
            (`splits.assignment="coin"`).
        test_losses_every_step: [K, m'] the test loss at every step
            (`analysis.test_loss_every_step`).
        quality: [K, N] a held-out classifier's confidence in each sample
            (images with labels).
        score_cosine_heldout, score_cosine_train: [P, T] the pairs' noise
            predictions' cosine at `analysis.score_times` (images).
        example_samples, example_nearest: [K, e, H, W, C] a few samples and their
            nearest training images (images).
        bp_own_losses: [K, n'], bp_heldout_losses: [m]: exact BP's losses on the
            loss grid (tokens).
        grammatical: [K] the grammatical fraction of each model's samples (tokens).
        twin_kl: [P, M] the pairs' per-sequence KL at the critical time (tokens).
        kl_bp: [K, depth + 1] KL(BP_k || model) at the critical time (tokens).
        decomposition, decomposition_mean_t: [K, 4] the loss decomposition, at
            the critical time and averaged over the steps (tokens).
        decomposition_steps: [G] those steps (tokens).
    """

    similarity: np.ndarray
    own_d1: np.ndarray
    own_d2: np.ndarray
    own_index: np.ndarray
    other_d1: np.ndarray
    heldout_d1: np.ndarray
    heldout_d2: np.ndarray
    test_losses: np.ndarray
    train_losses: np.ndarray
    partner_losses: np.ndarray
    own_losses_t: np.ndarray
    partner_losses_t: np.ndarray
    heldout_losses_t: np.ndarray
    canary_twin: np.ndarray | None = None
    test_losses_every_step: np.ndarray | None = None
    quality: np.ndarray | None = None
    score_cosine_heldout: np.ndarray | None = None
    score_cosine_train: np.ndarray | None = None
    example_samples: np.ndarray | None = None
    example_nearest: np.ndarray | None = None
    bp_own_losses: np.ndarray | None = None
    bp_heldout_losses: np.ndarray | None = None
    grammatical: np.ndarray | None = None
    twin_kl: np.ndarray | None = None
    kl_bp: np.ndarray | None = None
    decomposition: np.ndarray | None = None
    decomposition_mean_t: np.ndarray | None = None
    decomposition_steps: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "SnapshotRecord":
        """The record of named arrays (a cached .npz's, `arrays`' inverse).

        Raises:
            ValueError: a name is not a field, or a field without default is absent.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(arrays) - set(fields))
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in arrays]
        if unknown or missing:
            raise ValueError(f"snapshot arrays: unknown {unknown}, missing {missing}")
        return cls(**{name: np.asarray(value) for name, value in arrays.items()})

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays the record holds, by field name (None fields left out)."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                out[field.name] = value
        return out

    @property
    def num_models(self) -> int:
        """K."""
        return int(self.test_losses.shape[0])
