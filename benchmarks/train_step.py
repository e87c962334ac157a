"""Throughput of the twin training step, against one model at a time.

Run from the repository root:  python -m benchmarks.train_step

1. K twins stacked in one compiled step (`twin_steps.make_train_chunk`) against the
   same engine with num_splits=1, called once per twin, for the digits MLP
   (configs/digits_cpu.py) and the small grammar transformer
   (configs/grammar_cpu.py), each with the "vmap" and the "map" twin strategy.
   Both sides run the same steps_per_call; the ratio is measured in this
   process, the timed runs of the two sides interleaved, so that machine load
   cancels out (as far as it can).
   1b. The same with a CPU device per twin (`jax_num_cpu_devices`,
   twin_devices = num_devices = K), the layout `launch.reproduce` gives the
   grammar twins on a CPU, and with two twins per device.
   1c. Where one small step spends its time (`step_breakdown`: the digits MLP,
   the grammar_cpu transformer and 128 x 4), and the cost of the transformer's
   dropout masks, ours against flax's (`dropout_masks`).
2. The transformer step at the paper's size (512 x 8 layers x 4 heads, L=16,
   q=6, batch 512; K=1, one step per call) and at 128 x 4 layers: samples/s
   and achieved GFLOP/s, against a float32 matmul peak (jnp.dot of 2048x2048)
   measured in this process just before. FLOPs are XLA's cost analysis of the
   compiled step; a hand count of the matmuls (forward + backward = 3 x forward)
   is printed beside it. At the paper's size one step takes about 30 s on a
   2-core CPU, so only two single steps are timed there.

The data are synthetic items of each config's shape (the step's cost does not
depend on their values), placed on the mesh as `train.train_and_evaluate` does.
Compilation is excluded from the rates (reported separately); every line ends
with the 1-minute load average.
"""

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import timing
from configs import digits_cpu
from configs import grammar_cpu
from configs import grammar_paper
from diffusion_bias import models
from diffusion_bias import run as run_lib
from diffusion_bias.models import dropout as dropout_lib
from diffusion_bias.training import twin_steps

# Quoted, not measured here: the authors' torch code on this machine (steps/s).
TORCH_PAPER_SIZE = 0.04  # 512 x 8 layers, batch 512
TORCH_SMALL_SIZE = 1.1  # 128 x 4 layers, one thread


class _Engine:
    """A compiled chunk with its state and synthetic data; calling it runs one chunk."""

    def __init__(self, config, kind, item_shape, num_symbols=None, chunk=None):
        model_config = ml_collections.ConfigDict(config.model)
        if kind == "tokens":
            with model_config.unlocked():
                model_config.num_symbols = num_symbols
                model_config.length = item_shape[0]
        model = models.get_model(model_config)
        k, n = config.splits.num_splits, config.splits.split_size
        rng = np.random.default_rng(0)
        if kind == "tokens":
            data = rng.integers(0, num_symbols, (k, n, *item_shape), dtype=np.int32)
        else:
            data = rng.normal(size=(k, n, *item_shape)).astype(np.float32)
        mesh = twin_steps.make_mesh(config)
        # The trainer's own placement, on a run of these synthetic items.
        run = run_lib.Run(
            pool=None,
            twin_data=None,
            train=data,
            offsets=None,
            kind=kind,
            model=model,
            schedule=run_lib.get_schedule(config),
            steps_per_epoch=run_lib.steps_per_epoch(config),
            total_steps=None,
            snapshot_steps=None,
        )
        tx = twin_steps.get_optimizer(config)
        self.state, self.data = twin_steps.initial_state_and_data(config, run, mesh, tx)
        if chunk is None:
            chunk = twin_steps.make_train_chunk(
                config, model, run_lib.get_schedule(config), kind, mesh, tx
            )
        self.chunk = chunk

    def __call__(self):
        self.state, losses = self.chunk(self.state, self.data)
        jax.block_until_ready((self.state, losses))
        return losses


def _first_calls(engine):
    """Seconds of the first call (compile + one run) and of the second call."""
    start = time.perf_counter()
    engine()
    first = time.perf_counter() - start
    engine()
    return first, time.perf_counter() - start - first


def twins_against_singles(
    name,
    config_fn,
    kind,
    item_shape,
    num_symbols=None,
    calls=10,
    repeats=3,
    num_splits=None,
    **training,
):
    """Prints steps/s of K stacked twins and of K single-model engines run in turn.

    The single models run on one device; the twins as `training` lays them out
    (one device unless it says num_devices). When that is several devices, the
    same twins on one device are timed too, interleaved with the other two.
    """
    config = config_fn()
    config.training.update({"num_devices": 1, **training})
    if num_splits:
        config.splits.num_splits = num_splits
    num_twins = config.splits.num_splits
    twins = _Engine(config, kind, item_shape, num_symbols)
    compile_twins, second_twins = _first_calls(twins)
    laid_out = config.training.num_devices > 1
    if laid_out:
        together_config = config.copy_and_resolve_references()
        together_config.training.update(twin_devices=1, num_devices=1)
        together = _Engine(together_config, kind, item_shape, num_symbols)
        _first_calls(together)

    single_config = config_fn()
    single_config.training.update(training)
    single_config.training.update(twin_devices=1, num_devices=1)
    single_config.splits.num_splits = 1
    singles = [_Engine(single_config, kind, item_shape, num_symbols)]
    # One jitted chunk (same shapes) for every single model: it compiles once.
    singles += [
        _Engine(single_config, kind, item_shape, num_symbols, chunk=singles[0].chunk)
        for _ in range(num_twins - 1)
    ]
    compile_single, _ = _first_calls(singles[0])
    for engine in singles[1:]:
        engine()

    runs = [
        lambda: [twins() for _ in range(calls)],
        lambda: [[engine() for engine in singles] for _ in range(calls)],
    ]
    if laid_out:
        runs.append(lambda: [together() for _ in range(calls)])
    fast, base, *one_device = timing.best_times(runs, repeats)
    steps = calls * config.training.steps_per_call
    # A second jit cache entry means the second call re-traced (see the report).
    retraced = twins.chunk._cache_size() - 1
    where = config.training.num_devices
    print(
        f"{name} (K={num_twins} on {where} device(s), batch {config.training.batch_size}, "
        f"{config.training.steps_per_call} steps/call): twins {steps / fast:,.1f} steps/s; "
        f"{num_twins} single-model calls {steps / base:,.1f} steps/s; ratio {base / fast:.2f}x; "
        + (
            f"the same twins on one device {steps / one_device[0]:,.1f} steps/s, ratio "
            f"{one_device[0] / fast:.2f}x; "
            if laid_out
            else ""
        )
        + f"compile {compile_twins:.0f} s vs {compile_single:.0f} s; "
        f"{retraced} re-trace(s), 2nd call {second_twins:.2f} s {timing.load()}"
    )


def hand_flops(width, num_layers, length, num_symbols, batch, time_embed_dim=32):
    """Matmul FLOPs of one training step: 3 x the forward (backward ~ 2 x forward).

    Per sample and layer: Q, K, V and output projections 4 * 2LH^2, the
    feed-forward 2 * 2L(2H)H, scores and weighted values 2 * 2L^2H; plus the
    token, time and output embeddings.
    """
    layer = 16 * length * width**2 + 4 * length**2 * width
    forward = num_layers * layer + 4 * length * num_symbols * width + 2 * time_embed_dim * width
    return 3 * forward * batch


def transformer_step(width, num_layers, batch, calls, repeats, reference):
    """Prints samples/s and GFLOP/s of one transformer at L=16, q=6, K=1, one step a call.

    One step per call: XLA's cost analysis counts the body of a loop once.
    """
    config = grammar_paper.get_config()
    config.splits.update(num_splits=1, split_size=10 * batch)
    config.model.update(width=width, num_layers=num_layers)
    config.training.update(batch_size=batch, steps_per_call=1, num_devices=1)
    length, q = 16, 6
    engine = _Engine(config, "tokens", (length,), q)
    start = time.perf_counter()
    compiled = engine.chunk.lower(engine.state, engine.data).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla = cost.get("flops", float("nan")) if cost else float("nan")
    hand = hand_flops(width, num_layers, length, q, batch)
    engine.chunk = compiled
    peak = timing.matmul_peak() / 1e9
    step = timing.best_time(lambda: [engine() for _ in range(calls)], repeats) / calls
    print(
        f"transformer {width} x {num_layers} layers, batch {batch}: {1 / step:.3f} steps/s, "
        f"{batch / step:,.0f} samples/s; {xla / step / 1e9:.1f} GFLOP/s by XLA's count "
        f"({xla / 1e9:.1f} GFLOP/step), {hand / step / 1e9:.1f} by the hand count "
        f"({hand / 1e9:.1f} GFLOP/step); matmul peak just before {peak:.1f} GFLOP/s: "
        f"{xla / step / 1e9 / peak:.0%} of it (XLA count); compile {compile_s:.0f} s {timing.load()}"
    )
    print(f"  quoted, not measured here: the authors' torch code did {reference} steps/s")


def _backward(forward):
    """[(batch dims, M, K, N)] the dX and dW matmuls of the `forward` ones."""
    return [(b, m, n, k) for b, m, k, n in forward] + [(b, k, m, n) for b, m, k, n in forward]


def _transformer_chain(width, num_layers, length, num_symbols, batch, heads=4, time_dim=32):
    """[(batch dims, M, K, N)] the matmuls of one transformer training step."""
    tokens, d = batch * length, width // heads
    forward = [((), tokens, num_symbols, width), ((), batch, time_dim, width)]
    for _ in range(num_layers):
        forward += [((), tokens, width, width)] * 4  # Q, K, V, output projections
        forward += [((), tokens, width, 2 * width), ((), tokens, 2 * width, width)]
        forward += [((batch * heads,), length, d, length), ((batch * heads,), length, length, d)]
    forward.append(((), tokens, width, num_symbols))
    return forward + _backward(forward)


def _mlp_chain(width, depth, features, batch, time_dim=64):
    """[(batch dims, M, K, N)] the matmuls of one `MLPDenoiser` training step."""
    forward = [((), batch, time_dim, width), ((), batch, features, width)]
    forward += [((), batch, width, width)] * depth
    forward.append(((), batch, width, features))
    return forward + _backward(forward)


def _chain_fn(chain, steps):
    """A call that runs the matmuls of `chain` alone, `steps` times, on random operands."""
    rng = np.random.default_rng(1)
    operands = [
        (
            jnp.asarray(rng.normal(size=(*b, m, k)), jnp.float32),
            jnp.asarray(rng.normal(size=(*b, k, n)), jnp.float32),
        )
        for b, m, k, n in chain
    ]
    # `w + i` keeps XLA from hoisting the products out of the loop.
    matmuls = jax.jit(
        lambda ops: jax.lax.fori_loop(
            0, steps, lambda i, acc: acc + sum(jnp.sum(a @ (w + i)) for a, w in ops), 0.0
        )
    )
    return lambda: matmuls(operands).block_until_ready()


def step_breakdown(label, config, kind, item_shape, num_symbols, chain, steps, repeats):
    """Prints where one training step of one model (K=1, one device) spends its time.

    The same compiled loop of `steps` steps, cut down piece by piece: the full
    step (loss, gradient, Adam, EMA); without dropout (when the model has it);
    the loss and gradient alone; the loss alone; and the step's matmuls alone,
    with the shapes of the forward and backward passes (`chain`), on random
    operands. The pieces are compiled first, then timed interleaved
    (`timing.best_times`), so that a change of load hits all alike. What the
    matmuls do not explain is the step's elementwise rest: layer norms,
    activations, dropout, noise, the loss and the optimizer.
    """
    batch = config.training.batch_size
    config.splits.update(num_splits=1, split_size=batch)
    config.training.update(steps_per_call=steps, num_devices=1)
    rate = config.model.get("dropout_rate", 0.0)
    full = _Engine(config, kind, item_shape, num_symbols)
    calls = {"full": full}
    if rate > 0:
        config.model.dropout_rate = 0.0
        calls["no_dropout"] = _Engine(config, kind, item_shape, num_symbols)
        config.model.dropout_rate = rate
    model_config = ml_collections.ConfigDict(config.model)
    rng = np.random.default_rng(0)
    if kind == "tokens":
        with model_config.unlocked():
            model_config.update(num_symbols=num_symbols, length=item_shape[0])
        x0 = jnp.asarray(rng.integers(0, num_symbols, (batch, *item_shape)), jnp.int32)
        example = jax.nn.one_hot(x0[:1], num_symbols)
    else:
        x0 = jnp.asarray(rng.normal(size=(batch, *item_shape)), jnp.float32)
        example = x0[:1]
    model = models.get_model(model_config)
    params = model.init(jax.random.key(0), example, jnp.ones(1, jnp.int32), False)["params"]
    loss_fn = functools.partial(
        twin_steps.denoising_loss,
        model=model,
        schedule=run_lib.get_schedule(config),
        kind=kind,
        train=True,
    )

    def looped(body):
        # The results are summed so that XLA cannot drop the work.
        fn = jax.jit(lambda *a: jax.lax.fori_loop(0, steps, lambda i, acc: acc + body(i, *a), 0.0))
        return lambda: fn(params, x0).block_until_ready()

    def grad_body(i, p, x):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, jax.random.key(i))
        return loss + sum(jnp.sum(g) for g in jax.tree.leaves(grads))

    calls["grad"] = looped(grad_body)
    calls["forward"] = looped(lambda i, p, x: loss_fn(p, x, jax.random.key(i)))
    calls["matmul"] = _chain_fn(chain, steps)
    for call in calls.values():
        call()  # compiles
    times = dict(zip(calls, [t / steps for t in timing.best_times(list(calls.values()), repeats)]))
    step, matmul = times["full"], times["matmul"]
    flops = sum(2 * m * k * n * int(np.prod(b)) for b, m, k, n in chain)
    no_dropout = (
        f"without dropout {times['no_dropout'] / step:.0%} of it; " if "no_dropout" in times else ""
    )
    print(
        f"step breakdown, {label} (K=1, one device): full step {step * 1e3:.2f} ms; {no_dropout}"
        f"loss and gradient {times['grad'] / step:.0%}; loss alone {times['forward'] / step:.0%}; "
        f"its {len(chain)} matmuls alone {matmul / step:.0%} ({flops / matmul / 1e9:.1f} GFLOP/s; "
        f"the step {flops / step / 1e9:.1f}) {timing.load()}"
    )


def transformer_breakdown(width, num_layers, batch, steps=10, repeats=3):
    """`step_breakdown` of the grammar_cpu transformer at another width, depth and batch."""
    length, q = 16, 6
    config = grammar_cpu.get_config()
    config.model.update(width=width, num_layers=num_layers)
    config.training.batch_size = batch
    chain = _transformer_chain(width, num_layers, length, q, batch)
    label = f"transformer {width} x {num_layers}, batch {batch}"
    step_breakdown(label, config, "tokens", (length,), q, chain, steps, repeats)


def mlp_breakdown(steps=10, repeats=3):
    """`step_breakdown` of the digits MLP (configs/digits_cpu.py)."""
    config = digits_cpu.get_config()
    shape, m = (8, 8, 1), config.model
    chain = _mlp_chain(m.width, m.depth, int(np.prod(shape)), config.training.batch_size)
    label = f"digits MLP {m.width} x {m.depth}, batch {config.training.batch_size}"
    step_breakdown(label, config, "images", shape, None, chain, steps, repeats)


def dropout_masks(width, num_layers, batch, heads=4, length=16, repeats=5):
    """Prints the time of one training step's dropout masks: flax's draw against ours.

    Per layer and sequence: the attention weights (heads x L x L), the attention
    output and the feed-forward output (L x H each) and its hidden layer (L x 2H).
    flax.linen.Dropout draws `jax.random.bernoulli` (a float32 uniform, one
    threefry evaluation per element under jax_threefry_partitionable);
    `models.dropout.keep_mask` takes 16 bits a mask element (four per evaluation).
    """
    size = num_layers * batch * (heads * length**2 + 4 * length * width)
    key = jax.random.key(0)
    flax_draw = jax.jit(lambda k: jnp.sum(jax.random.bernoulli(k, 0.9, (size,))))
    ours = jax.jit(lambda k: jnp.sum(dropout_lib.keep_mask(k, 0.1, (size,))))
    for fn in (flax_draw, ours):
        fn(key).block_until_ready()
    base, fast = timing.best_times(
        [lambda f=f: f(key).block_until_ready() for f in (flax_draw, ours)], repeats
    )
    print(
        f"dropout masks of one {width} x {num_layers} step, batch {batch} ({size / 1e6:.1f}M "
        f"elements): models.dropout {fast * 1e3:.1f} ms, flax's bernoulli {base * 1e3:.1f} ms, "
        f"ratio {base / fast:.2f}x {timing.load()}"
    )


def twin_rows():
    """Sections 1, 1b and 1c of the module docstring."""
    # 1. K twins in one step against K single-model engines, same steps per call.
    digits = (digits_cpu.get_config, "images", (8, 8, 1))
    twins_against_singles("digits MLP, vmap", *digits, calls=10)
    twins_against_singles("digits MLP, map", *digits, calls=10, twin_strategy="map")
    grammar = (grammar_cpu.get_config, "tokens", (16,), 6)
    twins_against_singles("grammar_cpu transformer, vmap", *grammar, calls=2)
    twins_against_singles("grammar_cpu transformer, map", *grammar, calls=2, twin_strategy="map")

    # 1b. A CPU device per twin (launch.reproduce's layout for the grammar):
    # the devices share the cores, but each runs its own stream of small ops.
    own = dict(twin_devices=2, num_devices=2)
    if jax.device_count() < 2:
        print("one core: no rows with a CPU device per twin")
    else:
        twins_against_singles("digits MLP, a device per twin", *digits, calls=10, **own)
        twins_against_singles(
            "grammar_cpu transformer, a device per twin", *grammar, calls=2, **own
        )
        twins_against_singles(
            "grammar_cpu transformer, 2 twins per device", *grammar, calls=1, num_splits=4, **own
        )

    # 1c. Where the small step's time goes (what bounds it), and its dropout masks.
    mlp_breakdown()
    transformer_breakdown(64, 2, 100)
    transformer_breakdown(128, 4, 512, steps=4)
    dropout_masks(64, 2, 100)
    dropout_masks(128, 4, 512)


def main():
    # Before anything starts JAX: a CPU device per core, for the rows that lay
    # twins out one per device; every other row runs on one device. (More
    # devices than cores slow every row, the one-device rows too.)
    jax.config.update("jax_num_cpu_devices", os.cpu_count())
    print(
        f"devices: {jax.devices()}; jax_threefry_partitionable: "
        f"{jax.config.jax_threefry_partitionable}"
    )
    print(
        f"float32 matmul peak (2048x2048 jnp.dot): {timing.matmul_peak() / 1e9:.1f} GFLOP/s {timing.load()}"
    )
    twin_rows()

    # 2. The transformer step at a small size and at the paper's size (about 30 s a step).
    transformer_step(128, 4, 512, calls=4, repeats=2, reference=TORCH_SMALL_SIZE)
    transformer_step(512, 8, 512, calls=1, repeats=2, reference=TORCH_PAPER_SIZE)


if __name__ == "__main__":
    main()
