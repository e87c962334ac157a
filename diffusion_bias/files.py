"""Files written whole or not at all: every file the package writes goes through here.

A reader (a resumed run, a concurrent `launch.analyze`, the next pool load)
sees the old file or the complete new one, never a half-written file, even if
the writer is killed or raises midway.
"""

from collections.abc import Iterator
import contextlib
import errno
import fcntl
import json
import math
import os
import secrets
import socket
from typing import IO
from typing import Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
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


def finite_or_none(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, inf) replaced by None, recursively.

    JSON has no NaN: Python's json writes a bare `NaN` that strict readers
    (JavaScript, jq, most other languages) reject; null is what they read.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def json_line(obj: Any) -> str:
    """One line of strict JSON for `obj` (non-finite floats as null)."""
    return json.dumps(finite_or_none(obj), allow_nan=False)


class Busy(Exception):
    """Another live process holds the lock."""


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Holds an exclusive lock on file `path` for the block; `what` names the locked work.

    The lock is the kernel's (flock): it dies with its process, so a lock left
    by a killed process (kill -9, a crashed host) is no lock, and the next
    caller takes it over. The file holds the holder's pid and host for the
    message a second caller gets, and is removed when the block ends.

    Raises:
        Busy: another live process holds it (the message names it).
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise Busy(f"{what} is already running ({holder}); wait for it to end") from None
        # The holder before us may have removed the file after we opened it: a lock
        # on a removed file locks nothing, so take the one now at `path`.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        # Removed while still locked, so no one else can hold this file meanwhile.
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        os.close(fd)


def disk_full(err: BaseException | None) -> BaseException | None:
    """The out-of-space error in `err`'s chain (itself, its causes, its contexts), or None.

    An OSError with ENOSPC or EDQUOT, or an error of a library that reports one
    only in words (TensorStore, under Orbax: "No space left on device").
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        if "No space left on device" in str(err):
            return err
        err = err.__cause__ or err.__context__
    return None
