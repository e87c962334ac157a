"""The main job: train and analyse the embedded settings, then write a report.

    python -m launch.reproduce [--workdir=workdirs/reproduce] [--settings=digits,grammar]
        [--num_splits=2] [--seeds=0,1,2] [--cpu_devices=N]

Run from the repository root. Each setting trains its twins (configs/<name>_cpu.py),
analyses every snapshot and draws its figures; then W/report.md gathers the
verdicts, numbers and figures. Interrupted, the same command resumes: training
from its latest checkpoint, analysis from its per-snapshot cache.

On a CPU the grammar twins train each on its own CPU device, in parallel
(`cpu_layout`; --cpu_devices, by default one per twin, splits the cores into
that many JAX devices); the digits twins, too small to gain, share one.

Workdirs: without --seeds each setting runs once, with its config's seeds, in
W/<setting> (W/digits, W/grammar). With --seeds=S1,S2,... each setting runs once
per seed S, with both config.seed (initialisation, batches, training noise) and
config.splits.seed (which items each twin gets) set to S, in W/<setting>/seed<S>
(W/digits/seed0, W/digits/seed1, ...); the seeds run in the order given, every
setting for one seed before the next seed. W/report.md opens with a table of
every setting and seed, and says per setting in how many seeds the verdict is
conclusive.
"""

import copy
import importlib
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax

from diffusion_bias import figures
from diffusion_bias.config import config_checks
from diffusion_bias.instrument import analysis
from diffusion_bias.instrument import report
from diffusion_bias.instrument import verdict
from diffusion_bias.training import train
from launch import common

# --helpshort lists the shared flags (--cpu_devices, the distributed ones) too.
flags.adopt_module_key_flags(common)

SETTINGS = {"digits": "configs.digits_cpu", "grammar": "configs.grammar_cpu"}

# On a CPU, whether a setting's twins each train on their own CPU device
# (`cpu_layout`), as measured on the 2-core machine (benchmarks/train_step.py,
# docs/speed.md): the grammar transformer's twins faster so than on one device
# (its training stage 1.55x); the digits MLP's 0.8-1.1x over runs, within the
# noise, so it keeps one (and its statistics stay bit-identical).
TWIN_PER_CPU_DEVICE = {"digits": False, "grammar": True}

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/reproduce", "Folder of all outputs.")
_SETTINGS = flags.DEFINE_list("settings", list(SETTINGS), f"Settings among {list(SETTINGS)}.")
_NUM_SPLITS = flags.DEFINE_integer(
    "num_splits", None, "Twins per setting (default: the config's); more gives tighter intervals."
)
_SEEDS = flags.DEFINE_list(
    "seeds",
    None,
    "Seeds to run every setting with (config.seed and config.splits.seed), each in "
    "W/<setting>/seed<S>; default: once with the config's seeds, in W/<setting>.",
)


def parse_seeds(values):
    """[int] of the --seeds list, or None when not given.

    Raises:
        app.UsageError: a value that is not an integer, or a seed given twice
            (its two runs would share one workdir).
    """
    if values is None:
        return None
    try:
        seeds = [int(v) for v in values]
    except ValueError:
        raise app.UsageError(f"--seeds takes integers, got {','.join(values)}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise app.UsageError(f"--seeds takes distinct integers, got {','.join(values)}")
    return seeds


def runs(configs, seeds=None):
    """[(setting, seed, config, relative workdir)] of every run, in the order they run.

    Args:
        configs: {setting: config}.
        seeds: None for one run per setting with its config's seeds, in <setting>;
            else [int]: one run per setting and seed, with config.seed and
            config.splits.seed both set to the seed, in <setting>/seed<S>.
    """
    if seeds is None:
        return [(name, config.seed, config, name) for name, config in configs.items()]
    out = []
    for seed in seeds:
        for name, config in configs.items():
            config = copy.deepcopy(config)
            config.seed = seed
            config.splits.seed = seed
            out.append((name, seed, config, os.path.join(name, f"seed{seed}")))
    return out


def setting_configs(settings, num_splits=None):
    """{name: config} of the embedded settings, with `num_splits` twins if given."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise app.UsageError(f"Unknown settings {unknown}; choose among {list(SETTINGS)}")
    configs = {}
    for name in settings:
        config = importlib.import_module(SETTINGS[name]).get_config()
        if num_splits is not None:
            with config.unlocked():
                config.splits.num_splits = num_splits
        configs[name] = config
    return configs


def run(workdir, configs, seeds=None):
    """Trains, analyses and reports every {name: config}, once per seed; returns the report path.

    Shows progress wherever it is called from: a notebook has no `app.run` to
    set up logging, so this does.

    Args:
        workdir: the folder of all outputs (see the module docstring for its layout).
        configs: {setting: config}.
        seeds: None, or [int] (see `runs`).
    """
    common.setup_logging()
    sections, timings = [], {}
    todo = runs(configs, seeds)
    stages = len(todo) * 2
    for i, (setting, seed, config, rel_dir) in enumerate(todo):
        run_dir = os.path.join(workdir, rel_dir)
        name = setting if seeds is None else f"{setting}, seed {seed}"
        logging.info("[%d/%d] training the %s twins in %s", 2 * i + 1, stages, name, run_dir)
        start = time.time()
        train.train_and_evaluate(cpu_layout(setting, config), run_dir)
        timings[f"{name}: training"] = time.time() - start
        logging.info("[%d/%d] analysing the %s snapshots", 2 * i + 2, stages, name)
        start = time.time()
        # The config in hand rules the analysis, not the copy the training saved:
        # a run trained before an analysis option changed is read with the new one.
        stats = analysis.analyze(run_dir, overrides=config.analysis.to_dict())
        paths = figures.draw_all(stats, os.path.join(run_dir, "analysis"))
        timings[f"{name}: analysis"] = time.time() - start
        logging.info("%s: %s", name, verdict.final_sentence(stats))
        sections.append(report.Section(setting, seed_label(config), stats, paths, name))
    path = report.write_report(workdir, sections, timings)
    logging.info("Report: %s", path)
    return path


def cpu_layout(setting, config):
    """`config` laid out on this process's CPU devices (`TWIN_PER_CPU_DEVICE`).

    With several CPU devices (--cpu_devices) in one process, a setting whose
    twins gain runs twin k on device k (twin_devices = num_devices = K, if there
    are K devices); every other setting runs on one device, as a batch split
    over virtual devices of the same cores only adds synchronisation. On an
    accelerator, or with one device, `config` is returned as it is. The layout
    changes no number beyond float reassociation (tests/test_train.py).
    """
    k = config.splits.num_splits
    if jax.default_backend() != "cpu" or jax.process_count() > 1 or jax.device_count() == 1:
        return config
    config = copy.deepcopy(config)
    with config.unlocked():
        if TWIN_PER_CPU_DEVICE.get(setting) and jax.device_count() >= k:
            config.training.update(twin_devices=k, num_devices=k)
        else:
            config.training.update(twin_devices=1, num_devices=1)
    return config


def seed_label(config):
    """The seed a report row names: S, or "S (splits S')" when the two seeds differ."""
    if config.seed == config.splits.seed:
        return str(config.seed)
    return f"{config.seed} (splits {config.splits.seed})"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    common.setup_logging()
    seeds = parse_seeds(_SEEDS.value)
    configs = setting_configs(_SETTINGS.value, _NUM_SPLITS.value)
    # Before JAX starts: a CPU device per twin for the settings that gain
    # (cpu_layout), if there are cores enough; more devices than cores only slow.
    per_twin = [c.splits.num_splits for s, c in configs.items() if TWIN_PER_CPU_DEVICE.get(s)]
    wanted = max(per_twin, default=None)
    common.set_cpu_devices(default=wanted if wanted and wanted <= os.cpu_count() else None)
    common.refuse_distributed("launch.reproduce")
    # Every run's config is checked before the first one starts training.
    for _, _, config, _ in runs(configs, seeds):
        common.exit_on_config_error(config_checks.check_config, config)
    path = common.interruptible(
        common.exit_on_config_error,
        run,
        _WORKDIR.value,
        configs,
        seeds,
        resume=f"Training and analysis done so far are kept in {_WORKDIR.value}; "
        "rerun the same command to go on.",
    )
    print(path)


if __name__ == "__main__":
    common.run(main)
