"""Twin training: K models on K disjoint splits, trained as one computation.

The twins' parameters and optimizer states are stacked on a leading axis [K]
and updated by one jitted pure step (vmapped over K for dense models, a
sequential `lax.map` for convolutional ones, where vmapped weights become slow
grouped convolutions on CPU). The batch axis is sharded over the devices
present ("data"); with `vmap`, the twin axis can be sharded too ("twins").

Everything random is a function of (config.seed, split, step): the batch of
split k at step s is slice s % E of the permutation of epoch s // E (E =
ceil(n / B) steps per epoch, the last batch partial as in a torch DataLoader),
and its diffusion times, noise and dropout come from
fold_in(fold_in(key, k), s). A resumed run therefore replays exactly the same
stream, and ends with the same parameters as an uninterrupted one.

Several processes (after `jax.distributed.initialize`) run the same program on
one global mesh: each holds the full replicated data, all of them save the
checkpoints into the shared workdir, and process 0 alone writes the other files
and logs progress.

SIGTERM (preemption) stops the run at the next call boundary, after saving that
step: the process exits with status 75 (`checkpoints.PREEMPTED_EXIT_STATUS`) and
the same command resumes, to the same parameters as an uninterrupted run.
"""

import functools
import json
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

from diffusion_bias import checkpoints
from diffusion_bias import metric_writers
from diffusion_bias import monitor_run
from diffusion_bias import run as run_lib
from diffusion_bias.diffusion import process
from diffusion_bias.diffusion import samplers


# ---------------------------------------------------------------------------
# Pure pieces: optimizer, loss, one step, several steps.


def learning_rate_schedule(config):
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


def get_optimizer(config):
    """Adam with the configured learning-rate schedule (`learning_rate_schedule`)."""
    schedule = learning_rate_schedule(config)
    return optax.adam(schedule, b1=config.optimizer.b1, b2=config.optimizer.b2)


def denoising_loss(params, x0, key, weights=None, *, model, schedule, kind, train):
    """Mean denoising loss of one model on a batch, t uniform in 1..T.

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
    t = jax.random.randint(key_t, (x0.shape[0],), 1, schedule.num_steps + 1)
    clean = jax.nn.one_hot(x0, model.num_symbols) if kind == "tokens" else x0
    noise = samplers.standard_normal(key_noise, clean.shape, clean.dtype)
    x_t = process.q_sample(schedule, clean, t, noise)
    out = model.apply({"params": params}, x_t, t, train=train, rngs={"dropout": key_dropout})
    if kind == "tokens":
        per_item = optax.softmax_cross_entropy_with_integer_labels(out, x0)  # [B, L]
    else:
        per_item = (out - noise) ** 2  # [B, H, W, C]
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


def make_train_chunk(config, model, schedule, kind, mesh):
    """Returns chunk(state, data) -> (state, losses [S, K]) running S steps.

    `state` is a checkpoints.TwinState; `data` is [K, n, ...].
    """
    seed_key = jax.random.key(config.seed)
    keys = {"data": jax.random.fold_in(seed_key, 0), "noise": jax.random.fold_in(seed_key, 1)}
    loss_fn = functools.partial(
        denoising_loss, model=model, schedule=schedule, kind=kind, train=True
    )
    one = functools.partial(
        _twin_step,
        loss_fn=loss_fn,
        tx=get_optimizer(config),
        batch_size=config.training.batch_size,
        ema_decay=config.training.ema_decay,
        keys=keys,
        batch_sharding=NamedSharding(mesh, P("data")),
    )
    num_splits = config.splits.num_splits

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
                jnp.arange(num_splits),
                state.step,
                data,
            )
            new = checkpoints.TwinState(
                step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema
            )
            return new, losses

        return jax.lax.scan(body, state, None, length=config.training.steps_per_call)

    return jax.jit(chunk, donate_argnums=0)


def init_state(config, model, example, tx):
    """The TwinState at step 0: each twin initialised from its own key unless `shared_init`."""
    init_key = jax.random.fold_in(jax.random.key(config.seed), 2)
    num_splits = config.splits.num_splits
    if config.training.shared_init:
        keys = jnp.stack([init_key] * num_splits)
    else:
        keys = jax.vmap(lambda k: jax.random.fold_in(init_key, k))(jnp.arange(num_splits))
    t = jnp.ones((example.shape[0],), jnp.int32)
    params = jax.jit(jax.vmap(lambda k: model.init(k, example, t, train=False)["params"]))(keys)
    opt_state = jax.jit(jax.vmap(tx.init))(params)
    # A copy: donation would otherwise see the same buffers twice.
    ema = jax.tree.map(jnp.copy, params) if config.training.ema_decay > 0 else None
    return checkpoints.TwinState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, ema_params=ema
    )


def make_mesh(config):
    devices = np.asarray(jax.devices()).reshape(config.training.twin_devices, -1)
    return jax.sharding.Mesh(devices, ("twins", "data"))


# ---------------------------------------------------------------------------
# The run.


class _MetricWriter:
    """Appends one JSON object per logged step to workdir/metrics.jsonl."""

    def __init__(self, workdir):
        self._path = os.path.join(workdir, "metrics.jsonl")

    def write(self, step, **scalars):
        with open(self._path, "a") as f:
            f.write(json.dumps(dict(step=int(step), **scalars)) + "\n")


def _place(tree, mesh, twin_axis):
    """Puts arrays on the mesh: twin axis over "twins", the rest replicated.

    With several processes the mesh spans them all; `device_put` then takes each
    process's shards from its own copy of `tree`, which must be the same
    everywhere (it is: init and data are functions of the config alone).
    """

    def put(x):
        spec = P("twins") if twin_axis and np.ndim(x) > 0 else P()
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree.map(put, tree)


def train_and_evaluate(config, workdir):
    """Trains the twins of `config` in `workdir`, resuming what is there.

    Returns:
        The final checkpoints.TwinState.

    Raises:
        checkpoints.Preempted: (a SystemExit, status 75) on SIGTERM, once the
            step reached is saved; the same call resumes from it.
    """
    # Every check, the pool size included, before the first write into the workdir.
    run_lib.check_config(config)
    try:
        checkpoints.save_config(workdir, config)
    except ValueError as err:  # a resumed run with another config: the fields are named
        raise run_lib.ConfigError(str(err)) from None
    primary = jax.process_index() == 0
    run = run_lib.prepare(config, workdir)
    twin_data, kind, model, schedule = run.twin_data, run.kind, run.model, run.schedule
    if primary:
        np.savez(
            os.path.join(workdir, "splits.npz"),
            train=twin_data.splits.train,
            heldout=twin_data.splits.heldout,
        )

    mesh = make_mesh(config)
    tx = get_optimizer(config)
    example = run.train[0, :1]
    if kind == "tokens":
        example = jax.nn.one_hot(example, model.num_symbols)
    # With one twin device the twin axis stays unsharded: the step returns P()
    # shardings, and inputs sharded P("twins") would make its second call retrace.
    twin_axis = config.training.twin_devices > 1
    state = _place(init_state(config, model, example, tx), mesh, twin_axis=twin_axis)
    state = state.replace(step=jax.device_put(state.step, NamedSharding(mesh, P())))
    data = _place(jnp.asarray(run.train), mesh, twin_axis=twin_axis)

    spe = run.steps_per_epoch
    per_call = config.training.steps_per_call
    total = run.total_steps
    plan = run.snapshot_steps
    latest_every = -(-config.snapshots.latest_every_steps // per_call) * per_call
    # Saves at the planned steps (the last is `total`) and every `latest_every`.
    ckpts = checkpoints.TwinCheckpoints(workdir, plan, latest_every=latest_every)
    start, restored = ckpts.restore_newest(checkpoints.abstract(state))
    if restored is not None:
        state = restored
        if primary:
            logging.info("Resuming from step %d.", start)
    chunk = make_train_chunk(config, model, schedule, kind, mesh)
    writer = _MetricWriter(workdir)
    board = None
    if primary:
        board = metric_writers.Writer(os.path.join(workdir, "tensorboard", "train"))
        board.hparams(config.to_dict())
        lr_at = learning_rate_schedule(config)
    if primary:
        logging.info(
            "Training %d twins of %s for %d steps (%d epochs of %d steps) on %d "
            "device(s); %d snapshots planned.",
            config.splits.num_splits,
            type(model).__name__,
            total,
            config.training.num_epochs,
            spe,
            jax.device_count(),
            len(plan),
        )

    step, window_start, window_losses = start, time.time(), []
    window_step = start
    monitor = None
    # SIGTERM from here on: save the step reached, then raise Preempted (exit 75).
    preemption = checkpoints.PreemptionNotice.install()
    try:
        if config.monitor.enabled:
            done = monitor_run.stopped_result(workdir)
            if done is not None:
                logging.info("A %s rule already stopped this run: %s", done["rule"], done["reason"])
                return state
            monitor = monitor_run.build(config, run)
            monitor_run.restore(monitor, workdir, upto_epoch=start / spe)
            if monitor.kept_epoch is not None:
                # The rule had stopped, and the run ended before writing its result.
                _save_monitor_result(monitor, start, spe, ckpts, workdir)
                return state
            # Snapshots saved before a crash that the monitor had not yet seen.
            seen = monitor.rows[-1]["epoch"] * spe if monitor.rows else 0
            for missed in [int(s) for s in plan if seen < s <= start]:
                missed_state = state if missed == start else ckpts.read_snapshot(missed)
                if _monitor_stops(monitor, missed_state, missed, spe, ckpts, workdir, board):
                    return state
        while step < total:
            state, losses = chunk(state, data)
            if not (losses.is_fully_addressable or losses.is_fully_replicated):
                # Twins sharded over processes: every process needs all losses.
                losses = multihost_utils.process_allgather(losses, tiled=True)
            losses = np.asarray(jax.device_get(losses))  # [S, K]
            bad = ~np.isfinite(losses)
            if bad.any():
                s, k = np.argwhere(bad)[0]
                raise FloatingPointError(
                    f"non-finite training loss in split {k} at step {step + s + 1}; "
                    f"stopped without saving. The last good state is in "
                    f"{os.path.join(workdir, 'checkpoints')}."
                )
            step += per_call
            window_losses.append(losses)
            # Asked of every process at every call: with several, it is a collective.
            preempted = preemption.received() and step < total
            ckpts.save(step, state, force=preempted)
            if (
                monitor is not None
                and step in plan
                and _monitor_stops(monitor, state, step, spe, ckpts, workdir, board)
            ):
                break
            if step % config.training.log_every_steps < per_call or step == total:
                if primary:
                    elapsed = time.time() - window_start
                    rate = (step - window_step) / max(elapsed, 1e-9)
                    mean = np.concatenate(window_losses).mean(0)
                    # The rate of the window's last update (optax counts from 0).
                    lr = float(lr_at(step - 1) if callable(lr_at) else lr_at)
                    writer.write(
                        step,
                        epoch=step / spe,
                        train_loss=mean.tolist(),
                        steps_per_sec=rate,
                        learning_rate=lr,
                    )
                    board.scalars(step, metric_writers.training_scalars(mean, lr, rate))
                    logging.info(
                        "step %d/%d (epoch %d) train_loss %s  %.1f steps/s  ETA %s",
                        step,
                        total,
                        step // spe,
                        np.array2string(mean, precision=4),
                        rate,
                        _eta((total - step) / max(rate, 1e-9)),
                    )
                window_start, window_step, window_losses = time.time(), step, []
            if preempted:
                ckpts.wait_until_finished()
                if primary:
                    logging.warning(
                        "SIGTERM: saved step %d/%d in %s; exiting with status %d. "
                        "Rerun the same command to resume.",
                        step,
                        total,
                        os.path.join(workdir, "checkpoints"),
                        checkpoints.PREEMPTED_EXIT_STATUS,
                    )
                raise checkpoints.Preempted(step)
    finally:
        preemption.uninstall()
        ckpts.wait_until_finished()
        ckpts.close()
        if primary:
            board.close()
    return state


def _monitor_stops(monitor, state, step, spe, ckpts, workdir, board=None):
    """Runs the monitor on the snapshot at `step`; on a stop, saves the result. Stop?

    Its row goes to monitor.jsonl and, as monitor/<statistic> scalars at `step`,
    to the training TensorBoard `board`, beside the train loss.
    """
    start = time.time()
    row = monitor(state.evaluated_params(), epoch=step / spe)
    monitor_run.record(monitor, workdir)
    scalars = {k: v for k, v in row.items() if isinstance(v, float) and k not in ("epoch",)}
    if board is not None:
        board.scalars(step, {f"monitor/{k}": v for k, v in scalars.items() if k != "kept_epoch"})
    logging.info(
        "monitor at epoch %g: %s  (%.1f s)",
        row["epoch"],
        "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()),
        time.time() - start,
    )
    if row["decision"] != "stop":
        return False
    _save_monitor_result(monitor, step, spe, ckpts, workdir)
    return True


def _save_monitor_result(monitor, step, spe, ckpts, workdir):
    """Writes the stopped monitor's result (kept parameters, result.json) at `step`."""
    kept = monitor.kept_epoch
    kept_step = int(round(kept * spe)) if np.isfinite(kept) else None
    ckpts.wait_until_finished()
    kept_state = ckpts.read_snapshot(kept_step) if kept_step is not None else None
    monitor_run.save_result(workdir, monitor, kept_step, step, kept_state)
    logging.info(
        "Stopping at epoch %g (rule %s): %s; kept the snapshot at epoch %g.",
        step / spe,
        monitor.stop,
        monitor.reason,
        kept,
    )


def _eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
