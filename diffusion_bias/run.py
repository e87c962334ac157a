"""A run from its config: what the config describes, once the config is checked.

`prepare` builds the run the config describes: the data pool, the twins' data,
the model, the diffusion schedule and the snapshot plan. Training, the bias
monitor, the analysis and the launchers all read a run from here; the config-only
parts (`steps_per_epoch`, `snapshot_steps`, `get_schedule`) need no data.
`config_checks.check_config`, the boundary, reports the first invalid field by
name (`ConfigError`) before any work, so that a launcher runs it before it
touches the workdir.
"""

import dataclasses

import flax.linen as nn
import ml_collections
import numpy as np

from diffusion_bias import checkpoints
from diffusion_bias import models
from diffusion_bias import setting as setting_lib
from diffusion_bias.config import config_checks
from diffusion_bias.data import pool as pool_lib
from diffusion_bias.data import sources
from diffusion_bias.diffusion import schedules

# ---------------------------------------------------------------------------
# What the config describes: the schedules of diffusion, steps and snapshots; the run.


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """What a config describes, built by `prepare`.

    Attributes:
        pool: the data pool the splits are drawn from.
        twin_data: the twins' splits and held-out items as drawn;
            with `splits.seeds_per_split` S > 1 its train holds a row per model,
            [M = K * S, n, ...], model m on split m // S.
        train: [M, n, ...] what each model (twin) trains on: its split minus its offset.
        offsets: [M, C] each model's centring shift (images); None for tokens.
        kind: "images" or "tokens".
        model: the flax module each twin is an instance of.
        schedule: the diffusion schedule of training.
        steps_per_epoch: ceil(split_size / batch_size).
        total_steps: the training steps, num_epochs * steps_per_epoch.
        snapshot_steps: int64 [S] the planned snapshot steps (the last is total_steps,
            unless `snapshots.include_last` is False).
    """

    pool: pool_lib.Pool
    twin_data: sources.TwinData
    train: np.ndarray
    offsets: np.ndarray | None
    kind: str
    model: nn.Module
    schedule: schedules.Schedule
    steps_per_epoch: int
    total_steps: int
    snapshot_steps: np.ndarray


def get_schedule(config: ml_collections.ConfigDict) -> schedules.Schedule:
    """The diffusion schedule of `config.diffusion`."""
    if config.diffusion.schedule == "token":
        return schedules.token_schedule(config.diffusion.num_steps)
    return schedules.image_schedule(config.diffusion.num_steps)


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """ceil(n / batch): an epoch visits every item once, its last batch partial."""
    return -(-config.splits.split_size // config.training.batch_size)


def snapshot_steps(config: ml_collections.ConfigDict) -> np.ndarray:
    """int64 [S] steps of the snapshots: explicit epochs, or the log-spaced plan.

    The last step is a snapshot too, unless explicit epochs come with
    `snapshots.include_last = False` (the grid is then those epochs alone; the
    training still saves its final state, outside the snapshots).
    """
    spe, per_call = steps_per_epoch(config), config.training.steps_per_call
    total = config.training.num_epochs * spe
    if config.snapshots.epochs:
        steps = np.asarray(config.snapshots.epochs, np.int64) * spe
        steps = np.round(steps / per_call).astype(np.int64) * per_call
        # Configs saved before the field had the last step among their snapshots.
        if config.snapshots.get("include_last", True):
            steps = np.append(steps, total)
        return np.unique(np.clip(steps, per_call, total))
    return checkpoints.snapshot_plan(
        total, config.snapshots.num_snapshots, config.snapshots.first_epoch * spe, per_call
    )


def prepare(config: ml_collections.ConfigDict, workdir: str | None) -> Run:
    """The run `config` describes (a `Run`); the pool is cached in `workdir`."""
    pool = sources.load_pool(config.data, cache_dir=workdir)
    # Training checked the device layout before; an analysis may run on other devices.
    config_checks.check_config(config, pool_size=pool.items.shape[0], devices=False)
    twin_data = sources.make_twin_data(
        pool,
        config.splits.num_splits,
        config.splits.split_size,
        config.splits.heldout_size,
        config.splits.seed,
        config.splits.drop_overlap,
        # Runs saved before the field existed were split the fixed way.
        config.splits.get("assignment", "fixed"),
    )
    seeds = config_checks.seeds_per_split(config)
    if seeds > 1:
        # The same split for S models, which differ by their keys (init, batches).
        twin_data = dataclasses.replace(twin_data, train=np.repeat(twin_data.train, seeds, axis=0))
    centering = config_checks.centering(config)
    train_items, offsets = twin_data.train, None
    setting = setting_lib.of(pool.kind)
    if not setting.discrete:
        # Twin k lives in its own space: its items minus offsets[k] (the paper's
        # authors centre each split, and its test set, by that split's mean).
        offsets = sources.twin_means(twin_data.train, centering)  # [K, C]
        if centering != "none":
            shift = sources.twin_offsets(offsets, train_items.ndim)
            train_items = (train_items - shift).astype(train_items.dtype)
    model_config = ml_collections.ConfigDict(config.model)
    if setting.discrete:
        with model_config.unlocked():
            model_config.num_symbols = pool.grammar.q
            model_config.length = pool.items.shape[1]
    spe = steps_per_epoch(config)
    return Run(
        pool=pool,
        twin_data=twin_data,
        train=train_items,
        offsets=offsets,
        kind=pool.kind,
        model=models.get_model(model_config),
        schedule=get_schedule(config),
        steps_per_epoch=spe,
        total_steps=config.training.num_epochs * spe,
        snapshot_steps=snapshot_steps(config),
    )
