"""Files written whole or not at all: every file the package writes goes through here.

A reader (a resumed run, a concurrent `launch.analyze`, the next pool load)
sees the old file or the complete new one, never a half-written file, even if
the writer is killed or raises midway.
"""

import contextlib
import os
import secrets


@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """Opens a temporary file beside `path`; on a clean exit it replaces `path`.

    E.g. `with files.atomic_write(p, "wb") as f: np.savez(f, **arrays)` (a file
    object also keeps savez from appending ".npz" to the name).

    Args:
        path: the file to (re)write; its folder must exist.
        mode: "w" (text) or "wb" (bytes).

    Yields:
        The open temporary file. If the block raises, the temporary file is
        removed, `path` is left as it was, and the error propagates.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}.")
    # Same folder as the target, so os.replace is a rename within one file
    # system; a random name, so concurrent writers never share a temp file;
    # O_EXCL with 0o666 gives the permissions (umask) that open(path, "w") gives.
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
