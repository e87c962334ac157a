"""A run from its config: every check of the config, and what the config describes.

`check_config` reports the first invalid field by name (`ConfigError`) before
any work, from the config alone (and a look at the data pool that writes
nothing), so that a launcher runs it before it touches the workdir.
`prepare` builds the run the config describes: the data pool, the twins' data,
the model, the diffusion schedule and the snapshot plan. Training, the bias
monitor, the analysis and the launchers all read a run from here; the config-only
parts (`steps_per_epoch`, `snapshot_steps`, `get_schedule`) need no data.
"""

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from diffusion_bias import checkpoints
from diffusion_bias import grammar as grammar_lib
from diffusion_bias import models
from diffusion_bias import stopping
from diffusion_bias.data import sources
from diffusion_bias.models import transformer
from diffusion_bias.diffusion import samplers
from diffusion_bias.diffusion import schedules


# ---------------------------------------------------------------------------
# Config checks: every bad value is reported by field name before any work.


class ConfigError(ValueError):
    """A config field has an invalid value; the message names the field."""


def _positive_int(config, path):
    value = _get(config, path)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"config.{path} must be a positive integer, got {value!r}")
    return value


def _get(config, path):
    for part in path.split("."):
        config = config[part]
    return config


def _choice(config, path, choices):
    value = _get(config, path)
    if value not in choices:
        raise ConfigError(f"config.{path} must be one of {sorted(choices)}, got {value!r}")
    return value


def _centering(config):
    # Runs saved before `centering` existed had a boolean `center` (pooled mean).
    return config.get("centering", "pooled" if config.get("center") else "none")


def _number_in(config, path, low, high, low_open=False, high_open=False):
    """The float at `path`, checked to lie in the interval low..high."""
    value = _get(config, path)
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)
    bad = bad or value < low or value > high or (low_open and value == low)
    bad = bad or (high_open and value == high)
    if bad:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"config.{path} must be a number in {interval}, got {value!r}")
    return value


def _check_data(config):
    """Checks the source name and fields of `config.data`, and that the schedule fits it."""
    data = config.data
    name = data.get("name")
    if name not in sources.FIELDS:
        raise ConfigError(f"config.data.name must be one of {sorted(sources.FIELDS)}, got {name!r}")
    required, optional = sources.FIELDS[name]
    unknown = sorted(set(data.keys()) - set(required) - set(optional) - {"name"})
    if unknown:
        raise ConfigError(
            f"config.data.{unknown[0]} is not a field of data source {name!r}; "
            f"its fields are {sorted(required + optional)}"
        )
    for field in required:
        if field not in data:
            raise ConfigError(f"config.data.{field} is needed by data source {name!r}")
    if name == "grammar":
        try:
            grammar_lib.random_grammar(
                q=data.q,
                depth=data.depth,
                sigma=data.sigma,
                q_eff=data.q_eff,
                seed=data.grammar_seed,
            )
        except ValueError as err:
            # The grammar's messages start with the argument's name; the seed is grammar_seed.
            message = str(err)
            message = "grammar_" + message if message.startswith("seed") else message
            raise ConfigError(f"config.data.{message}") from None
        _positive_int(config, "data.pool_size")
        if (
            isinstance(data.pool_seed, bool)
            or not isinstance(data.pool_seed, int)
            or (data.pool_seed < 0)
        ):
            raise ConfigError(
                f"config.data.pool_seed must be an integer >= 0, got {data.pool_seed!r}"
            )
    # The analysis reads the kind of data from the schedule.
    kind = {"grammar": "token", "digits": "image", "tfds": "image"}.get(name)
    if kind is not None and config.diffusion.schedule != kind:
        raise ConfigError(
            f"config.diffusion.schedule = {config.diffusion.schedule!r} does not fit "
            f"config.data.name = {name!r}; use {kind!r}"
        )
    if _centering(config) != "none" and config.diffusion.schedule == "token":
        raise ConfigError("config.centering applies to images only; use 'none'")


def _check_model(config):
    """Checks the name, fields and sizes of `config.model`."""
    name = config.model.get("name")
    if name not in models.MODELS:
        raise ConfigError(f"config.model.name must be one of {sorted(models.MODELS)}, got {name!r}")
    if (name == "transformer") != (config.diffusion.schedule == "token"):
        raise ConfigError(
            f"config.model.name = {name!r} does not fit config.diffusion.schedule = "
            f"{config.diffusion.schedule!r}: tokens take the transformer, images the others"
        )
    fields = {f.name: f for f in dataclasses.fields(models.MODELS[name])}
    # Set from the data by `prepare`, not by the config.
    from_data = {"num_symbols", "length"} if name == "transformer" else set()
    known = set(fields) - {"parent", "name"} - from_data
    unknown = sorted(set(config.model.keys()) - known - {"name"})
    if unknown:
        raise ConfigError(
            f"config.model.{unknown[0]} is not a field of model {name!r}; "
            f"its fields are {sorted(known)}"
        )
    for field in sorted(known):
        required = fields[field].default is dataclasses.MISSING
        if field not in config.model:
            if required:
                raise ConfigError(f"config.model.{field} is needed by model {name!r}")
            continue
        if field == "dropout_rate":
            _number_in(config, "model.dropout_rate", 0.0, 1.0, high_open=True)
        elif fields[field].type in (int, "int"):
            _positive_int(config, f"model.{field}")
    if name == "transformer" and config.model.get("param_init", "flax") not in transformer.INITS:
        raise ConfigError(
            f"config.model.param_init must be one of {list(transformer.INITS)}, got "
            f"{config.model.param_init!r}"
        )
    if name == "transformer" and config.model.width % config.model.num_heads:
        raise ConfigError(
            f"config.model.num_heads = {config.model.num_heads} must divide "
            f"config.model.width = {config.model.width}"
        )


def check_analysis(config):
    """Raises ConfigError naming the first invalid field of `config.analysis`."""
    for path in (
        "analysis.num_samples",
        "analysis.loss_items",
        "analysis.loss_repeats",
        "analysis.uturn_items",
        "analysis.uturn_repeats",
        "analysis.kl_along_t_points",
        "analysis.decomposition_times",
        "analysis.bootstrap",
    ):
        _positive_int(config, path)
    steps = config.analysis.sampling_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(
            "config.analysis.sampling_steps must be 0 (the full chain) or a positive "
            f"integer, got {steps!r}"
        )
    seed = config.analysis.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"config.analysis.seed must be an integer >= 0, got {seed!r}")
    _number_in(config, "analysis.clip_x0", 0.0, np.inf)
    _number_in(config, "analysis.critical_ratio", 0.0, 1.0, low_open=True)
    _number_in(config, "analysis.min_grammatical", 0.0, 1.0)
    num_steps = config.diffusion.num_steps
    for path, low, high in (("score_times", 1, num_steps), ("uturn_ratios", 0.0, 1.0)):
        values = config.analysis[path]
        ok = isinstance(values, (list, tuple)) and len(values) > 0
        ok = ok and all(
            not isinstance(v, bool)
            and isinstance(v, int if path == "score_times" else (int, float))
            and low <= v <= high
            and v != 0
            for v in values
        )
        if not ok:
            raise ConfigError(
                f"config.analysis.{path} must be a non-empty tuple of "
                f"{'integers' if path == 'score_times' else 'numbers'} in "
                f"{'[1' if path == 'score_times' else '(0'}, {high}], got {values!r}"
            )


def data_pool_size(data):
    """Items of the pool `data` names, found without writing anything.

    The grammar pool's size is a field (sampling and caching it come later, in
    `prepare`); a tfds pool's is its data source's length; others are loaded
    without a cache directory.
    """
    if data.name == "grammar":
        return data.pool_size
    if data.name == "tfds":
        try:
            import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        except ImportError:
            raise ConfigError(
                "config.data.name = 'tfds' needs tensorflow-datasets: pip install -e '.[tfds]'"
            ) from None
        try:
            source = tfds.data_source(
                data.dataset, split=data.get("split", "train"), data_dir=data.get("data_dir")
            )
        except Exception as err:  # tfds raises many types for a missing data set.
            raise ConfigError(
                f"config.data.dataset = {data.dataset!r} cannot be read: {err}".splitlines()[0]
            ) from None
        max_items = data.get("max_items")
        return len(source) if max_items is None else min(len(source), max_items)
    try:
        return len(sources.load_pool(data))
    except ValueError as err:
        raise ConfigError(f"config.data: {err}") from None


def check_config(config, pool_size=None):
    """Raises ConfigError naming the first invalid field of `config`.

    Every check needs only the config (and, for the pool size, a look at the
    data that writes nothing), so that a launcher runs them all before it
    touches the workdir. `pool_size` (when the pool is loaded already) skips
    finding it.
    """
    for path in (
        "splits.num_splits",
        "splits.split_size",
        "training.batch_size",
        "training.num_epochs",
        "training.steps_per_call",
        "training.log_every_steps",
        "snapshots.num_snapshots",
        "snapshots.first_epoch",
        "snapshots.latest_every_steps",
        "diffusion.num_steps",
    ):
        _positive_int(config, path)
    _choice(config, "diffusion.schedule", {"image", "token"})
    _choice(config, "training.twin_strategy", {"vmap", "map"})
    _choice(config, "optimizer.schedule", {"constant", "paper"})
    _choice(config, "analysis.image_sampler", set(samplers.STEP_RULES))
    if _centering(config) not in sources.CENTERINGS:
        raise ConfigError(
            f"config.centering must be one of {list(sources.CENTERINGS)}, got "
            f"{_centering(config)!r}"
        )
    if not config.optimizer.learning_rate > 0:
        raise ConfigError(
            f"config.optimizer.learning_rate must be > 0, got {config.optimizer.learning_rate}"
        )
    if not 0 <= config.training.ema_decay < 1:
        raise ConfigError(
            f"config.training.ema_decay must be in [0, 1), got {config.training.ema_decay}"
        )
    n, batch = config.splits.split_size, config.training.batch_size
    if batch > n:
        raise ConfigError(
            f"config.training.batch_size = {batch} exceeds config.splits.split_size = {n}"
        )
    total = config.training.num_epochs * steps_per_epoch(config)
    if total % config.training.steps_per_call:
        raise ConfigError(
            f"config.training.steps_per_call = {config.training.steps_per_call} must divide "
            f"the {total} training steps (num_epochs * ceil(split_size / batch_size))"
        )
    if config.snapshots.first_epoch > config.training.num_epochs:
        raise ConfigError(
            f"config.snapshots.first_epoch = {config.snapshots.first_epoch} exceeds "
            f"config.training.num_epochs = {config.training.num_epochs}"
        )
    data_devices = jax.device_count() // config.training.twin_devices
    if jax.device_count() % config.training.twin_devices:
        raise ConfigError(
            f"config.training.twin_devices = {config.training.twin_devices} must divide "
            f"the {jax.device_count()} devices"
        )
    if config.training.twin_devices > 1 and config.training.twin_strategy != "vmap":
        raise ConfigError("config.training.twin_devices > 1 needs twin_strategy = 'vmap'")
    if config.splits.num_splits % config.training.twin_devices:
        raise ConfigError(
            f"config.training.twin_devices = {config.training.twin_devices} must divide "
            f"config.splits.num_splits = {config.splits.num_splits}"
        )
    if batch % data_devices:
        raise ConfigError(
            f"config.training.batch_size = {batch} must be divisible by the "
            f"{data_devices} data-parallel devices"
        )
    _check_monitor(config)
    if config.monitor.enabled and jax.process_count() > 1:
        raise ConfigError("config.monitor.enabled runs in single-process training only")
    if config.splits.num_splits < 2:
        raise ConfigError(
            f"config.splits.num_splits must be >= 2 (the statistics compare twins), "
            f"got {config.splits.num_splits}"
        )
    if config.splits.heldout_size < 2:
        raise ConfigError(
            f"config.splits.heldout_size must be >= 2 (test loss and membership AUC), "
            f"got {config.splits.heldout_size}"
        )
    epochs = config.snapshots.epochs
    if not isinstance(epochs, (list, tuple)) or not all(
        not isinstance(e, bool) and isinstance(e, int) and 1 <= e <= config.training.num_epochs
        for e in epochs
    ):
        raise ConfigError(
            f"config.snapshots.epochs must list epochs in [1, config.training.num_epochs = "
            f"{config.training.num_epochs}], got {epochs!r}"
        )
    _number_in(config, "optimizer.b1", 0.0, 1.0, high_open=True)
    _number_in(config, "optimizer.b2", 0.0, 1.0, high_open=True)
    _check_data(config)
    _check_model(config)
    check_analysis(config)
    if pool_size is None:
        pool_size = data_pool_size(config.data)
    needed = config.splits.num_splits * n + config.splits.heldout_size
    if needed > pool_size:
        raise ConfigError(
            f"config.splits: num_splits * split_size + heldout_size = {needed} exceeds "
            f"the {pool_size} items of the data pool"
        )


def _check_monitor(config):
    """Checks the fields of `config.monitor`."""
    m = config.monitor
    if m.stop not in stopping.RULES:
        raise ConfigError(
            f"config.monitor.stop must be one of {list(stopping.RULES)}, got {m.stop!r}"
        )
    for name in (
        "num_samples",
        "sampling_steps",
        "loss_items",
        "loss_repeats",
        "patience",
        "bootstrap",
    ):
        _positive_int(config, f"monitor.{name}")
    for name in ("auc_threshold", "memorized_threshold"):
        if not 0 <= m[name] <= 1:
            raise ConfigError(f"config.monitor.{name} must be in [0, 1], got {m[name]!r}")
    if m.stop != "none" and not m.enabled:
        raise ConfigError(f"config.monitor.stop = {m.stop!r} needs config.monitor.enabled = True")


# ---------------------------------------------------------------------------
# What the config describes: the schedules of diffusion, steps and snapshots; the run.


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """What a config describes, built by `prepare`.

    Attributes:
        pool: sources.Pool, the data pool the splits are drawn from.
        twin_data: sources.TwinData, the twins' splits and held-out items as drawn.
        train: [K, n, ...] what each twin trains on: its split minus its offset.
        offsets: [K, C] each twin's centring shift (images); None for tokens.
        kind: "images" or "tokens".
        model: the flax module each twin is an instance of.
        schedule: the diffusion schedule of training.
        steps_per_epoch: ceil(split_size / batch_size).
        total_steps: the training steps, num_epochs * steps_per_epoch.
        snapshot_steps: int64 [S] the planned snapshot steps (the last is total_steps).
    """

    pool: Any
    twin_data: Any
    train: np.ndarray
    offsets: Any
    kind: str
    model: Any
    schedule: Any
    steps_per_epoch: int
    total_steps: int
    snapshot_steps: np.ndarray


def get_schedule(config):
    """The diffusion schedule of `config.diffusion`."""
    if config.diffusion.schedule == "token":
        return schedules.token_schedule(config.diffusion.num_steps)
    return schedules.image_schedule(config.diffusion.num_steps)


def steps_per_epoch(config):
    """ceil(n / batch): an epoch visits every item once, its last batch partial."""
    return -(-config.splits.split_size // config.training.batch_size)


def snapshot_steps(config):
    """int64 [S] steps of the snapshots: explicit epochs, or the log-spaced plan."""
    spe, per_call = steps_per_epoch(config), config.training.steps_per_call
    total = config.training.num_epochs * spe
    if config.snapshots.epochs:
        steps = np.asarray(config.snapshots.epochs, np.int64) * spe
        steps = np.round(steps / per_call).astype(np.int64) * per_call
        return np.unique(np.clip(np.append(steps, total), per_call, total))
    return checkpoints.snapshot_plan(
        total, config.snapshots.num_snapshots, config.snapshots.first_epoch * spe, per_call
    )


def prepare(config, workdir):
    """The run `config` describes (a `Run`); the pool is cached in `workdir`."""
    pool = sources.load_pool(config.data, cache_dir=workdir)
    check_config(config, pool_size=pool.items.shape[0])
    twin_data = sources.make_twin_data(
        pool,
        config.splits.num_splits,
        config.splits.split_size,
        config.splits.heldout_size,
        config.splits.seed,
        config.splits.drop_overlap,
    )
    centering = _centering(config)
    train_items, offsets = twin_data.train, None
    if pool.kind == "images":
        # Twin k lives in its own space: its items minus offsets[k] (the paper's
        # authors centre each split, and its test set, by that split's mean).
        offsets = sources.twin_means(twin_data.train, centering)  # [K, C]
        if centering != "none":
            shift = sources.twin_offsets(offsets, train_items.ndim)
            train_items = (train_items - shift).astype(train_items.dtype)
    elif centering != "none":
        raise ConfigError("config.centering applies to images only; use 'none'")
    model_config = ml_collections.ConfigDict(config.model)
    if pool.kind == "tokens":
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
