"""A prepared accelerator check: a few minutes of the paper's controlled setting, extrapolated.

Run from the repository root on the machine with the accelerator (JAX for it installed):

    python -m benchmarks.accelerator --out=accelerator.json
    python -m benchmarks.accelerator --config.model.dtype=bfloat16   # mixed precision

Default config: `configs/grammar_paper.py:5000` (15 twins, transformer 512 x 8
layers, batch 512, 20,000 epochs of 10 steps, 25 snapshots, N = 50,000 samples
per model). On whatever devices JAX finds, it

1. counts FLOPs with XLA's cost analysis of the lowered programs (nothing run):
   one training step of the K twins, and one model's forward pass per sequence;
2. measures the matmul peak of the compute dtype in this process (a jitted
   jnp.dot of two 8192 x 8192 matrices; 2048 on a CPU);
3. trains the twins for --train_seconds after compilation, exactly as
   `launch.train` does (the same state, data placement and compiled chunk), and
   prints steps/s, achieved TFLOP/s, the MFU against that peak and the
   extrapolated time of the config's whole training (checkpoint writes not
   counted);
4. analyses the trained state as one snapshot, as `launch.analyze` does, with
   --num_samples coupled samples per model and the U-turn and KL along t on
   --uturn_items sequences x --uturn_repeats, and extrapolates to the config's
   protocol: sampling and nearest-neighbour search linear in N (the fixed
   parts of a snapshot scale with them, so this is an upper bound), the U-turn
   linear in sequences x repetitions and the KL along t in sequences, both at
   the two snapshots the analysis runs them at.

Each stage of the analysis is called twice and its second call timed: the
analysis compiles once for all snapshots. Every number printed is written to
--out as JSON. A check of the script itself on a CPU, in seconds:

    python -m benchmarks.accelerator --config=configs/smoke.py:grammar \\
        --train_seconds=2 --num_samples=32 --uturn_items=8 --uturn_repeats=1
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from benchmarks import timing
from diffusion_bias import run as run_lib
from diffusion_bias.config import config_checks
from diffusion_bias.instrument import measure as instrument_lib
from diffusion_bias.training import twin_steps

FLAGS = flags.FLAGS


def define_flags():
    """The command line; only when run as a program, so that tests can import this module."""
    config_flags.DEFINE_config_file(
        "config", "configs/grammar_paper.py:5000", "Experiment config file (a token setting)."
    )
    flags.DEFINE_float("train_seconds", 180.0, "Training time measured.")
    flags.DEFINE_integer("num_samples", 1000, "Coupled samples per model.")
    flags.DEFINE_integer("uturn_items", 100, "U-turn and KL-along-t sequences.")
    flags.DEFINE_integer("uturn_repeats", 4, "U-turn noise repetitions.")
    flags.DEFINE_string("workdir", None, "Pool cache folder (default: a temporary one).")
    flags.DEFINE_string("out", None, "Where to write the numbers as JSON.")


def step_flops(config, run, mesh, tx, state, data):
    """XLA's FLOP count of one training step of the K twins (a one-step chunk, lowered only)."""
    one = config.copy_and_resolve_references()
    with one.unlocked():
        one.training.steps_per_call = 1
    chunk = twin_steps.make_train_chunk(one, run.model, run.schedule, run.kind, mesh, tx)
    return float(chunk.lower(state, data).cost_analysis()["flops"])


def forward_flops(run, params, batch=64):
    """XLA's FLOP count of one model's forward pass, per sequence."""
    # Shapes are enough: the program is lowered, not run.
    single = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), params)
    shape = (batch, run.train.shape[-1], run.model.num_symbols)
    x = jnp.zeros(shape, jnp.float32)
    t = jnp.ones((batch,), jnp.int32)
    apply = jax.jit(lambda p, x, t: run.model.apply({"params": p}, x, t, False))
    return float(apply.lower(single, x, t).cost_analysis()["flops"]) / batch


def train_for(chunk, state, data, seconds, steps_per_call):
    """(state, steps/s, compile + first call s): calls `chunk` for `seconds` after the first."""
    start = time.perf_counter()
    state, losses = chunk(state, data)
    jax.block_until_ready(losses)
    first = time.perf_counter() - start
    calls, start, shown = 0, time.perf_counter(), time.perf_counter()
    # At least one timed call, however short `seconds`.
    while calls == 0 or time.perf_counter() - start < seconds:
        state, losses = chunk(state, data)
        calls += 1
        if time.perf_counter() - shown > 30:
            jax.block_until_ready(losses)
            shown = time.perf_counter()
            print(
                f"  training: {calls * steps_per_call} steps in {shown - start:.0f} s", flush=True
            )
    jax.block_until_ready((state, losses))
    elapsed = time.perf_counter() - start
    return state, calls * steps_per_call / elapsed, first


def timed(fn, *args):
    """(seconds of the first call, compilation included, seconds of the second)."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def duration(seconds):
    """seconds in the unit a person reads best: s, min, h or days."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def main(argv):
    del argv
    config = FLAGS.config
    config_checks.check_config(config)
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="accelerator_")
    run = run_lib.prepare(config, workdir)
    if run.kind != "tokens":
        raise app.UsageError("benchmarks.accelerator takes a token setting (grammar configs)")
    devices = jax.devices()
    dtype = jnp.dtype(config.model.get("dtype", "float32"))
    out = dict(
        devices=f"{len(devices)} x {devices[0].device_kind}",
        platform=devices[0].platform,
        config=dict(config.to_dict()),
        dtype=str(dtype),
    )
    print(f"devices: {out['devices']}; compute dtype {dtype}", flush=True)

    mesh = twin_steps.make_mesh(config)
    tx = twin_steps.get_optimizer(config)
    state, data = twin_steps.initial_state_and_data(config, run, mesh, tx)
    num_twins, batch = config.splits.num_splits, config.training.batch_size
    out["flops_per_step"] = step_flops(config, run, mesh, tx, state, data)
    out["forward_flops_per_sequence"] = forward_flops(run, state.params)
    size = 2048 if devices[0].platform == "cpu" else 8192
    out["matmul_peak_flops"] = timing.matmul_peak(size, dtype, calls=10)
    print(
        f"FLOPs (XLA): {out['flops_per_step']:.3e} per step of {num_twins} twins x batch "
        f"{batch}; {out['forward_flops_per_sequence']:.3e} per sequence and forward pass; "
        f"matmul peak {out['matmul_peak_flops'] / 1e12:.1f} TFLOP/s ({dtype}, {size}^2)",
        flush=True,
    )

    chunk = twin_steps.make_train_chunk(config, run.model, run.schedule, run.kind, mesh, tx)
    per_call = config.training.steps_per_call
    state, steps_per_s, first = train_for(chunk, state, data, FLAGS.train_seconds, per_call)
    achieved = steps_per_s * out["flops_per_step"]
    out.update(
        train_compile_and_first_call_s=first,
        train_steps_per_s=steps_per_s,
        train_flops_per_s=achieved,
        train_mfu=achieved / out["matmul_peak_flops"],
        total_steps=int(run.total_steps),
        train_total_s_extrapolated=run.total_steps / steps_per_s,
    )
    print(
        f"training: {steps_per_s:.2f} steps/s ({1e3 / steps_per_s:.1f} ms a step), "
        f"{achieved / 1e12:.2f} TFLOP/s, MFU {out['train_mfu']:.1%} of the measured peak; "
        f"compile + first call {duration(first)}; the config's {run.total_steps:,} steps: "
        f"{duration(out['train_total_s_extrapolated'])} (extrapolated)",
        flush=True,
    )
    reduced = dict(
        num_samples=FLAGS.num_samples,
        uturn_items=FLAGS.uturn_items,
        uturn_repeats=FLAGS.uturn_repeats,
    )
    peak, forward = out["matmul_peak_flops"], out["forward_flops_per_sequence"]
    out.update(analysis(config, workdir, state, run, peak, forward, **reduced))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(out, f, indent=1, default=str)
        print(f"wrote {os.path.abspath(FLAGS.out)}")


def analysis(
    config, workdir, state, run, peak, forward, *, num_samples, uturn_items, uturn_repeats
):
    """One snapshot's analysis at reduced sizes, timed, and extrapolated to the config's.

    `peak` is the matmul peak (FLOP/s), `forward` one forward pass's FLOPs per sequence.
    """
    full = config.analysis
    reduced = config.copy_and_resolve_references()
    with reduced.unlocked():
        reduced.analysis.num_samples = min(num_samples, full.num_samples)
        reduced.analysis.uturn_items = min(uturn_items, full.uturn_items)
        reduced.analysis.uturn_repeats = min(uturn_repeats, full.get("uturn_repeats", 1))
    r = reduced.analysis
    inst = instrument_lib.Instrument(reduced, workdir)
    first, steady = timed(inst.compute, state)
    _, t_uturn = timed(inst.uturn, state)
    _, t_kl = timed(inst.kl_along_t, state)
    num_snapshots = len(run.snapshot_steps)
    per_snapshot = steady * full.num_samples / r.num_samples
    uturn_scale = (
        full.uturn_items * full.get("uturn_repeats", 1) / (r.uturn_items * r.uturn_repeats)
    )
    extra = 2 * (t_uturn * uturn_scale + t_kl * full.uturn_items / r.uturn_items)
    chain = inst.sampling.num_steps
    sampling_flops = config.splits.num_splits * r.num_samples * chain * forward
    out = dict(
        analysis_reduced=dict(
            num_samples=r.num_samples, uturn_items=r.uturn_items, uturn_repeats=r.uturn_repeats
        ),
        snapshot_first_call_s=first,
        snapshot_s=steady,
        snapshot_sampling_mfu_lower_bound=sampling_flops / steady / peak,
        uturn_s=t_uturn,
        kl_along_t_s=t_kl,
        snapshot_s_extrapolated=per_snapshot,
        num_snapshots=num_snapshots,
        analysis_total_s_extrapolated=num_snapshots * per_snapshot + extra,
    )
    print(
        f"one snapshot at N={r.num_samples} per model ({chain}-step chain): {duration(steady)} "
        f"(first call, compiling, {duration(first)}); sampling MFU at least "
        f"{out['snapshot_sampling_mfu_lower_bound']:.1%}; U-turn {r.uturn_items} x "
        f"{r.uturn_repeats}: {duration(t_uturn)}; KL along t on {r.uturn_items}: "
        f"{duration(t_kl)}",
        flush=True,
    )
    print(
        f"extrapolated: {duration(per_snapshot)} a snapshot at N={full.num_samples}; "
        f"{num_snapshots} snapshots + U-turn and KL along t at two: "
        f"{duration(out['analysis_total_s_extrapolated'])} of analysis",
        flush=True,
    )
    return out


if __name__ == "__main__":
    define_flags()
    app.run(main)
