"""Durability helpers shared by the store, the queue, the maildrop and the TLS setup.

``write_all(fd, data)`` writes everything (a short write is continued); ``atomic_write`` replaces
a file all or nothing and durably (temp file, fsync, rename, fsync of the directory);
``fsync_dir`` / ``fsync_entry`` make a directory entry durable.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterable

#: ``sync`` of atomic_write: the fsync of the directory of the new entry (the default)
SYNC_DIR = "dir"


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd``: a short write is continued, never taken as done."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write(
    path: str,
    data: bytes | Iterable[bytes],
    *,
    tmp: str | None = None,
    dir_fd: int | None = None,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
    sync: str | Callable[[int], None] | None = SYNC_DIR,
    undo: bool = False,
) -> None:
    """Replace ``path`` with ``data`` (bytes, or an iterable of pieces written as they come),
    all or nothing: a new ``tmp`` (default ``path + ".tmp"``; one left by a crash is removed
    first) gets ``data``, ``mode`` and ``owner`` (uid, gid; None: ours), is fsync'ed and renamed
    over ``path``; on an error before the rename the temp file is removed. With ``dir_fd``,
    ``path`` and ``tmp`` are names in that directory.

    ``sync`` makes the rename durable: ``SYNC_DIR`` fsyncs the directory of ``path``, a
    callable gets the new file's descriptor (``fsync_entry``, say), None skips it (the caller
    syncs, or need not). ``undo``: an error after the rename removes ``path`` too, so that a
    reported failure leaves nothing behind (the maildrop: a failed drop must never deliver).
    """
    tmp = path + ".tmp" if tmp is None else tmp
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    try:
        current = tmp
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            for piece in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
                write_all(fd, piece)
            os.fsync(fd)
            os.rename(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            current = path
            if callable(sync):
                sync(fd)
            elif sync == SYNC_DIR:
                fsync_parent(path, dir_fd)
        except BaseException:
            if current == tmp or undo:
                with contextlib.suppress(OSError):
                    os.unlink(current, dir_fd=dir_fd)
            raise
    finally:
        os.close(fd)


def fsync_dir(directory: str) -> None:
    """Make a new, renamed or removed entry of ``directory`` durable (fsync of the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_parent(path: str, dir_fd: int | None = None) -> None:
    """fsync the directory that holds ``path`` (``dir_fd`` when ``path`` is a name in it)."""
    if dir_fd is None:
        fsync_dir(os.path.dirname(path) or ".")
    else:
        os.fsync(dir_fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_syncfs = _load_syncfs()


def fsync_entry(directory: str, fd: int) -> None:
    """Make the entry just renamed into ``directory`` for the open file ``fd`` durable.

    The fsync of the directory needs read permission on it, which a user dropping into a
    1733 directory (``maildrop/``) lacks (EACCES); then ``syncfs(2)`` of the file system that
    holds ``fd`` commits it (it reports write-back errors since Linux 5.8; ``sync()`` where
    there is no syncfs). Raises OSError when the entry may not be on disk."""
    try:
        fsync_dir(directory)
        return
    except PermissionError:
        pass
    if _syncfs is None:
        os.fsync(fd)
        os.sync()
    elif _syncfs(fd) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), directory)


# sync_file_range(2) flags (linux/fs.h)
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_sync_file_range = _load_sync_file_range()


class WriteBehind:
    """Writes a big new file to disk while it is being written, not all at the final fsync.

    Every ``window`` bytes, writeback of the window just written starts (``sync_file_range``
    WRITE, which returns at once), and the writeback of the window before it is waited for.
    The disk works while the file is still being produced, the file's dirty pages stay at about
    two windows (so the kernel's dirty-page limits never make the flusher write other files'
    pages, or throttle us, first), and the closing ``fsync`` (still needed: this says nothing
    about the metadata or durability) has little left to do. Without ``sync_file_range`` (not
    Linux) it does nothing. Blocking: call it from the thread writing the file.
    """

    def __init__(self, fd: int, window: int = 32 << 20) -> None:
        self.fd, self.window = fd, window
        self.started = 0  # writeback started for [0, started)
        self.waited = 0  # and finished for [0, waited)

    def wrote(self, end: int) -> None:
        """The file now has ``end`` bytes."""
        if _sync_file_range is None or end - self.started < self.window:
            return
        if _sync_file_range(self.fd, self.started, end - self.started, _WRITE) != 0:
            return  # EINVAL, ESPIPE...: the final fsync does it all
        if self.started > self.waited:
            _sync_file_range(
                self.fd,
                self.waited,
                self.started - self.waited,
                _WAIT_BEFORE | _WRITE | _WAIT_AFTER,
            )
            self.waited = self.started
        self.started = end


def pread_all(fd: int, length: int, offset: int, chunk: int = 4 << 20) -> bytes:
    """``length`` bytes of ``fd`` from ``offset`` (fewer at its end), read ``chunk`` at a time."""
    parts = []
    while length > 0:
        data = os.pread(fd, min(length, chunk), offset)
        if not data:
            break
        parts.append(data)
        length -= len(data)
        offset += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)
