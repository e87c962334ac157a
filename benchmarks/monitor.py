"""Cost of the bias monitor as a share of training time, on the embedded defaults.

Run from the repository root:  python -m benchmarks.monitor [digits] [grammar]
[num_samples=N ...] (config.monitor overrides)

For each setting (configs/digits_cpu.py, configs/grammar_cpu.py), on the run's
real data: the twins' compiled training chunk (`twin_steps.make_train_chunk`) and
the monitor that `launch.train` builds from `config.monitor`
(`monitor_run.build`). One training step costs `step` seconds and one monitor
call `call` seconds; a run of N steps with S snapshots spends N * step
training and S * call monitoring, so the monitor's share is
S * call / (N * step). The monitor is timed with a history of S snapshots
already seen (its bootstrap grows with the history, so this is its most
expensive call: the share is an upper bound). Timed runs of the two sides are
interleaved, best of 3, compilation excluded; every line ends with the load.
"""

import sys
import tempfile

import jax
import jax.numpy as jnp

from benchmarks import timing
from configs import digits_cpu
from configs import grammar_cpu
from diffusion_bias import run as run_lib
from diffusion_bias import setting
from diffusion_bias.training import monitor_run
from diffusion_bias.training import twin_steps

SETTINGS = {"digits": digits_cpu, "grammar": grammar_cpu}


def training(config, run):
    """({"state": the twins' TwinState}, train_chunk()): one compiled chunk of
    `config.training.steps_per_call` steps on the run's data, the state advanced in place."""
    kind, model = run.kind, run.model
    mesh = twin_steps.make_mesh(config)
    tx = twin_steps.get_optimizer(config)
    example = setting.of(kind).encode(
        run.twin_data.train[0, :1], getattr(model, "num_symbols", None)
    )
    holder = {"state": twin_steps.init_state(config, model, example, tx)}
    data = jnp.asarray(run.train)
    chunk = twin_steps.make_train_chunk(config, model, run.schedule, kind, mesh, tx)

    def train_chunk():
        holder["state"], losses = chunk(holder["state"], data)
        jax.block_until_ready(losses)

    return holder, train_chunk


def share(name, **overrides):
    """The monitor's share of training time for setting `name`, `config.monitor` overridden."""
    config = SETTINGS[name].get_config()
    with config.unlocked():
        config.monitor.update(enabled=True, **overrides)
    with tempfile.TemporaryDirectory() as workdir:
        run = run_lib.prepare(config, workdir)
    holder, train_chunk = training(config, run)
    monitor = monitor_run.build(config, run)
    plan = run.snapshot_steps
    epoch = iter(range(1, 10**9))

    def monitor_call():
        monitor(holder["state"].evaluated_params(), epoch=next(epoch))

    train_chunk()  # compiles
    for _ in range(len(plan) - 1):  # compiles, and fills the history
        monitor_call()
    chunk_time, call_time = timing.best_times([train_chunk, monitor_call])
    step_time = chunk_time / config.training.steps_per_call
    total = run.total_steps
    train_total, monitor_total = total * step_time, len(plan) * call_time
    print(
        f"{name} {overrides or ''}: training {total} steps x {step_time * 1e3:.2f} ms = {train_total:.0f} s; "
        f"monitor {len(plan)} snapshots x {call_time:.2f} s = {monitor_total:.1f} s; "
        f"share {monitor_total / train_total:.1%} of training {timing.load()}"
    )
    return monitor_total / train_total


if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if "=" not in a] or list(SETTINGS)
    overrides = dict(a.split("=") for a in sys.argv[1:] if "=" in a)
    for name in names:
        share(name, **{k: int(v) for k, v in overrides.items()})
