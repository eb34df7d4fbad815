"""Writing files so that a crash never leaves half of one: ``atomic_write`` writes to a temporary
file in the same folder, flushes it to disk and renames it over the target (a rename within one
file system is atomic), so a reader sees the old file or the new one, never a torn one.

A full disk is one ``DiskFull`` error that names the file or folder and what to do, wherever the
write happened (``atomic_write``, or any write inside ``writing_into(folder)``): libraries report it
in their own words (torch: ``unexpected pos``, numpy: ``N requested and M written``, libsndfile:
``System error``), so the test is the error's chain and the free space left where it was writing.
``output_folder`` makes a command's output folder, with a path that names a file one message.
``read_json`` reads a JSON file, a broken one an error naming it.

A signal that arrives while ``atomic_write`` writes (SIGTERM, SIGHUP, Ctrl-C) waits until the file
is whole (``signals_deferred``): the commands turn these signals into an exception raised wherever
the main thread is, and raised inside ``torch.save`` it leaves the zip writer's own RuntimeError
("unexpected pos N") in its place, a traceback and exit status 1 instead of the stop's one line.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from avs_lib.core.errors import ConfigError, DataError

# Below this many free bytes after a failed write, the write failed for want of space (a library
# that says "System error" or "N requested and M written" gives no errno to tell).
NEARLY_FULL_BYTES = 64 * 1024


class DiskFull(OSError):
    """No space left on the device while writing; the message names where and what to do."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def out_of_space(error: BaseException, folder: str | Path) -> bool:
    """Whether ``error`` (raised while writing into ``folder``) comes from a full disk or quota."""
    seen = error
    while seen is not None:
        if isinstance(seen, DiskFull):
            return True
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def disk_full(where: str | Path, kept: str = "") -> DiskFull:
    """The one message for a full disk at ``where`` (a file or a folder)."""
    where = Path(where)
    folder = where if where.is_dir() else where.parent
    try:
        free = f" ({shutil.disk_usage(folder).free // 1024} KiB free there now)"
    except OSError:
        free = ""
    return DiskFull(f"no space left on device writing {where}{free}: free space in {folder} or write elsewhere, "
                    f"then run again{'; ' + kept if kept else ''}")


@contextlib.contextmanager
def writing_into(folder: str | Path, kept: Callable[[], str] | str = "") -> Iterator[None]:
    """Turn a full disk met inside the block into one ``DiskFull`` naming ``folder``; ``kept`` (text,
    or a function that gives it when the disk is full) says what is still good there."""
    try:
        yield
    except DiskFull as error:  # from atomic_write, naming its file: add what is still good here
        said = kept() if callable(kept) else kept
        if not said:
            raise
        raise DiskFull(f"{error}; {said}") from None
    except Exception as error:
        if out_of_space(error, folder):
            raise disk_full(folder, kept() if callable(kept) else kept) from None
        raise


DEFERRED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


@contextlib.contextmanager
def signals_deferred(signums: tuple = DEFERRED_SIGNALS) -> Iterator[None]:
    """Hold ``signums`` back while the block runs, then deliver each one that came, once, to the
    handler that was there before (which may raise, as ``avs``'s commands' handlers do). Only the
    main thread can change handlers; elsewhere, and for a handler set outside Python, nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {}
    for signum in signums:
        handler = signal.getsignal(signum)
        if handler is not None:  # None: set by C code, which Python could not put back
            previous[signum] = signal.signal(signum, lambda number, frame: arrived.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fh)`` on a temporary binary file next to ``path``, then rename it to ``path``.
    A full disk is a ``DiskFull`` naming ``path``; the previous ``path``, if any, is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        if out_of_space(error, path.parent):
            raise disk_full(path) from None
        raise
    try:
        with signals_deferred():
            # mkstemp makes the file private (0600); the file keeps the mode of the one it replaces
            os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o644)
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException as error:
        full = isinstance(error, Exception) and out_of_space(error, path.parent)  # before the space is freed
        Path(tmp).unlink(missing_ok=True)
        if full:
            kept = f"{path.name} is as it was before" if path.exists() else ""
            raise disk_full(path, kept) from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode()))


def output_folder(path: str | Path, option: str) -> Path:
    """Make the output folder ``path`` (given by ``option``, e.g. ``out=`` or ``--out``); a path that
    names a file is one ConfigError saying so, not a FileExistsError."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{option} {path}: {folder} is a file, not a folder; choose another {option}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_json(path: str | Path, what: str = "file"):
    """The JSON value in ``path``; a missing, unreadable or broken file is one DataError that names it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{what} {path} cannot be read ({type(error).__name__}: {error})") from None
    try:
        return json.loads(text)
    except ValueError as error:
        state = "is empty" if not text.strip() else f"is not valid JSON ({error})"
        raise DataError(f"{what} {path} {state}: it was cut short or edited by hand; write it again (run the "
                        "command that wrote it) or repair it") from None
