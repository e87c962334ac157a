"""Throughput of coupled sampling, against one twin and one reverse step at a time.

Run from the repository root:  python -m benchmarks.sampling

`coupled.coupled_samples` draws N samples from K=2 twins in one compiled call
(the reverse chain is a `lax.scan`, the twins a `vmap`). The baseline runs the
same chain for one twin at a time as a Python loop over the reverse steps: one
jitted step per call (the sampler's own `samplers.reverse_step`), its result
brought back to the host before the next one.
Both use the same start, noise and model, and their samples are compared.
Each figure is a ratio measured in this process, the timed runs of the two
sides interleaved, so that machine load cancels out (as far as it can);
compilation is excluded from the rates and reported separately. Every line ends
with the 1-minute load average.

The twins are freshly initialised (untrained): the cost does not depend on the
parameters' values. Each line gives the coupled sampler's achieved GFLOP/s (XLA's
count of one forward pass, times samples and steps) against a float32 matmul
peak (jnp.dot of 2048 x 2048) measured in this process.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from diffusion_bias import models
from diffusion_bias.diffusion import coupled
from diffusion_bias.diffusion import samplers
from diffusion_bias.diffusion import schedules


@functools.partial(jax.jit, static_argnames=("apply_fn", "parametrization", "clip_x0"))
def _reverse_step(params, schedule, x_t, i, key, item_ids, *, apply_fn, parametrization, clip_x0):
    """x_t -> x_{t-1} at step i for one twin: the sampler's own step, jitted alone."""
    denoise_fn = functools.partial(apply_fn, params)
    return samplers.reverse_step(
        denoise_fn, schedule, x_t, i, key, parametrization, clip_x0, item_ids
    )


def loop_samples(
    apply_fn, stacked_params, schedule, item_shape, num_samples, key, *, kind, clip_x0
):
    """Baseline: one twin at a time, one jitted reverse step per Python iteration."""
    parametrization = "x0" if kind == "tokens" else "eps"
    ids = jnp.arange(num_samples, dtype=jnp.int32)
    x_T = np.asarray(samplers.item_normal(jax.random.fold_in(key, 0), ids, item_shape))
    step_key = jax.random.fold_in(key, 1)
    out = []
    for k in range(jax.tree.leaves(stacked_params)[0].shape[0]):
        params = jax.tree.map(lambda p, k=k: p[k], stacked_params)
        x = x_T
        for i in range(schedule.num_steps, 0, -1):
            x = _reverse_step(
                params,
                schedule,
                x,
                np.int32(i),
                step_key,
                ids,
                apply_fn=apply_fn,
                parametrization=parametrization,
                clip_x0=clip_x0,
            )
            x = np.asarray(x)  # the per-step round trip to the host
        out.append(x.argmax(-1).astype(np.int32) if kind == "tokens" else x)
    return np.stack(out)


def compare(
    name, model, kind, schedule, item_shape, num_samples=512, clip_x0=None, twins=2, repeats=3
):
    """Prints samples/s of coupled sampling and of the per-twin, per-step loop."""
    example = jnp.zeros((1, *item_shape), jnp.float32)
    t = jnp.ones((1,), jnp.int32)
    keys = jax.random.split(jax.random.key(0), twins)
    stacked = jax.jit(jax.vmap(lambda k: model.init(k, example, t, train=False)["params"]))(keys)
    apply_fn = coupled.denoiser(model, kind)
    key = jax.random.key(1)
    run = functools.partial(
        coupled.coupled_samples,
        apply_fn,
        stacked,
        schedule,
        item_shape,
        num_samples,
        key,
        kind=kind,
        clip_x0=clip_x0,
    )
    start = time.perf_counter()
    fast_samples = run()
    compile_fast = time.perf_counter() - start

    loop = functools.partial(
        loop_samples,
        apply_fn,
        stacked,
        schedule,
        item_shape,
        num_samples,
        key,
        kind=kind,
        clip_x0=clip_x0,
    )
    start = time.perf_counter()
    loop_out = loop()
    compile_loop = time.perf_counter() - start
    fast, base = timing.best_times([run, loop], repeats)
    forward = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, False))
    single = jax.tree.map(lambda a: a[0], stacked)
    batch = jnp.zeros((64, *item_shape), jnp.float32)
    per_sample = forward.lower(single, batch, jnp.ones((64,), jnp.int32)).cost_analysis()
    flops = per_sample["flops"] / 64 * twins * num_samples * schedule.num_steps
    if kind == "tokens":
        agree = f"tokens equal: {np.mean(fast_samples == loop_out):.4f}"
    else:
        agree = f"max |difference|: {np.abs(fast_samples - loop_out).max():.1e}"
    n = twins * num_samples
    print(
        f"{name} (K={twins}, N={num_samples} per twin, {schedule.num_steps} steps): coupled "
        f"{n / fast:,.0f} samples/s; per-twin per-step loop {n / base:,.0f} samples/s; ratio "
        f"{base / fast:.1f}x; {agree}; first call {compile_fast:.1f} s vs {compile_loop:.1f} s; "
        f"{flops / fast / 1e9:.1f} GFLOP/s, {flops / fast / timing.matmul_peak():.0%} of the "
        f"matmul peak {timing.load()}"
    )


def main():
    print(
        f"devices: {jax.devices()}; jax_threefry_partitionable: "
        f"{jax.config.jax_threefry_partitionable}"
    )
    steps = 100

    # Setting 1, embedded: eps-MLP on 8x8 digits, as configs/digits_cpu.py.
    mlp = models.MLPDenoiser(width=256, depth=3)
    image = schedules.respace(schedules.image_schedule(1000), steps)
    compare("digits MLP 256 x 3", mlp, "images", image, (8, 8, 1), clip_x0=1.0, repeats=5)

    # Setting 2, embedded: the transformer of configs/grammar_cpu.py (L=16, q=6).
    small = models.TokenTransformer(num_symbols=6, length=16, width=64, num_layers=2, num_heads=4)
    token = schedules.respace(schedules.token_schedule(500), steps)
    compare("transformer 64 x 2 layers (L=16, q=6)", small, "tokens", token, (16, 6))

    # The 128 x 4 transformer at N=1000 per twin, on a 20-step chain (the cost
    # per step does not depend on the chain's length).
    medium = models.TokenTransformer(num_symbols=6, length=16, width=128, num_layers=4, num_heads=4)
    short = schedules.respace(schedules.token_schedule(500), 20)
    compare(
        "transformer 128 x 4 layers (L=16, q=6)", medium, "tokens", short, (16, 6), 1000, None, 2, 2
    )

    size = coupled._chunk._cache_size()
    print(f"coupled sampler: {size} compiled chunk(s) for the 2 models")


if __name__ == "__main__":
    main()
