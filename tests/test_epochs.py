"""Epochs as the paper counts them: every item once, the last batch partial."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import celeba_paper
from configs import grammar_paper
from configs import smoke
from diffusion_bias import checkpoints
from diffusion_bias import models
from diffusion_bias import run as run_lib
from diffusion_bias.config import config_checks
from diffusion_bias.diffusion import schedules
from diffusion_bias.training import train
from diffusion_bias.training import twin_steps


@pytest.mark.parametrize("n,batch", [(5000, 512), (64, 16), (300, 100), (57, 16), (5, 5), (7, 6)])
def test_steps_per_epoch_is_ceil_of_items_over_batch(n, batch):
    config = smoke.get_config()
    with config.unlocked():
        config.splits.split_size, config.training.batch_size = n, batch
    assert run_lib.steps_per_epoch(config) == int(np.ceil(n / batch))
    assert (
        run_lib.steps_per_epoch(config) * batch >= n > (run_lib.steps_per_epoch(config) - 1) * batch
    )


def _one_step_items(n, batch, step):
    """The items step `step` trains on and their weights in the loss: [n] float.

    The parameters are one scalar per item and the loss picks the scalars of the
    batch's items, so after one SGD step of rate 1 the parameters are minus the
    gradient: the weight each item got in the loss.
    """
    data = jnp.arange(n, dtype=jnp.float32)[:, None]  # [n, 1]: item i is the value i

    def loss_fn(params, x0, key, weights):
        picked = params[x0[:, 0].astype(jnp.int32)]  # [B]
        if weights is None:
            return picked.mean()
        return jnp.sum(weights * picked) / jnp.sum(weights)

    seed = jax.random.key(0)
    params, _, _, loss = twin_steps._twin_step(
        jnp.zeros(n),
        optax.sgd(1.0).init(jnp.zeros(n)),
        None,
        1,
        step,
        data,
        loss_fn=loss_fn,
        tx=optax.sgd(1.0),
        batch_size=batch,
        ema_decay=0.0,
        keys={"data": seed, "noise": seed},
        batch_sharding=None,
    )
    return -np.asarray(params, np.float64), float(loss)


@pytest.mark.parametrize("n,batch", [(23, 5), (20, 5)])
def test_an_epoch_visits_every_item_once_and_the_last_batch_is_the_rest(n, batch):
    steps = -(-n // batch)
    weights = np.stack([_one_step_items(n, batch, s)[0] for s in range(steps)])  # [E, n]
    used = weights > 0
    # Every item exactly once per epoch.
    np.testing.assert_array_equal(used.sum(0), np.ones(n))
    sizes = used.sum(1)
    expected = [batch] * (steps - 1) + [n - (steps - 1) * batch]
    np.testing.assert_array_equal(sizes, expected)
    # Each item's weight is 1 / (items in its batch): the mean over valid items only.
    np.testing.assert_allclose(weights[used], np.repeat(1.0 / sizes, sizes), rtol=1e-6)
    # The next epoch starts a new permutation of all items.
    first_next, _ = _one_step_items(n, batch, steps)
    assert (first_next > 0).sum() == batch


@functools.partial(jax.jit, static_argnames="kind")
def _loss(weights, x0, key, kind):
    # Jitted: one compile per weights structure, instead of ~10 eager model calls.
    if kind == "tokens":
        model = models.TokenTransformer(
            num_symbols=3, length=4, width=8, num_layers=1, num_heads=2, dropout_rate=0.0
        )
        example = jax.nn.one_hot(x0[:1], 3)
    else:
        model = models.MLPDenoiser(width=8, depth=1)
        example = x0[:1]
    params = model.init(jax.random.key(1), example, jnp.ones((1,), jnp.int32), train=False)
    return twin_steps.denoising_loss(
        params["params"],
        x0,
        key,
        weights,
        model=model,
        schedule=schedules.image_schedule(50),
        kind=kind,
        train=False,
    )


@pytest.mark.parametrize("kind", ["tokens", "images"])
def test_weighted_loss_is_the_mean_over_valid_items(kind):
    rng = np.random.default_rng(0)
    batch = 6
    if kind == "tokens":
        x0 = jnp.asarray(rng.integers(0, 3, (batch, 4)), jnp.int32)
    else:
        x0 = jnp.asarray(rng.normal(size=(batch, 3, 3, 1)), jnp.float32)
    key = jax.random.key(3)
    # Per-item losses from one-hot weights (same t, noise: they depend on the key only).
    per_item = np.array(
        [float(_loss(jnp.eye(batch)[j], x0, key, kind)) for j in range(batch)], np.float64
    )
    # Unweighted and all-ones losses are the plain mean of the per-item losses.
    np.testing.assert_allclose(float(_loss(None, x0, key, kind)), per_item.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        float(_loss(jnp.ones(batch), x0, key, kind)), per_item.mean(), rtol=1e-5
    )
    mask = np.array([1, 1, 0, 1, 0, 0], np.float32)
    np.testing.assert_allclose(
        float(_loss(jnp.asarray(mask), x0, key, kind)), per_item[mask > 0].mean(), rtol=1e-5
    )
    # What the padding holds does not matter.
    padded = x0.at[np.flatnonzero(mask == 0)].set(x0[0])
    np.testing.assert_allclose(
        float(_loss(jnp.asarray(mask), padded, key, kind)), per_item[mask > 0].mean(), rtol=1e-5
    )


def test_a_run_with_a_partial_last_batch_counts_ceil_steps_per_epoch(tmp_path):
    config = smoke.get_config()
    with config.unlocked():
        config.splits.split_size = 56  # 3.5 batches of 16: 4 steps per epoch
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 10 * 4
    assert list(run_lib.snapshot_steps(config))[-1] == 40


def test_explicit_epochs_without_the_last_are_the_grid_and_the_final_state_is_still_saved(
    tmp_path,
):
    config = smoke.get_config()
    with config.unlocked():
        # 4 steps per epoch, 40 in all; `latest` every 12 steps: never at step 40.
        config.snapshots.update(epochs=(2, 5), include_last=False, latest_every_steps=12)
    np.testing.assert_array_equal(run_lib.snapshot_steps(config), [8, 20])
    with config.unlocked():
        config.snapshots.include_last = True
    np.testing.assert_array_equal(run_lib.snapshot_steps(config), [8, 20, 40])
    with config.unlocked():
        config.snapshots.include_last = False
    workdir = str(tmp_path)
    train.train_and_evaluate(config, workdir)
    ckpts = checkpoints.TwinCheckpoints(workdir, run_lib.snapshot_steps(config), read_only=True)
    try:
        assert ckpts.snapshot_steps() == [8, 20]  # what the analysis walks
        assert ckpts.all_steps() == [8, 20, 40]  # the final state, as the latest
    finally:
        ckpts.close()
    # A rerun finds the run complete: it restores step 40 and trains nothing.
    state = train.train_and_evaluate(config, workdir)
    assert int(state.step) == 40


def test_celeba_paper_snapshots_are_the_papers_truncated_epochs():
    config = celeba_paper.get_config()
    paper = np.linspace(10, 4999, 50)[1:21].astype(int)  # the authors' list
    assert config.snapshots.epochs == tuple(int(e) for e in paper)
    assert config.snapshots.epochs[:2] == (111, 213)  # truncated: 111.8 -> 111
    spe = run_lib.steps_per_epoch(config)
    assert spe == 2
    # The authors' grid alone: no snapshot at the last epoch.
    assert not config.snapshots.include_last
    np.testing.assert_array_equal(run_lib.snapshot_steps(config), paper * spe)


@pytest.mark.parametrize("n,spe", [("5000", 10), ("12000", 24), ("70000", 137)])
def test_grammar_paper_epochs_have_ceil_steps_and_pass_the_checks(n, spe):
    config = grammar_paper.get_config(n)
    assert run_lib.steps_per_epoch(config) == spe
    total = config.training.num_epochs * spe
    assert total % config.training.steps_per_call == 0
    config_checks.check_config(config)
