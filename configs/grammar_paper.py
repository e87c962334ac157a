"""The paper's controlled setting (the paper (arXiv 2603.03469), Setting 2), for accelerators.

Grammar q=6, depth 4, sigma 1, q_eff 4, seed 0, drawn as the authors draw it
(`grammar_rng="legacy"`: their `np.random.seed(0)` procedure on a local
RandomState), so the grammar is theirs bit for bit. Only the grammar: the
authors' sequence generator reseeds every tree from the operating system
(`np.random.seed()` in `gen_tree`, their
modules/gen_filtered_hierarchical_data_wforbidden.py), so their pool is not
reproducible; ours is `grammar.sample` with `pool_seed`. A pool of 10^6
sequences (larger when the splits and the held-out set need it); 15 twins, as many
blocks of n as the authors' pool of 10^6 holds: 14 at n = 70000; split i for seed i;
transformer 512 x 8 layers x 4 heads, dropout 0.1, initialised as the authors' torch model
(param_init="torch": Linear kaiming-uniform, positional embedding N(0, 1),
attention in-projection xavier-uniform with zero biases, all encoder layers
starting from the same parameters); Adam 3e-4, batch 512, epochs of
ceil(n / 512) steps (the last batch partial, e.g. 10 for n=5000), one epoch per
compiled call, the paper's per-epoch learning-rate factor; 25 log-spaced
snapshots from epoch 100 to the last, truncated to integers as the authors'
training saves them (`torch.logspace(2, log10(n_epochs), 25).long()` in their
modules/training.py: for 35000 epochs the last is 34999). The argument picks n and the number of epochs: 5000
(20000 epochs, default), 12000 (30000), 70000 (35000).

Analysis: the paper's protocol. Coupled samples run the full reverse chain
(T=500, `sampling_steps=0`), N=50,000 per model; the NN divergence measured against
50,000 held-out sequences (the authors' reference is the 50,000 pool sequences after
the model's own block, which are other splits' training data; ours are held out from
every split) and searched at every snapshot (no grammaticality gate); the U-turn takes 1,000 sequences with
100 noise repetitions each at t/T in (0.01, 0.03, 0.05, 0.085, 0.12) (steps
5, 15, 25, 42, 60: truncated, as the paper's code); the KLs along t (Fig. 3b, both
directions) every 0.02 of t/T on 1,000 held-out sequences; the KLs at t/T = 0.15
(Fig. 1b, 6) on 3,000 held-out sequences x 5 noisings; the loss decomposition (Fig.
4b) on every training item and as many held-out ones.

Cost of one snapshot's analysis (an ESTIMATE, not a measurement on an
accelerator; for 15 twins, 14/15 of it at n = 70000): the transformer costs 0.54 GFLOP per sequence and forward pass
(XLA's count), so the 15 x 50,000 x 500 sampling forward passes are 2.0e17 FLOP
and the rest of a snapshot (the loss grid on the 50,000 held-out sequences x 16
draws and the training items, the membership grid, KLs, decomposition) about 5%. At a
sustained 100 TFLOP/s that is ~35 min per snapshot (25 snapshots: ~15 h); the
U-turn adds 15 x 2 x 1,000 x 100 x 147 forward passes (2.4e17 FLOP, ~40 min) at
each of the two snapshots it runs at, and its Fig. 11 control 15 x 10,000 x 186
(2.8e7 forward passes, 1.5e16 FLOP, ~2.5 min) more, besides BP_k's chains once.
Measured on this project's 2-core CPU: 29
GFLOP/s for this model (43 for a width-64 one), i.e. ~80 days per snapshot.

    python -m launch.train --config=configs/grammar_paper.py:12000 --workdir=W
"""

import ml_collections
import numpy as np

from diffusion_bias.config import default_config

_EPOCHS = {5000: 20_000, 12000: 30_000, 70000: 35_000}


def get_config(arg="5000"):
    n = int(arg)
    if n not in _EPOCHS:
        raise ValueError(f"grammar_paper.py:N takes N in {sorted(_EPOCHS)}, got {arg}")
    # 50,000 held-out sequences: the reference of the NN divergence, as the authors'
    # (`--N-test 50000`, their scripts/nn_divergence.py and its Fig. 4a command).
    # The authors' twin i trains on block i of n sequences of their pool of 10^6
    # (train_transformer.py): 15 twins where 15 blocks fit, 14 at n = 70,000.
    num_splits, heldout = min(15, 10**6 // n), 50_000
    config = default_config.get_config()
    config.data = ml_collections.ConfigDict(
        dict(
            name="grammar",
            q=6,
            depth=4,
            sigma=1.0,
            q_eff=4,
            grammar_seed=0,
            grammar_rng="legacy",  # the authors' grammar (see the docstring)
            pool_size=max(1_000_000, num_splits * n + heldout),
            pool_seed=0,
        )
    )
    config.splits.update(
        num_splits=num_splits, split_size=n, heldout_size=heldout, drop_overlap=False
    )
    config.diffusion.update(schedule="token", num_steps=500)
    config.model = ml_collections.ConfigDict(
        dict(
            name="transformer",
            width=512,
            num_layers=8,
            num_heads=4,
            dropout_rate=0.1,
            param_init="torch",  # the authors' torch model (see models/transformer.py)
            # The tested default. The authors trained under float16 autocast with a
            # gradient scaler and TF32 matmuls (their training.py, train_transformer.py);
            # "bfloat16" is the closest here, on an accelerator.
            dtype="float32",
        )
    )
    config.optimizer.update(learning_rate=3e-4, schedule="paper")
    config.training.update(
        batch_size=512,
        num_epochs=_EPOCHS[n],
        steps_per_call=-(-n // 512),  # one epoch per call: ceil(n / batch) steps
        log_every_steps=5000,
    )
    # Their checkpoint epochs: 10^linspace(2, log10(n_epochs), 25), truncated (`.long()`),
    # the end exponent log10(n_epochs) rounded to float32 as torch.log10 of an integer
    # tensor gives it: for 35000 epochs the last is 34999 (10^4.5440679 = 34999.985).
    end = float(np.float32(np.log10(_EPOCHS[n])))
    epochs = (10.0 ** np.linspace(2.0, end, 25)).astype(int)
    config.snapshots.update(
        num_snapshots=25,
        first_epoch=100,
        epochs=tuple(int(e) for e in epochs),
        include_last=False,  # their grid alone; the final state is saved all the same
        latest_every_steps=5000,
    )
    config.analysis.update(
        sampling_steps=0,  # the full chain of T = 500 steps
        num_samples=50_000,
        uturn_items=1000,
        # The authors' estimators (their sequential_learning.py, loss_decomposition.py
        # and the figures' commands): the KLs at t/T = 0.15 on 3000 held-out sequences
        # x 5 noisings, the loss decomposition on every training item.
        kl_items=3000,
        kl_repeats=5,
        decomposition_items=0,
        uturn_repeats=100,
        # Fig. 11 (their uturn_overlap_random.py command): 100 random sequences x 100
        # repetitions, each repetition drawing new sequences: 10,000 sequences, one
        # noising each; t/T = linspace(0.05, 0.1, 5); the memoriser on 256 items.
        uturn_random_items=10_000,
        uturn_random_ratios=(0.05, 0.0625, 0.075, 0.0875, 0.1),
        memorizing_items=256,
        uturn_ratios=(0.01, 0.03, 0.05, 0.085, 0.12),
        min_grammatical=0.0,  # the paper searches every snapshot
        kl_along_t_points=50,  # Fig. 3b: KL(BP_k || model) every 0.02 of t/T
    )
    config.lock()
    return config
