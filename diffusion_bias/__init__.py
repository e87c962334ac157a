"""Biased generalization in diffusion models: twin models, exact references, bias statistics.

The public API, what a user calls (README.md shows each in use; docs/ARCHITECTURE.md
how they connect):

    BiasMonitor   the bias statistics at every snapshot of a user's own training
                  loop, and a stopping rule's decision
    coupled       `coupled_samples`: the K twins sampled from the same noise;
                  `denoiser`: a Flax model as the sampler's denoise function
    statistics    the statistics of the paper, one pure function each, over
                  arrays (`nearest`, `sample_split`, `losses`, `quality`,
                  `score_cosine`, `privacy`; for the grammar, against exact BP:
                  `uturn`, `kl_bp`, `loss_decomposition`, `controlled`)
    diffusion     schedules, the forward process (`q_sample`), the ancestral
                  sampler, the exact and reference denoisers
    models        the Flax denoisers (`MODELS`: transformer, U-Net, MLP)
    grammar, bp   the random tree grammar (`random_grammar`, `sample`) and its
                  exact belief propagation (marginals, free energy, BP_k)
    data          the pools (grammar, digits, TFDS, a folder of images) and the
                  twins' disjoint splits
    setting       what differs between images and tokens (`setting.of(kind)`)
    run           `prepare`: the run a config describes
                  (data, model, schedule, snapshot plan)
    train         `train_and_evaluate(config, workdir)`: the twins, trained and
                  snapshotted (resumable)
    analysis      `analyze(workdir)`: every snapshot's statistics, then
                  workdir/analysis/statistics.json
    verdict       the bias onset against the test-loss minimum, and its wording
    figures       `draw_all(stats, out_dir)`: the figures of a statistics.json
    report        `write_report`: report.md over settings and seeds

Each is a module of its stage's folder (`config/`, `training/`, `instrument/`,
`exact/`, or a building block: `diffusion/`, `models/`, `statistics/`,
`kernels/`, `data/`, `figures/`), reachable here by its short name:
`diffusion_bias.train` is `diffusion_bias.training.train`.

The command lines (`python -m launch.train`, `launch.analyze`,
`launch.reproduce`) call `train`, `analysis`, `figures` and `report`.

Modules load on first use (`diffusion_bias.train` imports the training stack
only when touched), so `import diffusion_bias` stays as light as `BiasMonitor`
and importing the analysis never loads training.
"""

import importlib

from diffusion_bias.instrument.monitor import BiasMonitor

# Public short name -> module, relative to this package.
_MODULES = {
    "coupled": "diffusion.coupled",
    "statistics": "statistics",
    "diffusion": "diffusion",
    "models": "models",
    "grammar": "exact.grammar",
    "bp": "exact.bp",
    "data": "data",
    "setting": "setting",
    "run": "run",
    "train": "training.train",
    "analysis": "instrument.analysis",
    "verdict": "instrument.verdict",
    "figures": "figures",
    "report": "instrument.report",
}

__all__ = ["BiasMonitor", *_MODULES]


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{_MODULES[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
