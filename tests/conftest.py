"""One persistent JAX compilation cache for the whole test session; the longest files first.

Many tests train or analyse the smoke config, in this process and in
subprocesses (`launch.train`, `launch.analyze`, two-process runs), compiling
the same functions again and again. A cache folder made for this session
(empty at its start, removed at its end, so no run leaks into the next) lets
each be compiled once; subprocesses inherit it through the environment.
Compilation changes no number: a cached executable is the same program.
"""

import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="diffusion_bias_jax_cache_")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)


def pytest_sessionfinish(session, exitstatus):
    del session, exitstatus
    shutil.rmtree(_CACHE, ignore_errors=True)


# The files that take longest (most of them a few tests behind minutes of
# training, analysis or subprocesses), heaviest first; the small rest follow.
# pytest-xdist hands out whole files (--dist loadfile), by default those with the
# most tests first, which left these few-test files to the end, one worker running
# one alone while the other idled. pytest.ini turns that order off; this one
# starts them first instead.
_LONGEST_FILES = (
    "test_analysis.py",
    "test_launch.py",
    "test_models.py",
    "test_train.py",
    "test_bp.py",
    "test_checkpoints.py",
    "test_uturn.py",
    "test_kl_bp.py",
    "test_loss_decomposition.py",
    "test_controlled.py",
    "test_monitor.py",
    "test_samplers.py",
    "test_readme.py",
    "test_epochs.py",
    "test_torch_init.py",
    "test_hamming.py",
    "test_figures.py",
    "test_multihost.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONGEST_FILES)}
    # A stable sort: within a file, the tests keep their order.
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
