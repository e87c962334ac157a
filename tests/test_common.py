"""launch/common.py: what the entry points' logging keeps and drops."""

import logging

from launch import common


def _kept(pathname, level, message):
    """Whether a record logged through absl's logger reaches a handler of the root logger."""
    common.setup_logging()
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        record = logging.LogRecord("absl", level, pathname, 1, message, None, None)
        logging.getLogger("absl").handle(record)
    finally:
        root.removeHandler(handler)
    return bool(seen)


def test_orbax_info_and_its_read_only_warning_are_dropped_on_every_handler():
    orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    assert not _kept(orbax, logging.INFO, "Created BasePyTreeCheckpointHandler")
    # The analysis opens snapshots read-only on purpose.
    assert not _kept(orbax, logging.WARNING, "Given directory is read only=/w/checkpoints")
    # Any other Orbax warning, and the package's own progress, are kept.
    assert _kept(orbax, logging.WARNING, "Checkpoint step 8 is incomplete")
    assert _kept("/repo/launch/reproduce.py", logging.INFO, "[1/2] training the digits twins")


def test_setting_up_logging_twice_adds_one_filter():
    common.setup_logging()
    common.setup_logging()
    filters = logging.getLogger("absl").filters
    assert sum(isinstance(f, common._DropLibraryInfo) for f in filters) == 1
