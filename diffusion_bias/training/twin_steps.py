"""The pure pieces of twin training: optimizer, loss, one step, a compiled chunk of steps.

The twins' parameters and optimizer states are stacked on a leading axis [K]
and updated by one jitted pure step (vmapped over K for dense models, a
sequential `lax.map` for convolutional ones, where vmapped weights become slow
grouped convolutions on CPU). The batch axis is sharded over the devices
present ("data"); with `vmap`, the twin axis can be sharded too ("twins").

Everything random is a function of (config.seed, split, step): the batch of
split k at step s is slice s % E of the permutation of epoch s // E (E =
ceil(n / B) steps per epoch, the last batch partial as in a torch DataLoader),
and its diffusion times, noise and dropout come from
fold_in(fold_in(key, k), s). `train.train_and_evaluate` runs these steps.
"""

from collections.abc import Callable
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax

from diffusion_bias import checkpoints
from diffusion_bias import run as run_lib
from diffusion_bias import setting as setting_lib
from diffusion_bias.config import config_checks
from diffusion_bias.diffusion import process
from diffusion_bias.diffusion import samplers


def learning_rate_schedule(config: ml_collections.ConfigDict) -> float | optax.Schedule:
    """The learning rate: a float ("constant") or a function of the step.

    "paper": a factor applied per epoch, 1.0 -> 0.5 linearly over the first 50
    epochs, then a cosine from 0.5 to 0.1 over the remaining epochs.
    """
    lr = config.optimizer.learning_rate
    if config.optimizer.schedule == "constant":
        schedule = lr
    else:
        epochs = config.training.num_epochs
        warm = min(50, epochs)
        by_epoch = optax.join_schedules(
            [
                optax.linear_schedule(lr, 0.5 * lr, warm),
                optax.cosine_decay_schedule(0.5 * lr, max(epochs - warm, 1), alpha=0.2),
            ],
            boundaries=[warm],
        )
        spe = run_lib.steps_per_epoch(config)
        schedule = lambda step: by_epoch(step // spe)
    return schedule


def get_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam with the configured learning-rate schedule (`learning_rate_schedule`)."""
    schedule = learning_rate_schedule(config)
    return optax.adam(schedule, b1=config.optimizer.b1, b2=config.optimizer.b2)


def denoising_loss(
    params: Any,
    x0: jax.Array,
    key: jax.Array,
    weights: jax.Array | None = None,
    *,
    model: Any,
    schedule: Any,
    kind: str,
    train: bool,
    min_step: int = 1,
) -> jax.Array:
    """Mean denoising loss of one model on a batch, t uniform in min_step..T.

    Args:
        params: one model's parameters.
        x0: int [B, L] tokens (kind "tokens": cross-entropy of x0-logits) or
            float [B, H, W, C] images (kind "images": MSE of predicted noise).
        key: draws t, the noise and dropout.
        weights: optional float [B], 1 for the items of a partial last batch and
            0 for its padding; the loss is then the mean over the weighted items.

    Returns:
        [] the loss.
    """
    key_t, key_noise, key_dropout = jax.random.split(key, 3)
    t = jax.random.randint(key_t, (x0.shape[0],), min_step, schedule.num_steps + 1)
    setting = setting_lib.of(kind)
    clean = setting.encode(x0, getattr(model, "num_symbols", None))
    noise = samplers.standard_normal(key_noise, clean.shape, clean.dtype)
    x_t = process.q_sample(schedule, clean, t, noise)
    out = model.apply({"params": params}, x_t, t, train=train, rngs={"dropout": key_dropout})
    per_item = setting.training_loss(out, x0, noise)  # [B, L] or [B, H, W, C]
    if weights is None:
        # Full batches keep the plain mean (bit-identical to the unweighted loss).
        return per_item.mean()
    per_item = per_item.reshape(per_item.shape[0], -1).mean(axis=1)  # [B]
    return jnp.sum(weights * per_item) / jnp.sum(weights)


def _twin_step(
    params,
    opt_state,
    ema,
    split,
    step,
    data,
    *,
    loss_fn,
    tx,
    batch_size,
    ema_decay,
    keys,
    batch_sharding,
):
    """One optimizer step of one twin. `data` is its split [n, ...]."""
    n = data.shape[0]
    per_epoch = -(-n // batch_size)
    perm = jax.random.permutation(
        jax.random.fold_in(jax.random.fold_in(keys["data"], split), step // per_epoch), n
    )
    start = (step % per_epoch) * batch_size
    pad = per_epoch * batch_size - n  # static, < batch_size
    weights = None
    if pad:
        # The last batch of an epoch holds the n - (E-1)B remaining items; static
        # shapes inside the scan: the order is padded to E*B with items the
        # weights drop, so the loss is the mean over the valid items alone.
        perm = jnp.concatenate([perm, perm[:pad]])
        weights = (start + jnp.arange(batch_size) < n).astype(jnp.float32)
    index = jax.lax.dynamic_slice(perm, (start,), (batch_size,))
    x0 = data[index]
    if batch_sharding is not None:
        x0 = jax.lax.with_sharding_constraint(x0, batch_sharding)
    key = jax.random.fold_in(jax.random.fold_in(keys["noise"], split), step)
    loss, grads = jax.value_and_grad(loss_fn)(params, x0, key, weights)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if ema is not None:
        ema = optax.incremental_update(params, ema, 1.0 - ema_decay)
    return params, opt_state, ema, loss


def make_train_chunk(
    config: ml_collections.ConfigDict,
    model: Any,
    schedule: Any,
    kind: str,
    mesh: jax.sharding.Mesh,
    tx: optax.GradientTransformation,
) -> Callable[[checkpoints.TwinState, jax.Array], tuple[checkpoints.TwinState, jax.Array]]:
    """Returns chunk(state, data) -> (state, losses [S, K]) running S steps.

    `state` is a checkpoints.TwinState whose optimizer state `tx` made
    (`initial_state_and_data`); `data` is [K, n, ...].
    """
    seed_key = jax.random.key(config.seed)
    keys = {"data": jax.random.fold_in(seed_key, 0), "noise": jax.random.fold_in(seed_key, 1)}
    loss_fn = functools.partial(
        denoising_loss,
        model=model,
        schedule=schedule,
        kind=kind,
        train=True,
        # Runs saved before the field trained on every noise level.
        min_step=config.diffusion.get("min_train_step", 1),
    )
    one = functools.partial(
        _twin_step,
        loss_fn=loss_fn,
        tx=tx,
        batch_size=config.training.batch_size,
        ema_decay=config.training.ema_decay,
        keys=keys,
        batch_sharding=NamedSharding(mesh, P("data")),
    )
    num_models = config_checks.num_models(config)

    if config.training.twin_strategy == "vmap":
        # spmd_axis_name shards the twin axis over the mesh's "twins" devices.
        every = jax.vmap(one, in_axes=(0, 0, 0, 0, None, 0), spmd_axis_name="twins")
    else:

        def every(params, opt_state, ema, splits, step, data):
            return jax.lax.map(
                lambda a: one(*a[:4], step, a[4]), (params, opt_state, ema, splits, data)
            )

    def chunk(state, data):
        def body(state, _):
            params, opt_state, ema, losses = every(
                state.params,
                state.opt_state,
                state.ema_params,
                jnp.arange(num_models),
                state.step,
                data,
            )
            new = checkpoints.TwinState(
                step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema
            )
            return new, losses

        return jax.lax.scan(body, state, None, length=config.training.steps_per_call)

    return jax.jit(chunk, donate_argnums=0)


def init_state(
    config: ml_collections.ConfigDict,
    model: Any,
    example: jax.typing.ArrayLike,
    tx: optax.GradientTransformation,
) -> checkpoints.TwinState:
    """The TwinState at step 0: each twin initialised from its own key unless `shared_init`."""
    init_key = jax.random.fold_in(jax.random.key(config.seed), 2)
    num_models = config_checks.num_models(config)
    if config.training.shared_init:
        keys = jnp.stack([init_key] * num_models)
    else:
        keys = jax.vmap(lambda k: jax.random.fold_in(init_key, k))(jnp.arange(num_models))
    t = jnp.ones((example.shape[0],), jnp.int32)
    params = jax.jit(jax.vmap(lambda k: model.init(k, example, t, train=False)["params"]))(keys)
    opt_state = jax.jit(jax.vmap(tx.init))(params)
    # A copy: donation would otherwise see the same buffers twice.
    ema = jax.tree.map(jnp.copy, params) if config.training.ema_decay > 0 else None
    return checkpoints.TwinState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, ema_params=ema
    )


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The device mesh: config.training.twin_devices rows ("twins") by the rest ("data").

    Over all devices, or the first config.training.num_devices of them.
    """
    used = jax.devices()[: config.training.get("num_devices", 0) or None]
    devices = np.asarray(used).reshape(config.training.twin_devices, -1)
    return jax.sharding.Mesh(devices, ("twins", "data"))


def place(tree: Any, mesh: jax.sharding.Mesh, twin_axis: bool) -> Any:
    """Puts arrays on the mesh: twin axis over "twins", the rest replicated.

    With several processes the mesh spans them all; `device_put` then takes each
    process's shards from its own copy of `tree`, which must be the same
    everywhere (it is: init and data are functions of the config alone).
    """

    def put(x):
        spec = P("twins") if twin_axis and np.ndim(x) > 0 else P()
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree.map(put, tree)


def initial_state_and_data(
    config: ml_collections.ConfigDict,
    run: run_lib.Run,
    mesh: jax.sharding.Mesh,
    tx: optax.GradientTransformation,
) -> tuple[checkpoints.TwinState, jax.Array]:
    """The TwinState at step 0 (optimizer state from `tx`, the one the training
    chunk updates with) and the twins' data [K, n, ...], placed on `mesh`."""
    example = run.train[0, :1]
    example = setting_lib.of(run.kind).encode(example, getattr(run.model, "num_symbols", None))
    # With one twin device the twin axis stays unsharded: the step returns P()
    # shardings, and inputs sharded P("twins") would make its second call retrace.
    twin_axis = config.training.twin_devices > 1
    state = init_state(config, run.model, example, tx)
    state = place(state, mesh, twin_axis=twin_axis)
    state = state.replace(step=jax.device_put(state.step, NamedSharding(mesh, P())))
    data = place(jnp.asarray(run.train), mesh, twin_axis=twin_axis)
    return state, data
