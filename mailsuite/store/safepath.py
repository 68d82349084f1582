"""Mailbox paths walked safely: the one way the mbox store reaches a file. Blocking (threads).

The daemon runs as root (and, once privileges are separated, as the user: this stays the right
tool then). A user owns everything under their home and can put a symbolic link anywhere there,
or swap a directory for one at any moment, so a path string is never handed to the kernel below
a trusted directory. Instead:

- An *anchor* is a directory the administrator named: the passwd home, or the directory holding
  the INBOX (``/var/mail``, from ``mail_location``). It is opened by its path (the links the
  administrator made, such as Debian's ``/var/spool/mail``, are followed) and must be owned by
  the user or root (the spool directory is typically root:mail 2775 or 1777).
- Below it, every component is opened relative to the directory opened before it
  (``openat``/``mkdirat``/``unlinkat``/``renameat`` through ``dir_fd``) with ``O_NOFOLLOW``,
  and must be owned by the user: a directory or file of anyone else is refused, a file must
  also be a regular file with one link (as Postfix's local(8) wants its mailbox).
- This happens again at every operation: a ``Place`` names a file, it never holds it open,
  so a directory swapped after SELECT is found at the next command. Only an anchor may be held
  open between operations (``AnchorCache``, for the store's deliveries and reads): it is
  looked up by its path again at every operation and used only while the path still names the
  directory held, owned by the user or root.

Everything refused raises ``UnsafePath`` (a ``StoreRefused``: one line in the log, no
traceback), naming the path and the reason.
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import shutil
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from mailsuite.fsutil import atomic_write
from mailsuite.store.interfaces import StoreRefused

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(StoreRefused):
    """A path that leads through a symbolic link, or to something the user does not own."""

    code = "NOPERM"


class MissingAnchor(StoreRefused):
    """The home (or spool) directory a path starts from does not exist."""


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class Place:
    """A file or directory: ``anchor`` (trusted, opened by path) and ``parts`` below it (each
    walked with O_NOFOLLOW, owned by ``uid``). New directories get ``uid``:``gid``. ``cache``:
    where the anchor may be held open (``AnchorCache``); None: it is opened at every walk."""

    anchor: str
    parts: tuple[str, ...]
    uid: int
    gid: int
    cache: AnchorCache | None = field(default=None, compare=False, repr=False)

    @property
    def path(self) -> str:
        return os.path.join(self.anchor, *self.parts)

    @property
    def name(self) -> str:
        return self.parts[-1]

    @property
    def parent(self) -> Place:
        if not self.parts:
            raise UnsafePath(f"{self.anchor}: no parent below the trusted directory")
        return Place(self.anchor, self.parts[:-1], self.uid, self.gid, self.cache)

    def child(self, *names: str) -> Place:
        for name in names:
            if not name or name in (".", "..") or "/" in name or "\0" in name:
                raise UnsafePath(f"{self.path}: bad path component {name!r}")
        return Place(self.anchor, self.parts + names, self.uid, self.gid, self.cache)


class Anchors:
    """The trusted directories of one account: its home, and the directories holding its INBOX
    and its folder root when those are outside the home; their Places use ``cache``."""

    def __init__(self, uid: int, gid: int, home: str, inbox_path: str, folder_root: str,
                 cache: AnchorCache | None = None) -> None:
        self.uid, self.gid, self.cache = uid, gid, cache
        self.home = os.path.abspath(home)
        found = [self.home]
        for path in (inbox_path, folder_root):
            path = os.path.abspath(path)
            if not under(path, self.home):
                found.append(os.path.dirname(path))
        self.dirs = sorted(set(found), key=len, reverse=True)

    def place(self, path: str) -> Place:
        """``path`` as a Place below the deepest anchor holding it; UnsafePath if none does."""
        path = os.path.abspath(path)
        for anchor in self.dirs:
            if under(path, anchor):
                rel = os.path.relpath(path, anchor)
                parts = () if rel == "." else tuple(rel.split(os.sep))
                return Place(anchor, parts, self.uid, self.gid, self.cache)
        raise UnsafePath(f"{path} is outside the home and spool directories")


@functools.cache
def mail_gid() -> int | None:
    """The gid of the ``mail`` group, which new mbox files get (as Postfix's local(8) makes
    them); None where there is no such group. Looked up once: it is an NSS call, and every
    mailbox open would make it."""
    try:
        return grp.getgrnam("mail").gr_gid
    except KeyError:
        return None


def refuse(path: str, why: str) -> UnsafePath:
    return UnsafePath(f"{path}: {why}: refused")


def check_owner(st: os.stat_result, uid: int, path: str) -> None:
    if st.st_uid != uid:
        raise refuse(path, f"owned by uid {st.st_uid}, not by uid {uid}")


def check_file(st: os.stat_result, uid: int, path: str) -> None:
    """A mailbox (or index) file must be a regular file of the user with one link."""
    if not stat.S_ISREG(st.st_mode):
        raise refuse(path, "not a regular file")
    if st.st_nlink != 1:
        raise refuse(path, f"{st.st_nlink} hard links")
    check_owner(st, uid, path)


class Dir:
    """One directory, held open; names given to its methods are single components. ``ident``
    is its (st_dev, st_ino); ``release``, when given, gives a shared descriptor back (an
    ``AnchorCache``'s) instead of closing it."""

    def __init__(self, fd: int, place: Place, ident: tuple[int, int],
                 release: Callable[[], None] | None = None) -> None:
        self.fd, self.place, self.ident, self._release = fd, place, ident, release

    @property
    def path(self) -> str:
        return self.place.path

    def close(self) -> None:
        if self.fd >= 0:
            if self._release is not None:
                self._release()
            else:
                os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def at(self, name: str) -> str:
        return os.path.join(self.path, name)

    # -- looking -------------------------------------------------------------------------------

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.lstat(name, dir_fd=self.fd)
        except FileNotFoundError:
            return None

    def kind(self, name: str) -> str | None:
        """ "file" or "dir" for a regular file or directory of the user; None for anything
        else (missing, a symlink, someone else's)."""
        st = self.lstat(name)
        if st is None or st.st_uid != self.place.uid:
            return None
        if stat.S_ISREG(st.st_mode):
            return "file"
        if stat.S_ISDIR(st.st_mode):
            return "dir"
        return None

    def exists(self, name: str) -> bool:
        return self.lstat(name) is not None

    def names(self) -> list[str]:
        if self._release is None:
            return os.listdir(self.fd)
        # a shared descriptor: its read position is every holder's, so list a descriptor of
        # our own (opened through the one held: the same directory)
        fd = os.open(".", _DIR_FLAGS, dir_fd=self.fd)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    # -- opening -------------------------------------------------------------------------------

    def sub(self, name: str, create: bool = False) -> Dir:
        """The directory ``name`` in this one (made 0700 for the user if ``create``)."""
        place = self.place.child(name)
        made = False
        if create:
            try:
                os.mkdir(name, 0o700, dir_fd=self.fd)
                made = True
            except FileExistsError:
                pass
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = self.lstat(name)  # O_DIRECTORY|O_NOFOLLOW on a symlink: ENOTDIR (Linux)
            link = e.errno == errno.ELOOP or (st is not None and stat.S_ISLNK(st.st_mode))
            raise refuse(place.path, "a symbolic link" if link else "not a directory") from e
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        sub = Dir(fd, place, (st.st_dev, st.st_ino))
        try:
            if made and st.st_uid != place.uid and st.st_uid == os.geteuid() and not sub.names():
                os.fchown(fd, place.uid, place.gid)  # ours, just made, still empty
                st = os.fstat(fd)
            check_owner(st, place.uid, place.path)
        except BaseException:
            sub.close()
            raise
        return sub

    def create_file(self, name: str, flags: int, owner: tuple[int, int] | None,
                    mode: int = 0o600) -> int:
        """A new file ``name`` (FileExistsError if there is one), ``mode``, owned by ``owner``
        (uid, gid) when running as root."""
        fd = os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=self.fd)
        try:
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_nofollow(self, name: str, flags: int) -> int:
        """``name`` opened with ``flags``, O_NOFOLLOW and O_NONBLOCK (a FIFO put there must
        not hang the open; the caller checks what it got with fstat, and clears O_NONBLOCK
        if it needs to). UnsafePath for a symbolic link; FileNotFoundError if missing."""
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                           dir_fd=self.fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise refuse(self.at(name), "a symbolic link") from e
            raise

    def open_file(self, name: str, flags: int, create: bool = False,
                  owner: tuple[int, int] | None = None) -> tuple[int, bool]:
        """(fd, made): the user's regular file ``name`` with one link, opened with ``flags``
        (O_NOFOLLOW added; UnsafePath for anything else); with ``create`` a missing one is made
        (``create_file``). FileNotFoundError if missing."""
        while True:
            try:
                fd = self.open_nofollow(name, flags)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    return self.create_file(name, flags, owner), True
                except FileExistsError:
                    continue
            except OSError as e:  # a directory opened for writing, a socket
                if e.errno in (errno.EISDIR, errno.ENXIO):
                    raise refuse(self.at(name), "not a regular file") from e
                st = self.lstat(name) if e.errno == errno.EACCES else None
                if st is not None:  # opened as the user (privsep): say whose file it is
                    check_file(st, self.place.uid, self.at(name))
                raise
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or \
                        st.st_uid != self.place.uid:
                    check_file(st, self.place.uid, self.at(name))  # raises
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
            return fd, False

    # -- changing ------------------------------------------------------------------------------

    def unlink(self, name: str, missing_ok: bool = True) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmdir(self, name: str) -> None:
        os.rmdir(name, dir_fd=self.fd)

    def rmtree(self, name: str) -> None:
        """Remove the directory ``name`` and everything in it (symlinks removed, not followed)."""
        shutil.rmtree(name, dir_fd=self.fd)

    def rename(self, name: str, to: Dir, to_name: str) -> None:
        os.rename(name, to_name, src_dir_fd=self.fd, dst_dir_fd=to.fd)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def write_file(self, name: str, data: bytes, owner: tuple[int, int] | None) -> None:
        """Replace ``name`` atomically and durably (temp file, fsync, rename), mode 0600."""
        atomic_write(name, data, tmp=name + ".mailsuite-tmp", dir_fd=self.fd,
                     owner=owner if os.geteuid() == 0 else None)

    def read_file(self, name: str) -> bytes | None:
        """The content of the user's regular file ``name``; None if it is missing."""
        try:
            fd, _ = self.open_file(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()


def _check_anchor(st: os.stat_result, place: Place) -> None:
    if st.st_uid not in (0, place.uid):
        raise refuse(place.anchor, f"owned by uid {st.st_uid}, not by uid {place.uid} or root")


def _anchor_fd(place: Place) -> tuple[int, os.stat_result]:
    """The anchor opened by its path, and its fstat (checked); MissingAnchor if missing."""
    try:
        fd = os.open(place.anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise MissingAnchor(f"{place.anchor} does not exist") from e
    try:
        st = os.fstat(fd)
        _check_anchor(st, place)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def open_anchor(place: Place) -> Dir:
    """The anchor of ``place``, opened by its path (or lent by ``place.cache``); MissingAnchor
    if it does not exist."""
    if place.cache is not None:
        return place.cache.open(place)
    fd, st = _anchor_fd(place)
    return Dir(fd, Place(place.anchor, (), place.uid, place.gid), (st.st_dev, st.st_ino))


class _Held:
    """One anchor descriptor of an AnchorCache, with the number of Dirs lending it now."""

    def __init__(self, fd: int, ident: tuple[int, int]) -> None:
        self.fd, self.ident, self.users, self.dropped = fd, ident, 0, False


class AnchorCache:
    """Anchors held open between operations (at most ``size``; the least recently used is
    closed), so that a delivery or read does not open, fstat and close its anchor each time.

    Every ``open`` looks the anchor up by its path again (one stat, links followed as an open
    would follow them) and lends the descriptor held only while that path still names the same
    directory (device and inode: the held descriptor keeps its inode from being reused) and the
    directory is still owned by the user or root; else the anchor is opened again. What is below
    the anchor is walked at every operation as before. Thread-safe: a descriptor replaced or
    evicted while lent is closed when its last Dir is closed."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._guard = threading.Lock()

    def open(self, place: Place) -> Dir:
        anchor = Place(place.anchor, (), place.uid, place.gid, self)
        try:
            st = os.stat(place.anchor)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise MissingAnchor(f"{place.anchor} does not exist") from e
        ident = st.st_dev, st.st_ino
        with self._guard:
            held = self._held.get(place.anchor)
            if held is not None and held.ident == ident and stat.S_ISDIR(st.st_mode):
                _check_anchor(st, place)
                return self._lend(place.anchor, held, anchor)
        fd, fst = _anchor_fd(place)
        held = _Held(fd, (fst.st_dev, fst.st_ino))
        with self._guard:
            old = self._held.pop(place.anchor, None)
            if old is not None:
                self._drop(old)
            self._held[place.anchor] = held
            while len(self._held) > self.size:
                self._drop(self._held.popitem(last=False)[1])
            return self._lend(place.anchor, held, anchor)

    def _lend(self, path: str, held: _Held, anchor: Place) -> Dir:
        held.users += 1
        self._held.move_to_end(path)
        return Dir(held.fd, anchor, held.ident, lambda: self._give_back(held))

    def _give_back(self, held: _Held) -> None:
        with self._guard:
            held.users -= 1
            if held.dropped and not held.users:
                os.close(held.fd)

    def _drop(self, held: _Held) -> None:
        held.dropped = True
        if not held.users:
            os.close(held.fd)

    def close(self) -> None:
        """Close every descriptor not lent now (the others when given back)."""
        with self._guard:
            while self._held:
                self._drop(self._held.popitem()[1])


def open_dir(place: Place, create: bool = False) -> Dir:
    """The directory ``place``, walked from its anchor (missing ones made with ``create``)."""
    d = open_anchor(place)
    try:
        for name in place.parts:
            sub = d.sub(name, create)
            d.close()
            d = sub
    except BaseException:
        d.close()
        raise
    return d
