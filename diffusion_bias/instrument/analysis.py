"""Walks a run's snapshots and computes the bias statistics at each of them.

At each snapshot the instrument draws the coupled samples and evaluates the
twins; the statistics themselves are the pure functions of `statistics/`.
Per snapshot the results are cached in `analysis/cache/step_<S>_<tag>.npz`, so a
rerun after new snapshots computes only what is new. The tag digests the
analysis config and the snapshot's identity (the checksum saved with its
evaluated parameters; for a snapshot saved without one, the run's training
config and step), so statistics of one model are never read for another. A
damaged snapshot (`checkpoints.DamagedCheckpoint`) is named in the log, left
out, and listed in statistics.json under `damaged_snapshots`; the others are
analysed. `summary.summarize`
turns them into the curves and the verdict, written to
`analysis/statistics.json` (schema in `summary.STATISTICS_SCHEMA`); figures and
report read only that file.
"""

from collections.abc import Mapping
import hashlib
import json
import os
import time
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from diffusion_bias import checkpoints
from diffusion_bias import files
from diffusion_bias import metric_writers
from diffusion_bias import run as run_lib
from diffusion_bias.config import config_checks
from diffusion_bias.config import config_file
from diffusion_bias.config import default_config
from diffusion_bias.instrument import measure
from diffusion_bias.instrument import record as record_lib
from diffusion_bias.instrument import summary
from diffusion_bias.training import refine as refine_lib
from diffusion_bias import setting as setting_lib

# Bumped whenever the per-snapshot arrays change meaning, so old caches are not reused.
CACHE_VERSION = 5


def analysis_config(
    workdir: str, overrides: Mapping[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """The run's config with its analysis section (defaults where absent)."""
    saved = config_file.load_config(workdir)
    defaults = default_config.get_config()
    analysis = defaults.analysis.to_dict()
    analysis.update(saved.get("analysis", {}))
    analysis.update(overrides or {})
    saved["analysis"] = analysis
    # The stopping rules the report replays read the monitor's settings.
    saved["monitor"] = {**defaults.monitor.to_dict(), **saved.get("monitor", {})}
    return ml_collections.ConfigDict(saved)


def _cached(path, compute):
    """compute() -> dict of arrays, saved at `path`; read back on later calls."""
    result = _load_cached(path) if os.path.exists(path) else None
    if result is None:
        result = compute()
        with files.atomic_write(path, "wb") as f:
            np.savez(f, **result)
    return result


def _load_cached(path):
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as err:
        logging.warning("Cached statistics %s are unreadable (%s); recomputing.", path, err)
        return None


# Analysis fields that change which snapshots are analysed or how their arrays are
# aggregated into curves, not what one snapshot gives.
NOT_PER_SNAPSHOT = ("refine", "aggregate")


def _cache_tag(config, snapshot):
    """Cached files are valid for one analysis config and one snapshot: both name them."""
    fields = {k: v for k, v in config.analysis.to_dict().items() if k not in NOT_PER_SNAPSHOT}
    fingerprint = [CACHE_VERSION, fields, snapshot]
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:10]


def snapshot_identity(ckpts: checkpoints.TwinCheckpoints, step: int, training: str) -> str:
    """What identifies snapshot `step`: its evaluated parameters' checksum, if saved.

    A snapshot saved without checksums is identified by `training` (the run's
    `config_file.training_fingerprint`) and its step.
    """
    recorded = ckpts.recorded_checksums(step).get(ckpts.evaluated_field(step))
    return recorded or f"{training}:{step}"


def analyze(
    workdir: str,
    overrides: Mapping[str, Any] | None = None,
    output_dir: str | None = None,
    refine: bool | None = None,
) -> dict[str, Any]:
    """Computes the statistics of every snapshot of `workdir`, with a verdict.

    Args:
        workdir: a run's folder (config.json and checkpoints/ inside); only read.
        overrides: dict of analysis fields that replace the run's.
        output_dir: where analysis/ and tensorboard/analysis/ are written
            (default: `workdir`); another folder analyses a run one cannot write to.
        refine: also replay the training around the bias onset and the test-loss
            minimum with denser snapshots (`refine.py`, into output_dir/analysis/
            refine/) and locate both on the denser grid: statistics.json's
            `refined` entry. None: as `config.analysis.refine`.

    Returns:
        The statistics dict, also written to output_dir/analysis/statistics.json
        (undefined numbers as None: null in the file).
    """
    config = analysis_config(workdir, overrides)
    # The launcher checked the whole config; a caller of this function may not have.
    config_checks.check_analysis(config)
    output_dir = output_dir or workdir
    out_dir = os.path.join(output_dir, "analysis")
    cache_dir = os.path.join(out_dir, "cache")
    os.makedirs(cache_dir, exist_ok=True)
    # Read only: the training may still run and save; its complete snapshots are analysed.
    ckpts = checkpoints.TwinCheckpoints(workdir, run_lib.snapshot_steps(config), read_only=True)
    steps = ckpts.snapshot_steps()
    if not steps:
        raise ValueError(f"{workdir} holds no snapshots: train it first (launch.train)")
    walk = _Walk(config, workdir, ckpts, cache_dir)
    per_step, damaged = {}, []
    for i, step in enumerate(steps):
        try:
            per_step[step] = walk.record(i, step)
        except checkpoints.DamagedCheckpoint as err:
            logging.warning("%s; left out of the analysis.", err)
            damaged.append(dict(step=int(step), reason=err.reason))
    steps = list(per_step)
    if not steps:
        raise ValueError(f"every snapshot of {workdir} is damaged: {damaged}")
    stats = summary.summarize(config, steps, list(per_step.values()))
    spe = run_lib.steps_per_epoch(config)
    stats["damaged_snapshots"] = [dict(d, epoch=d["step"] / spe) for d in damaged]
    if setting_lib.of(stats["setting"]).exact_reference:
        # The U-turn is costly: run it where Fig. 5 looks, at the onset and the minimum.
        v = stats["verdict"]
        where = {v["bias_onset_index"], v["test_loss_min_index"]} - {None}
        indices = sorted(where or {len(steps) - 1})
        epochs = [stats["checkpoints"][i] for i in indices]
        uturns, kl_curves, randoms = [], [], []
        for i in indices:
            uturns.append(walk.at(i, steps[i], "uturn", "uturn"))
            # "kl_along_t2": its caches hold the divergences from exact BP too.
            kl_curves.append(walk.at(i, steps[i], "kl_along_t2", "kl_along_t"))
            if config.analysis.uturn_random_items:
                randoms.append(walk.at(i, steps[i], "uturn_random", "uturn_random"))
        stats["uturn"] = summary.uturn(config.analysis, indices, epochs, uturns)
        stats["kl_bp_along_t"] = summary.kl_along_t(kl_curves, indices, epochs)
        if randoms:
            stats["uturn_random"] = summary.uturn_random(config, indices, epochs, randoms)
    if config.analysis.refine if refine is None else refine:
        stats["refined"] = _refined(config, workdir, walk, per_step, stats, out_dir)
    ckpts.close()
    # Strict JSON, as every reader expects: an undefined number is null, not NaN.
    stats = files.finite_or_none(stats)
    with files.atomic_write(os.path.join(out_dir, "statistics.json")) as f:
        json.dump(stats, f, indent=1, allow_nan=False)
    metric_writers.write_analysis(stats, output_dir)
    return stats


# The entries of a summary over the refined grid that statistics.json keeps
# (grammatical_fraction: tokens only).
REFINED_ENTRIES = (
    "checkpoints", "steps", "test_loss", "test_loss_sem", "verdict", "nearest",
    "grammatical_fraction",
)  # fmt: skip


def _refined(config, workdir, walk, per_step, stats, out_dir):
    """The `refined` entry: the grid plus replayed snapshots around the two extrema.

    Each extremum's neighbourhood (the grid intervals on either side) is
    replayed from the snapshot before it, with `refine.refine_steps` new
    snapshots, which are analysed as any other (their cache keyed by their
    own checksums); the summary is then taken over the union of both grids.
    """
    v, steps = stats["verdict"], list(per_step)
    per_call = config.training.steps_per_call
    # One replay per stretch of training: neighbourhoods that overlap (the onset and
    # the minimum a snapshot or two apart) are replayed once, from the earlier start.
    regions = []
    for index in sorted({v["bias_onset_index"], v["test_loss_min_index"]} - {None}):
        start, new = refine_lib.refine_steps(steps, index, per_call)
        if regions and new and start < regions[-1][1][-1]:
            regions[-1] = (regions[-1][0], sorted(set(regions[-1][1]) | set(new)))
        elif new:
            regions.append((start, new))
    replays = []
    for start, new in regions:
        new = [s for s in new if s not in per_step]
        if not new:
            continue
        folder = os.path.join(out_dir, "refine", f"from_{start}")
        ckpts = refine_lib.replay(config, workdir, start, new, folder)
        walk.num_steps = len(per_step) + len(new)  # the log's "snapshot i/N"
        try:
            for step in new:
                per_step[step] = walk.record(len(per_step), step, ckpts)
        finally:
            ckpts.close()
        replays.append(dict(start=start, steps=new))
    if not replays:
        return None
    union = sorted(per_step)
    refined = summary.summarize(config, union, [per_step[s] for s in union])
    out = {k: refined[k] for k in REFINED_ENTRIES if k in refined}
    out["bias"] = summary.bias_curve(refined)
    out["replays"] = replays
    return out


class _Walk:
    """The snapshots' arrays, each computed once: read from the cache or by the instrument.

    The instrument (data, compiled functions) is built on the first snapshot
    the cache does not hold, so a rerun over cached snapshots builds nothing.
    """

    def __init__(self, config, workdir, ckpts, cache_dir):
        self.config, self.workdir, self.ckpts, self.cache_dir = config, workdir, ckpts, cache_dir
        self.training = config_file.training_fingerprint(config_file.load_config(workdir))
        self.instrument = None
        self.start = time.time()
        self.num_steps = len(ckpts.snapshot_steps())

    def record(self, index, step, ckpts=None) -> record_lib.SnapshotRecord:
        """The measurement (`Instrument.compute`) of snapshot `index` (at `step`), cached."""
        return record_lib.SnapshotRecord.from_arrays(self.at(index, step, "step", "compute", ckpts))

    def at(self, index, step, prefix, method, ckpts=None):
        """`Instrument.<method>(snapshot)` of snapshot `index` (at `step`), cached.

        `ckpts` holds the snapshot (default: the run's checkpoints).

        Raises:
            checkpoints.DamagedCheckpoint: the snapshot is needed and damaged.
        """
        ckpts = ckpts or self.ckpts

        computed = []

        def compute():
            computed.append(True)
            snapshot = ckpts.read_snapshot(step, evaluated_only=True)
            self.instrument = self.instrument or measure.Instrument(self.config, self.workdir)
            out = getattr(self.instrument, method)(snapshot)
            return out.arrays() if isinstance(out, record_lib.SnapshotRecord) else out

        identity = snapshot_identity(ckpts, step, self.training)
        path = os.path.join(
            self.cache_dir, f"{prefix}_{step}_{_cache_tag(self.config, identity)}.npz"
        )
        result = _cached(path, compute)
        logging.info(
            "%s of snapshot %d/%d (step %d) %s  %.0f s elapsed",
            method,
            index + 1,
            self.num_steps,
            step,
            "computed" if computed else "read from the cache",
            time.time() - self.start,
        )
        return result
