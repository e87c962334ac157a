"""What every entry point shares: quiet library logs, clear config errors."""

import logging as std_logging
import sys

from absl import logging


class _DropLibraryInfo(std_logging.Filter):
    """Drops INFO records of Orbax, which logs every step of every save."""

    def filter(self, record):
        return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def setup_logging():
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_DropLibraryInfo())


def exit_on_config_error(fn, *args):
    """Runs fn(*args); a ConfigError ends the program with its message alone."""
    from diffusion_bias.train import ConfigError

    try:
        return fn(*args)
    except ConfigError as err:
        print(f"Config error: {err}", file=sys.stderr)
        sys.exit(2)
