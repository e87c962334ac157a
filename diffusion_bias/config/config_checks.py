"""Every check of a run's config: the first invalid field, reported by name.

`check_config` needs only the config (and, for the pool size, a look at the
data that writes nothing), so that a launcher runs it before it touches the
workdir. A `ConfigError` names the field (`config.<section>.<field>`) and the
value it got. These are the boundary: what the config passes on to training,
the monitor and the analysis is not checked again there. Every rule a config
obeys is in this one file.
"""

import dataclasses

import jax
import ml_collections
import numpy as np

from diffusion_bias import checks
from diffusion_bias import models
from diffusion_bias.data import image_folder
from diffusion_bias.data import sources
from diffusion_bias.data import splits as splits_lib
from diffusion_bias.diffusion import samplers
from diffusion_bias.exact import grammar as grammar_lib
from diffusion_bias.instrument import stopping
from diffusion_bias.instrument import verdict
from diffusion_bias.models import transformer
from diffusion_bias.models import unet


class ConfigError(ValueError):
    """A config field has an invalid value; the message names the field."""


# Fields that must be positive integers: (section, its fields), checked in this order.
_POSITIVE_INTS = (
    ("splits", "num_splits split_size"),
    ("training", "batch_size num_epochs steps_per_call log_every_steps"),
    ("snapshots", "num_snapshots first_epoch latest_every_steps"),
    ("diffusion", "num_steps"),
)
_MONITOR_POSITIVE_INTS = "num_samples sampling_steps loss_items loss_repeats patience bootstrap"
_ANALYSIS_POSITIVE_INTS = (
    "num_samples loss_items loss_repeats uturn_items uturn_repeats kl_along_t_points "
    "kl_items kl_repeats decomposition_times bootstrap privacy_bootstrap memorizing_items"
)
EVAL_CENTERINGS = ("own", "common")
_CHOICES = (
    ("diffusion.schedule", {"image", "token"}),
    ("training.twin_strategy", {"vmap", "map"}),
    ("optimizer.schedule", {"constant", "paper"}),
    ("analysis.image_sampler", set(samplers.STEP_RULES)),
)
# The kind of data each source gives, which the schedule must match (the
# analysis reads the kind of data from the schedule).
_SCHEDULE_OF_SOURCE = {"grammar": "token", "digits": "image", "tfds": "image"}


def centering(config: ml_collections.ConfigDict) -> str:
    """The centring of the images: "none", or one of `sources.CENTERINGS`."""
    # Runs saved before `centering` existed had a boolean `center` (pooled mean).
    return config.get("centering", "pooled" if config.get("center") else "none")


def seeds_per_split(config: ml_collections.ConfigDict) -> int:
    """config.splits.seeds_per_split (1 where a saved config lacks it)."""
    return config.splits.get("seeds_per_split", 1)


def num_models(config: ml_collections.ConfigDict) -> int:
    """The models trained: K splits times the seeds per split (twins where 1)."""
    return config.splits.num_splits * seeds_per_split(config)


def _get(config, path):
    for part in path.split("."):
        config = config[part]
    return config


def _positive_int(config, path):
    value = _get(config, path)
    if not checks.is_int(value) or value < 1:
        raise ConfigError(f"config.{path} must be a positive integer, got {value!r}")
    return value


def _non_negative_int(config, path):
    value = _get(config, path)
    if not checks.is_int(value) or value < 0:
        raise ConfigError(f"config.{path} must be an integer >= 0, got {value!r}")
    return value


def _choice(config, path, choices):
    value = _get(config, path)
    if value not in choices:
        raise ConfigError(f"config.{path} must be one of {sorted(choices)}, got {value!r}")
    return value


def _number_in(config, path, low, high, low_open=False, high_open=False):
    """The float at `path`, checked to lie in the interval low..high."""
    value = _get(config, path)
    bad = not checks.is_number(value) or not np.isfinite(value)
    bad = bad or value < low or value > high or (low_open and value == low)
    bad = bad or (high_open and value == high)
    if bad:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"config.{path} must be a number in {interval}, got {value!r}")
    return value


def check_config(
    config: ml_collections.ConfigDict, pool_size: int | None = None, devices: bool = True
) -> None:
    """Raises ConfigError naming the first invalid field of `config`.

    Every check needs only the config (and, for the pool size, a look at the
    data that writes nothing), so that a launcher runs them all before it
    touches the workdir. `pool_size` (when the pool is loaded already) skips
    finding it. `devices=False` skips the device layout (twin_devices,
    num_devices): it concerns training only, and a run may be analysed on
    another machine than the one it trained on.
    """
    for section, names in _POSITIVE_INTS:
        for name in names.split():
            _positive_int(config, f"{section}.{name}")
    for path, choices in _CHOICES:
        _choice(config, path, choices)
    if centering(config) not in sources.CENTERINGS:
        raise ConfigError(
            f"config.centering must be one of {list(sources.CENTERINGS)}, got {centering(config)!r}"
        )
    _check_training(config)
    if devices:
        _check_devices(config)
    _check_monitor(config)
    _check_splits(config)
    _number_in(config, "optimizer.b1", 0.0, 1.0, high_open=True)
    _number_in(config, "optimizer.b2", 0.0, 1.0, high_open=True)
    _check_data(config)
    _check_model(config)
    check_analysis(config)
    if pool_size is None:
        pool_size = data_pool_size(config.data)
    needed = config.splits.num_splits * config.splits.split_size + config.splits.heldout_size
    if needed > pool_size:
        raise ConfigError(
            f"config.splits: num_splits * split_size + heldout_size = {needed} exceeds "
            f"the {pool_size} items of the data pool"
        )


def _check_training(config):
    """The optimizer's rate, the EMA, and the steps: batches, calls, first snapshot."""
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
    # run.steps_per_epoch (run imports this module): ceil(n / batch).
    total = config.training.num_epochs * -(-n // batch)
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
    low = config.diffusion.get("min_train_step", 1)
    if not checks.is_int(low) or not 1 <= low <= config.diffusion.num_steps:
        raise ConfigError(
            f"config.diffusion.min_train_step must be an integer in [1, config.diffusion"
            f".num_steps = {config.diffusion.num_steps}], got {low!r}"
        )


def _num_devices(config):
    """The devices the run uses (config.training.num_devices, 0 = all), checked."""
    wanted = config.training.get("num_devices", 0)
    available = jax.device_count()
    if not checks.is_int(wanted) or not 0 <= wanted <= available:
        raise ConfigError(
            f"config.training.num_devices = {wanted!r} must be 0 (all) or at most the "
            f"{available} devices present"
        )
    if wanted and wanted != available and jax.process_count() > 1:
        raise ConfigError(
            "config.training.num_devices must be 0 (all devices) in a multi-process run"
        )
    return wanted or available


def _check_devices(config):
    """The mesh: twin devices divide the devices and the twins; data devices the batch."""
    twin_devices = config.training.twin_devices
    devices = _num_devices(config)
    data_devices = devices // twin_devices
    if devices % twin_devices:
        raise ConfigError(
            f"config.training.twin_devices = {twin_devices} must divide the {devices} devices"
        )
    if twin_devices > 1 and config.training.twin_strategy != "vmap":
        raise ConfigError("config.training.twin_devices > 1 needs twin_strategy = 'vmap'")
    if num_models(config) % twin_devices:
        raise ConfigError(
            f"config.training.twin_devices = {twin_devices} must divide the "
            f"{num_models(config)} models (config.splits.num_splits x seeds_per_split)"
        )
    batch = config.training.batch_size
    if batch % data_devices:
        raise ConfigError(
            f"config.training.batch_size = {batch} must be divisible by the "
            f"{data_devices} data-parallel devices"
        )


def _check_monitor(config):
    """Checks the fields of `config.monitor`, and that it runs in one process."""
    m = config.monitor
    if m.stop not in stopping.RULES:
        raise ConfigError(
            f"config.monitor.stop must be one of {list(stopping.RULES)}, got {m.stop!r}"
        )
    for name in _MONITOR_POSITIVE_INTS.split():
        _positive_int(config, f"monitor.{name}")
    for name in ("auc_threshold", "memorized_threshold", "tpr_threshold"):
        if not checks.is_number(m[name]) or not 0 <= m[name] <= 1:
            raise ConfigError(f"config.monitor.{name} must be in [0, 1], got {m[name]!r}")
    _number_in(config, "monitor.epsilon_threshold", 0.0, np.inf)
    if m.stop != "none" and not m.enabled:
        raise ConfigError(f"config.monitor.stop = {m.stop!r} needs config.monitor.enabled = True")
    if m.enabled and jax.process_count() > 1:
        raise ConfigError("config.monitor.enabled runs in single-process training only")


def _check_splits(config):
    """The twins (two at least), the held-out items, the explicit snapshot epochs."""
    # Runs saved before the field existed were split the fixed way.
    assignment = config.splits.get("assignment", "fixed")
    if assignment not in splits_lib.ASSIGNMENTS:
        raise ConfigError(
            f"config.splits.assignment must be one of {list(splits_lib.ASSIGNMENTS)}, "
            f"got {assignment!r}"
        )
    if config.splits.num_splits < 2:
        raise ConfigError(
            f"config.splits.num_splits must be >= 2 (the statistics compare twins), "
            f"got {config.splits.num_splits}"
        )
    if "seeds_per_split" in config.splits:
        _positive_int(config, "splits.seeds_per_split")
    if assignment == "contiguous" and config.splits.drop_overlap:
        raise ConfigError(
            "config.splits.assignment = 'contiguous' keeps the pool's blocks as they are: "
            "it needs config.splits.drop_overlap = False"
        )
    if seeds_per_split(config) > 1:
        if assignment == "coin":
            raise ConfigError(
                "config.splits.seeds_per_split > 1 needs config.splits.assignment 'fixed' "
                "or 'contiguous' (the one-run audit's coins deal each item to one model)"
            )
        if config.monitor.enabled:
            raise ConfigError(
                "config.splits.seeds_per_split > 1 is an offline control: it needs "
                "config.monitor.enabled = False"
            )
    if config.splits.heldout_size < 2:
        raise ConfigError(
            f"config.splits.heldout_size must be >= 2 (test loss and membership AUC), "
            f"got {config.splits.heldout_size}"
        )
    epochs, num_epochs = config.snapshots.epochs, config.training.num_epochs
    if not isinstance(epochs, (list, tuple)) or not all(
        checks.is_int(e) and 1 <= e <= num_epochs for e in epochs
    ):
        raise ConfigError(
            f"config.snapshots.epochs must list epochs in [1, config.training.num_epochs = "
            f"{num_epochs}], got {epochs!r}"
        )
    # Configs saved before the field had the last epoch among their snapshots.
    include_last = config.snapshots.get("include_last", True)
    if not isinstance(include_last, bool):
        raise ConfigError(f"config.snapshots.include_last must be a bool, got {include_last!r}")
    if not include_last and not epochs:
        raise ConfigError(
            "config.snapshots.include_last = False needs explicit config.snapshots.epochs "
            "(a log-spaced plan ends at the last epoch)"
        )


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
        _check_grammar(config)
    kind = _SCHEDULE_OF_SOURCE.get(name)
    if kind is not None and config.diffusion.schedule != kind:
        raise ConfigError(
            f"config.diffusion.schedule = {config.diffusion.schedule!r} does not fit "
            f"config.data.name = {name!r}; use {kind!r}"
        )
    if centering(config) != "none" and config.diffusion.schedule == "token":
        raise ConfigError("config.centering applies to images only; use 'none'")


def _check_grammar(config):
    """The grammar's generator and parameters (by drawing it), the pool's size and seed."""
    data = config.data
    # Absent in configs saved before the field: the grammar they drew.
    rng = data.get("grammar_rng", "default")
    if rng not in grammar_lib.GRAMMAR_RNGS:
        raise ConfigError(
            f"config.data.grammar_rng must be one of {grammar_lib.GRAMMAR_RNGS}, got {rng!r}"
        )
    try:
        grammar_lib.random_grammar(
            q=data.q,
            depth=data.depth,
            sigma=data.sigma,
            q_eff=data.q_eff,
            seed=data.grammar_seed,
            rng=rng,
        )
    except ValueError as err:
        # The grammar's messages start with the argument's name; the seed is grammar_seed.
        message = str(err)
        message = "grammar_" + message if message.startswith("seed") else message
        raise ConfigError(f"config.data.{message}") from None
    _positive_int(config, "data.pool_size")
    _non_negative_int(config, "data.pool_seed")


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
    # Set from the data by `run.prepare`, not by the config.
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
    if config.model.get("dtype", "float32") == "float16":
        # The authors' float16 autocast needs a dynamic loss scale (torch's
        # GradScaler); optax has none (only `apply_if_finite`, the skipping half).
        raise ConfigError(
            "config.model.dtype = 'float16' is not offered: float16 training needs a "
            "dynamic loss scale, which optax does not provide; use 'bfloat16' (float32's "
            "exponent range, no scaling needed) or 'float32'"
        )
    if config.model.get("dtype", "float32") not in models.DTYPES:
        raise ConfigError(
            f"config.model.dtype must be one of {list(models.DTYPES)}, got {config.model.dtype!r}"
        )
    inits = {"transformer": transformer.INITS, "unet": unet.INITS}.get(name)
    if inits and config.model.get("param_init", "flax") not in inits:
        raise ConfigError(
            f"config.model.param_init must be one of {list(inits)}, got {config.model.param_init!r}"
        )
    if name == "unet" and config.model.get("layout", "ddpm") not in unet.LAYOUTS:
        raise ConfigError(
            f"config.model.layout must be one of {list(unet.LAYOUTS)}, got {config.model.layout!r}"
        )
    if name == "transformer" and config.model.width % config.model.num_heads:
        raise ConfigError(
            f"config.model.num_heads = {config.model.num_heads} must divide "
            f"config.model.width = {config.model.width}"
        )


def check_analysis(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first invalid field of `config.analysis`."""
    for name in _ANALYSIS_POSITIVE_INTS.split():
        _positive_int(config, f"analysis.{name}")
    _non_negative_int(config, "analysis.decomposition_items")  # 0: every training item
    _non_negative_int(config, "analysis.score_items")  # 0: the held-out set, the loss grid's
    steps = config.analysis.sampling_steps
    if not checks.is_int(steps) or steps < 0:
        raise ConfigError(
            "config.analysis.sampling_steps must be 0 (the full chain) or a positive "
            f"integer, got {steps!r}"
        )
    num_steps = config.get("diffusion", {}).get("num_steps")
    if checks.is_int(num_steps) and steps > num_steps:
        raise ConfigError(
            f"config.analysis.sampling_steps={steps} exceeds the chain's "
            f"T = config.diffusion.num_steps = {num_steps}: at most {num_steps} (or 0, the "
            "full chain)"
        )
    _non_negative_int(config, "analysis.seed")
    _non_negative_int(config, "analysis.uturn_random_items")
    _non_negative_int(config, "analysis.test_loss_items")
    _non_negative_int(config, "analysis.eval_centering_items")
    _choice(config, "analysis.eval_centering", EVAL_CENTERINGS)
    if not isinstance(config.analysis.test_loss_every_step, bool):
        raise ConfigError(
            "config.analysis.test_loss_every_step must be True or False, got "
            f"{config.analysis.test_loss_every_step!r}"
        )
    # How the verdict's curves aggregate twins and pairs; saved configs without the field: the mean.
    aggregate = config.analysis.get("aggregate", "mean")
    if aggregate not in verdict.AGGREGATES:
        raise ConfigError(
            f"config.analysis.aggregate must be one of {list(verdict.AGGREGATES)}, got {aggregate!r}"
        )
    _number_in(config, "analysis.clip_x0", 0.0, np.inf)
    _number_in(config, "analysis.critical_ratio", 0.0, 1.0, low_open=True)
    _number_in(config, "analysis.min_grammatical", 0.0, 1.0)
    if not isinstance(config.analysis.get("refine", False), bool):
        raise ConfigError(
            f"config.analysis.refine must be True or False, got {config.analysis.refine!r}"
        )
    _number_in(config, "analysis.privacy_confidence", 0.0, 1.0, low_open=True, high_open=True)
    _number_in(config, "analysis.privacy_delta", 0.0, 1.0, low_open=True)
    num_steps = config.diffusion.num_steps
    # (field, its values are integers?, its interval (low, high], both excluding 0)
    for path, integers, low, high in (
        ("score_times", True, 1, num_steps),
        ("uturn_ratios", False, 0.0, 1.0),
        ("uturn_random_ratios", False, 0.0, 1.0),
        ("privacy_times", False, 0.0, 1.0),
    ):
        values = config.analysis[path]
        is_value = checks.is_int if integers else checks.is_number
        ok = isinstance(values, (list, tuple)) and len(values) > 0
        ok = ok and all(is_value(v) and low <= v <= high and v != 0 for v in values)
        if not ok:
            raise ConfigError(
                f"config.analysis.{path} must be a non-empty tuple of "
                f"{'integers' if integers else 'numbers'} in "
                f"{'[1' if integers else '(0'}, {high}], got {values!r}"
            )


def data_pool_size(data: ml_collections.ConfigDict) -> int:
    """Items of the pool `data` names, found without writing anything.

    The grammar pool's size is a field (sampling and caching it come later, in
    `run.prepare`); a tfds pool's is its data source's length; others are
    loaded without a cache directory.
    """
    if data.name == "grammar":
        return data.pool_size
    if data.name == "tfds":
        return _tfds_pool_size(data)
    if data.name == "image_folder":
        return _folder_pool_size(data)
    try:
        return len(sources.load_pool(data))
    except ValueError as err:
        raise ConfigError(f"config.data: {err}") from None


def _folder_pool_size(data):
    path = data.get("path") or ""
    if not path:
        raise ConfigError(
            "config.data.path must name the folder of images (CelebA: its img_align_celeba/), "
            "e.g. --config.data.path=/data/celeba/img_align_celeba"
        )
    try:
        num_files = len(image_folder.image_files(path))
    except ValueError as err:
        raise ConfigError(f"config.data.path: {err}") from None
    max_items = data.get("max_items")
    return num_files if max_items is None else min(num_files, max_items)


def _tfds_pool_size(data):
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
