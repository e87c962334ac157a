"""What every entry point shares: quiet logs, clear config errors, multi-process runs."""

import ast
import logging as std_logging
import os
import re
import signal
import sys

from absl import app
from absl import flags
from absl import logging
import jax

from diffusion_bias import files
from diffusion_bias.config import config_checks
from diffusion_bias.training import preemption

# A multi-process run starts the same command once per process. These flags, or
# the JAX_* variables of the same names, say where process 0 listens and who is who.
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, which all processes of a multi-process run connect to "
    "(default: $JAX_COORDINATOR_ADDRESS).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes of a multi-process run (default: $JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in 0..num_processes-1 (default: $JAX_PROCESS_ID)."
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process run, letting JAX detect from the cluster (Slurm, Open MPI, "
    "Cloud TPU, ...) whatever the three flags above and their variables leave unset.",
)


_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    None,
    "CPU devices JAX makes of this machine's cores (default: JAX's, one). With "
    "--cpu_devices=K --config.training.twin_devices=K --config.training.num_devices=K "
    "each of K twins trains on its own device, in parallel: on a CPU, small "
    "transformers train faster so (docs/speed.md).",
)


def set_cpu_devices(default=None):
    """Applies --cpu_devices (else `default`; None leaves JAX's one) before JAX starts."""
    count = _CPU_DEVICES.value if _CPU_DEVICES.value is not None else default
    if count is None:
        return
    if count < 1:
        raise app.UsageError(f"--cpu_devices must be at least 1, got {count}")
    # Only the CPU backend reads it: on an accelerator the CPU devices are unused.
    jax.config.update("jax_num_cpu_devices", count)


class _DropLibraryInfo(std_logging.Filter):
    """Drops INFO records of Orbax, which logs every step of every save.

    Also its warning that a directory is read only: the analysis opens the
    snapshots read-only on purpose.
    """

    def filter(self, record):
        if "orbax" not in record.pathname:
            return True
        if record.levelno < std_logging.WARNING:
            return False
        return not record.getMessage().startswith("Given directory is read only")


_DROP_LIBRARY_INFO = _DropLibraryInfo()


def setup_logging():
    logging.set_verbosity(logging.INFO)
    # On absl's logger, not its handler: in a notebook kernel (no absl.app) the
    # records reach the root logger's handlers instead.
    std_logging.getLogger("absl").addFilter(_DROP_LIBRARY_INFO)


def _config_error_exit(message):
    print(f"Config error: {message}", file=sys.stderr)
    sys.exit(2)


def unknown_field_exit(err, argv):
    """Ends the program on ml_collections' error for a field the locked config lacks.

    Args:
        err: the AttributeError or KeyError; its first line quotes the field,
            the next ones hint at the closest field name.
        argv: the command line, to name the flag that gave the field.
    """
    text = str(err)
    # KeyError's str is the repr of its message, nested once per re-raise.
    while text[:1] in "'\"":
        try:
            text = str(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            break
    lines = text.splitlines()
    missing = lines[0].strip("'\"")
    given = [
        arg.split("=")[0]
        for arg in argv[1:]
        if re.match(r"--?(config|analysis)\.", arg) and missing in arg.split("=")[0]
    ]
    flag = given[0] if given else f"--config.{missing}"
    hint = " ".join(lines[1:]) or _same_name_elsewhere(flag)
    _config_error_exit(f"{flag} names no field of the config. {hint}".strip())


def _same_name_elsewhere(flag):
    """'Did you mean ...?' naming the fields of the default config with the flag's last name."""
    from diffusion_bias import metric_writers
    from diffusion_bias.config import default_config

    prefix, *path = flag.lstrip("-").split(".")
    config = default_config.get_config()
    tree = config.analysis.to_dict() if prefix == "analysis" else config.to_dict()
    names = metric_writers.flat_hparams(tree)  # {dotted name: value}
    found = [f"--{prefix}.{n}" for n in names if path and n.split(".")[-1] == path[-1]]
    return f"Did you mean {' or '.join(found)}?" if found else ""


def parse_flags(argv):
    """absl's flag parsing (`app.run(main, flags_parser=parse_flags)`), with one-line errors.

    A --config.<field> or --analysis.<field> that the locked config lacks, or
    whose value does not parse, ends the program like a ConfigError (one
    line, status 2) instead of a traceback from ml_collections.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        if "Error whilst parsing config file" in str(err):
            # The config file's own error, at the end of the traceback absl quotes.
            flag = str(err).split(": Error whilst")[0].removeprefix("flag ")
            _config_error_exit(f"{flag}: {_last_line(str(err))}")
        if re.search(r"(config|analysis)\.", str(err)):
            _config_error_exit(str(err))
        # What absl's own parser does with every other flag error.
        print(f"FATAL Flags parsing error: {err}", file=sys.stderr)
        print("Pass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
        sys.exit(1)
    except (AttributeError, KeyError) as err:
        unknown_field_exit(err, argv)


def _last_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


def config_value(holder):
    """The value of a config-file flag; a file that cannot be loaded ends the program in one line.

    ml_collections defers a load failure to the first read of the value, as a
    traceback that quotes the OS error on its last line.
    """
    try:
        value = holder.value
        value.to_dict  # noqa: B018  (a config that failed to load raises on any attribute)
        return value
    except (OSError, ImportError, SyntaxError) as err:
        _config_error_exit(f"--{holder.name}: cannot load the config file: {_last_line(str(err))}")


def run(main):
    """`app.run(main)` with one-line errors: a usage error ends with its message and status 2.

    absl's own handling prints the module docstring before the message. A full
    disk ends with one line and status 75 (rerun to resume), not the storage
    library's traceback.
    """

    def guarded(argv):
        try:
            return main(argv)
        except app.UsageError as err:
            print(f"Usage error: {err} (flags: --helpshort)", file=sys.stderr)
            sys.exit(2)
        except Exception as err:
            full = files.disk_full(err)
            if full is None:
                raise
            where = "; ".join(getattr(err, "__notes__", []))
            print(
                f"Disk full{f' ({where})' if where else ''}: {_last_line(str(full))}. "
                "Every file is written whole, so nothing saved is lost: free some space "
                "and rerun the same command (training resumes from its latest checkpoint, "
                "the analysis reads what it cached).",
                file=sys.stderr,
            )
            sys.exit(preemption.PREEMPTED_EXIT_STATUS)

    app.run(guarded, flags_parser=parse_flags)


def interruptible(fn, *args, resume):
    """fn(*args), where SIGTERM or Ctrl-C ends the program with one line and status 75.

    For the stages whose work is kept as it goes (the analysis' per-snapshot
    cache): `resume` says what is kept and how to go on. The training installs
    its own handlers (`preemption.py`) while it runs, to save the step reached.
    """

    def interrupt(signum, frame):
        del frame
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        return fn(*args)
    except KeyboardInterrupt as err:
        print(f"{err or 'SIGINT'}: stopped. {resume}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # At once: an orderly shutdown would wait on, and report, the checkpoint
        # library's reads in flight. Nothing is lost: every cached file is written whole.
        os._exit(preemption.PREEMPTED_EXIT_STATUS)
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_on_config_error(fn, *args):
    """Runs fn(*args); a ConfigError, or a workdir busy with another run, ends the
    program with its message alone (status 2)."""
    try:
        return fn(*args)
    except config_checks.ConfigError as err:
        print(f"Config error: {err}", file=sys.stderr)
        sys.exit(2)
    except files.Busy as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)


def _from_env(name):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def maybe_initialize_distributed():
    """Calls `jax.distributed.initialize` when a multi-process run is asked for.

    Asked for means --distributed, or any of --coordinator_address,
    --num_processes, --process_id or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES,
    $JAX_PROCESS_ID (a flag wins over its variable). Must run before any JAX
    computation. Cross-process collectives on CPU use Gloo, jax 0.10's default
    for `jax_cpu_collectives_implementation`.

    Returns:
        Whether jax.distributed was initialised.

    Raises:
        app.UsageError: some but not all of the three settings are given, without
            --distributed to detect the rest.
    """
    address = _COORDINATOR_ADDRESS.value or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = _NUM_PROCESSES.value
    if num_processes is None:
        num_processes = _from_env("JAX_NUM_PROCESSES")
    process_id = _PROCESS_ID.value
    if process_id is None:
        process_id = _from_env("JAX_PROCESS_ID")
    settings = dict(coordinator_address=address, num_processes=num_processes, process_id=process_id)
    missing = [name for name, value in settings.items() if value is None]
    if not _DISTRIBUTED.value:
        if len(missing) == len(settings):
            return False
        if missing:
            # Without a cluster to detect them from, a partial setting would only
            # fail later inside JAX, or hang waiting for processes that never come.
            raise app.UsageError(
                f"A multi-process run needs --{', --'.join(missing)} (or the JAX_* "
                "variables), or --distributed to detect them from the cluster."
            )
    jax.distributed.initialize(**settings)
    logging.info(
        "Process %d of %d: %d local of %d devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def refuse_distributed(program):
    """Ends a single-process program that was given the multi-process flags.

    The analysis reads snapshots and writes its files from one process; the
    JAX_* variables alone are left alone, so that a job script exporting them
    for launch.train can run the analysis after it.

    Raises:
        app.UsageError: naming the flags given.
    """
    given = [
        f"--{flag.name}"
        for flag in (_COORDINATOR_ADDRESS, _NUM_PROCESSES, _PROCESS_ID)
        if flag.value is not None
    ] + (["--distributed"] if _DISTRIBUTED.value else [])
    if given:
        raise app.UsageError(
            f"{program} runs as one process and takes no {', '.join(given)}; "
            "train with several (launch.train), then run it once."
        )
