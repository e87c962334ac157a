"""Where the analysis's time goes, per snapshot, against the training it audits.

Run from the repository root:  python -m benchmarks.analysis_profile [digits] [grammar]

For each embedded setting (configs/digits_cpu.py, configs/grammar_cpu.py), on
the run's real data and an initialised snapshot (the cost of every stage is
the same for any parameter values): each stage of `Instrument.compute` timed
alone, then the whole call, best of 2 after a first call that compiles; the
once-per-analysis stages (the grammar's U-turn and KL along t, at the onset
and the test-loss minimum: 2 snapshots); the summary and verdict over S
snapshots (their bootstraps); and one training step, timed in the same
process. The last lines estimate a whole analysis, S snapshots x the whole
call + 2 x the once-per-analysis stages + the summary, against N steps x the
step (refinement, which adds snapshots and replays training, excluded). Every
line ends with the load: the machine is shared, so read shares and ratios.
"""

import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks import monitor as monitor_bench
from benchmarks import timing
from configs import digits_cpu
from configs import grammar_cpu
from diffusion_bias import run as run_lib
from diffusion_bias.instrument import measure
from diffusion_bias.instrument import summary
from diffusion_bias.statistics import nearest
from diffusion_bias.statistics import quality
from diffusion_bias.statistics import sample_split

SETTINGS = {"digits": digits_cpu, "grammar": grammar_cpu}


def _first_and_best(fn, repeats=2):
    """(seconds of the first call, compilation included; best of `repeats` later calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    return first, timing.best_time(lambda: jax.block_until_ready(fn()), repeats)


def profile(name):
    """Prints the per-snapshot profile of setting `name`; returns {stage: seconds}."""
    config = SETTINGS[name].get_config()
    with tempfile.TemporaryDirectory() as workdir:
        run = run_lib.prepare(config, workdir)
        inst = measure.Instrument(config, workdir)
    holder, train_chunk = monitor_bench.training(config, run)
    train_chunk()  # compiles
    step = timing.best_time(train_chunk) / config.training.steps_per_call
    snapshot = holder["state"]
    stacked = snapshot.evaluated_params()
    params = [jax.tree.map(lambda x, k=k: x[k], stacked) for k in range(len(inst.train))]
    samples = inst.probe.samples(stacked)

    def loss_grid():
        probe = inst.probe
        for k, p in enumerate(params):
            probe.losses_of(p, np.asarray(probe.in_twin_space(inst.heldout, k)))
            probe.losses_of(p, probe.own_items[k])
            probe.losses_of(p, probe.partner_items[k])

    stages = {
        "coupled sampling": lambda: inst.probe.samples(stacked),
        "sample similarity": lambda: sample_split.pair_similarity(samples, inst.kind),
        "nearest neighbours": lambda: nearest.nearest_statistics(
            samples, inst.train, inst.heldout, inst.kind
        ),
        "loss grid (held-out, own, partner)": loss_grid,
        "membership losses (privacy time grid)": lambda: inst.membership_losses(params),
    }
    if inst.kind == "images":
        stages["sample quality (classifier)"] = lambda: [
            quality.classifier_confidence(inst.classifier, x) for x in samples
        ]
        stages["score cosine"] = lambda: inst._score_cosines(params)
    else:
        stages["grammaticality, twin KL, KL vs BP, loss decomposition"] = lambda: (
            inst._token_statistics(params, samples)
        )
    once = {}
    if inst.kind == "tokens":
        once = {
            "U-turn": lambda: inst.uturn(snapshot),
            "KL along t": lambda: inst.kl_along_t(snapshot),
        }

    first_call, whole = _first_and_best(lambda: inst.compute(snapshot))
    timed = {label: _first_and_best(fn)[1] for label, fn in stages.items()}
    timed_once = {label: _first_and_best(fn)[1] for label, fn in once.items()}
    per_step = inst.compute(snapshot)
    num_snapshots = len(run.snapshot_steps)
    steps = list(run.snapshot_steps)
    a_config = config  # the summary reads config.analysis and config.monitor
    _, summarize = _first_and_best(
        lambda: summary.summarize(a_config, steps, [per_step] * num_snapshots), repeats=1
    )

    print(f"{name}: one snapshot, {timing.load()}")
    for label, seconds in timed.items():
        print(f"  {label:<56} {seconds:8.3f} s  {seconds / whole:6.1%}")
    print(f"  {'whole Instrument.compute':<56} {whole:8.3f} s  (first call {first_call:.1f} s)")
    for label, seconds in timed_once.items():
        print(f"  {label + ' (2 snapshots an analysis)':<56} {seconds:8.3f} s")
    print(f"  {f'summary and verdict over {num_snapshots} snapshots':<56} {summarize:8.3f} s")
    analysis = num_snapshots * whole + 2 * sum(timed_once.values()) + summarize
    training = run.total_steps * step
    print(
        f"  estimate: analysis {num_snapshots} x {whole:.2f} s + once + summary = {analysis:.0f} s; "
        f"training {run.total_steps} steps x {step * 1e3:.2f} ms = {training:.0f} s; "
        f"analysis / training {analysis / training:.2f} {timing.load()}"
    )
    return dict(timed, whole=whole, first_call=first_call, step=step, **timed_once)


if __name__ == "__main__":
    for setting in [a for a in sys.argv[1:]] or list(SETTINGS):
        profile(setting)
