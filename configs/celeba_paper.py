"""The paper's real-image setting (the paper (arXiv 2603.03469), Setting 1), for accelerators.

CelebA as the authors read it: the 202,599 files of `img_align_celeba/` in
natural order (`data.name="image_folder"`, `--config.data.path=` the folder;
tensorflow-datasets' download of celeb_a holds the same folder), each file's
short side resized to 32 (antialiased bilinear), a centred 32x32 crop, grey as
torchvision's Grayscale, pixels in [0, 1] (ToTensor); decoded once into the
workdir (or `data.cache_dir`). Split k is files [1024 k, 1024 (k + 1)) and the
last 2048 files are held out (`splits.assignment="contiguous"`, no duplicate
removal), as their loader.py; each twin centred by its own split's per-channel
mean, its held-out view shifted by the same mean (the authors' protocol); 15
twins of n=1024; DDPM eps-prediction, T=1000; the authors' U-Net (base 32, multiples
(1, 2, 4), 4-head attention at the two lower resolutions, channel dropout 0.1, torch
initialisation: `layout="authors"`, `param_init="torch"`); Adam 1e-4, batch 512, 5000
epochs of ceil(n / batch) = 2 steps; snapshots at epochs
linspace(10, 4999, 50)[1:21] truncated to integers (111, 213, ..., 2046), the
authors' grid exactly: `training_times` of their sample-split script
(davide-beltrame/Why-Diffusion-Models-Don-t-Memorize,
Experiments/src/Generation/sample_split_inference.py), the epochs their
cos_dis_aggregate.py reads the test loss at as well (loss_compute.py evaluates
[1:], a superset). No snapshot at the last epoch 5000 (`include_last=False`):
the final state is saved for resuming, and not analysed.
Samples for the statistics come from the paper's sampler (eps step with
sigma^2 = beta, no clipping, no noise on the last two steps), mapped back by
their twin's mean so that all twins compare in the space of the raw images.

Analysis: the paper's protocol: 512 coupled samples per model on the full
reverse chain (T=1000, `sampling_steps=0`). The verdict's curves aggregate by
the median (`aggregate="median"`), as the authors' cos_dis_aggregate.py
(Experiments/src/Generation/ of the same repository): the onset is the argmin
over snapshots of the median over the 105 twin pairs of 1 - each pair's mean
cosine similarity (the argmax of the median similarity), the test-loss minimum
the argmin of the median over the 15 models of each model's test loss. The test
loss as their loss_compute.py estimates it: 50 held-out images at every step 1..T,
one noise draw each (`test_loss_every_step`); it and the score cosine (their
compare_scores.py: 512 images, t = 50..200 counted from 0, our steps 51..201) centre
every model's inputs by the mean of the first 40,000 images
(`eval_centering="common"`). Training draws t in 2..T (`min_train_step=2`): their
0-indexed 1..999.

Cost of one snapshot's analysis (an ESTIMATE, not a measurement on an
accelerator): the U-Net costs 1.13 GFLOP per image and forward pass (XLA's
count), so the 15 x 512 x 1000 sampling forward passes are 8.7e15 FLOP; the
every-step test loss (15 x 50 x 1000 passes), the loss and membership grids and the
score cosines about 2.1e6 passes, 2.4e15 FLOP more. At a sustained 50 TFLOP/s
(convolutions on batches of 512) that is ~3.7 min per snapshot (20 snapshots:
~1.2 h). Measured
on this project's 2-core CPU: 25 GFLOP/s for this model, i.e. ~4.5 days per
snapshot.

    python -m launch.train --config=configs/celeba_paper.py --workdir=W
"""

import ml_collections
import numpy as np

from diffusion_bias.config import default_config


def get_config():
    config = default_config.get_config()
    config.data = ml_collections.ConfigDict(
        dict(
            name="image_folder",
            path="",  # set on the command line: the folder of CelebA's aligned images
            image_size=32,
            grayscale=True,
            pixel_range="unit",  # ToTensor: [0, 1]
        )
    )
    config.centering = "per_split"  # each twin (and its held-out view) by its own mean
    # Their loader.py: split `index` is files [index * n, (index + 1) * n), the test
    # set the last 2048 files; nothing is dropped.
    config.splits.update(
        num_splits=15,
        split_size=1024,
        heldout_size=2048,
        drop_overlap=False,
        assignment="contiguous",
    )
    # Their training draws t in 1..999 counting from 0 (Diffusion.py train_one_batch:
    # randint(low=1, high=TIMESTEPS)): our 2..1000, never the lowest noise level.
    config.diffusion.update(schedule="image", num_steps=1000, min_train_step=2)
    config.model = ml_collections.ConfigDict(
        dict(
            name="unet",
            base_channels=32,
            channel_mults=(1, 2, 4),
            attention_levels=(1, 2),
            dropout_rate=0.1,
            dtype="float32",  # the tested default; "bfloat16" on an accelerator for speed
            # The authors' U-Net (their Unet.py): 4-head attention, channel dropout, a GELU
            # time MLP on their 0-indexed step, pad-1 stride-2 convs, torch's GroupNorm
            # epsilon and initialisation (models/unet.py).
            layout="authors",
            param_init="torch",
        )
    )
    config.optimizer.update(learning_rate=1e-4, schedule="constant")
    config.training.update(
        batch_size=512,
        num_epochs=5000,
        steps_per_call=2,
        twin_strategy="map",
        log_every_steps=1000,
    )
    # The authors truncate (astype(int)), not round.
    epochs = np.linspace(10, 4999, 50)[1:21].astype(int)
    config.snapshots.update(
        epochs=tuple(int(e) for e in epochs), include_last=False, latest_every_steps=1000
    )
    # The paper's sampler on the full chain of T = 1000 steps; the authors' medians; the
    # score cosine on 512 held-out and 512 training images of each model, as the
    # authors' compare_scores.py runs in their Fig. 2 command (-Ns 1000 in batches of
    # 512, full batches only), at their t = 50, 100, 150, 200 (run_train.sh), which
    # count from 0: our steps count from 1 (alpha_bar_0 = 1), so the same noise levels
    # are 51, 101, 151, 201.
    config.analysis.update(
        sampling_steps=0,
        num_samples=512,
        image_sampler="paper",
        aggregate="median",
        score_items=512,
        score_times=(51, 101, 151, 201),
        # Their test loss (loss_compute.py, EVAL_N=50 in run_train.sh): 50 held-out
        # images at every step, one noise draw each.
        test_loss_every_step=True,
        test_loss_items=50,
        # Both scripts centre their inputs by the mean of the first 40,000 images, for
        # every model (which trained on its own split's mean), and show the two models
        # of a pair the same x_t.
        eval_centering="common",
        eval_centering_items=40_000,
    )
    config.lock()
    return config
