"""One persistent JAX compilation cache for the whole test session.

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
