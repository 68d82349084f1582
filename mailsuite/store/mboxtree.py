"""The folder tree of one account on disk. Blocking: run it in a thread, never on the reactor.

Layout (README.rst, "Folders on disk"), with ``~/mail`` the folder root of mail_location:

- INBOX is the spool file (``/var/mail/USER``); its children live in ``~/mail/INBOX/``.
- A folder without children is a plain mbox file: ``Work`` is ``~/mail/Work`` (as in Dovecot).
- A folder with children is a directory: ``Work/2024`` is ``~/mail/Work/2024``, and Work's own
  mail is the mbox file ``~/mail/Work/mBoX-MeSsAgEs`` (missing until the first message). A
  directory is always a selectable folder, so a Dovecot ``~/mail/Dir/`` is one too.
- When a folder that is a file gets its first child, it becomes a directory: under the mailbox
  locks, ``Work`` is moved to ``.Work.mailsuite-dir/mBoX-MeSsAgEs`` and that directory renamed
  to ``Work``. A crash between the two renames leaves the hidden directory, which
  ``recover`` puts back at the next look.
- Indexes: ``~/mail/.imap/<name>/``; subscriptions: ``~/mail/.subscriptions`` (Dovecot's file,
  version 1 or 2 as found); levels on disk in modified UTF-7.

Nothing here follows a symbolic link below the folder root: a symlinked folder is not listed,
opened, renamed or deleted, and new files and directories are made only under the home or the
spool directory.
"""

from __future__ import annotations

import errno
import grp
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from mailsuite.accounts import Account
from mailsuite.store import folders
from mailsuite.store.folders import INBOX, MESSAGES_FILE, SEP
from mailsuite.store.index import fsync_dir
from mailsuite.store.interfaces import (
    InvalidMailboxName,
    MailboxExists,
    MailboxHasChildren,
    MailboxNotFound,
    StoreError,
)
from mailsuite.store.locking import DEFAULT_STALE_AFTER, locked_mailbox

CONVERTING = ".mailsuite-dir"  # suffix of the hidden directory a file folder becomes
SPECIALS_MADE = "mailsuite-specials"  # in ~/mail/.imap: special-use folders made once
_V2 = b"V\t2\n\n"
_V2_ESCAPES = {b"1": b"\x01", b"t": b"\t", b"r": b"\r", b"n": b"\n", b"0": b"\0"}


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _kind(path: str) -> str | None:
    """ "file", "dir" or None (missing, a symlink, or anything else)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    return None


def _converting(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, "." + tail + CONVERTING)


def _open_for_lock(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot open {path}: {e.strerror}") from e


class FolderTree:
    """The folders of one account: see the module docstring."""

    def __init__(
        self,
        account: Account,
        root: str,
        inbox_path: str,
        lock_timeout: float = 30.0,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> None:
        self.account = account
        self.root = os.path.abspath(root)
        self.inbox_path = os.path.abspath(inbox_path)
        self.control = os.path.join(self.root, ".imap")
        self.subscriptions_path = os.path.join(self.root, ".subscriptions")
        self._lock_timeout = lock_timeout
        self._stale_after = stale_after
        self._as_root = os.geteuid() == 0
        home = os.path.abspath(account.home)
        self._roots = [os.path.realpath(home)] + [
            os.path.realpath(p)
            for p in (os.path.dirname(self.inbox_path), self.root)
            if not under(p, home)
        ]

    # -- paths ----------------------------------------------------------------------------------

    def folder_path(self, name: str) -> str:
        """Where folder ``name`` (not INBOX) is: its file, or its directory."""
        return os.path.join(self.root, *map(folders.disk_level, name.split(SEP)))

    def index_dir(self, name: str) -> str:
        return os.path.join(self.control, *map(folders.disk_level, name.split(SEP)))

    def _parents_real(self, name: str) -> bool:
        """Every directory on the way to ``name`` is a real directory (no symlink)."""
        if _kind(self.root) != "dir" and not os.path.isdir(self.root):
            return False
        return all(_kind(self.folder_path(p)) == "dir" for p in folders.parents(name))

    def kind(self, name: str) -> str | None:
        """ "file" or "dir" if ``name`` (not INBOX) is a folder, else None."""
        if not self._parents_real(name):
            return None
        path = self.folder_path(name)
        found = _kind(path)
        if found is None and self.recover(path):
            found = _kind(path)
        return found

    def mbox_path(self, name: str) -> str | None:
        """The mbox file holding ``name``'s own mail (it may not exist yet); None: no folder."""
        if name == INBOX:
            return self.inbox_path
        found = self.kind(name)
        if found == "file":
            return self.folder_path(name)
        if found == "dir":
            return os.path.join(self.folder_path(name), MESSAGES_FILE)
        return None

    def exists(self, name: str) -> bool:
        return name == INBOX or self.kind(name) is not None

    def recover(self, path: str) -> bool:
        """Finish a file-to-directory change that a crash cut short; True if one was found."""
        hidden = _converting(path)
        if _kind(hidden) != "dir" or os.path.lexists(path):
            return False
        if os.listdir(hidden) == [MESSAGES_FILE]:
            os.rename(hidden, path)
        elif not os.listdir(hidden):
            os.rmdir(hidden)  # crashed before the file moved: the folder was never moved
            return False
        else:
            raise StoreError(f"{hidden}: unexpected files; move them back by hand")
        fsync_dir(os.path.dirname(path))
        return True

    # -- safety and ownership -------------------------------------------------------------------

    def check_inside(self, directory: str) -> None:
        real = os.path.realpath(directory)
        if not any(under(real, root) for root in self._roots):
            raise StoreError(f"{directory} leads outside the home and spool directories")

    def make_dir(self, path: str) -> bool:
        """mkdir 0700 owned by the account (inside the allowed places); False if it existed."""
        self.check_inside(os.path.dirname(path))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if _kind(path) != "dir":
                raise StoreError(f"{path} is not a directory") from None
            return False
        if self._as_root:
            os.lchown(path, self.account.uid, self.account.gid)
        return True

    def make_dirs(self, path: str) -> None:
        """Make ``path`` and its missing parents (from the folder root down)."""
        if not under(path, self.root):
            raise StoreError(f"{path} is outside {self.root}")
        if _kind(self.root) is None and not os.path.isdir(self.root):
            self.make_dir(self.root)
        parts = os.path.relpath(path, self.root).split(os.sep)
        current = self.root
        for part in parts if path != self.root else []:
            current = os.path.join(current, part)
            if _kind(current) != "dir":
                self.make_dir(current)
        self.check_inside(path)

    def mbox_owner(self) -> tuple[int, int] | None:
        if not self._as_root:
            return None
        try:
            return self.account.uid, grp.getgrnam("mail").gr_gid
        except KeyError:
            return self.account.uid, self.account.gid

    @contextmanager
    def _locked(self, path: str) -> Iterator[None]:
        with locked_mailbox(
            path,
            lambda: _open_for_lock(path),
            exclusive=True,
            timeout=self._lock_timeout,
            stale_after=self._stale_after,
        ):
            yield

    # -- listing --------------------------------------------------------------------------------

    def list_folders(self) -> dict[str, bool]:
        """{name: has_children} of every folder, INBOX included."""
        out: dict[str, bool] = {INBOX: False}
        if _kind(self.root) == "dir" or os.path.isdir(self.root):
            self._walk(self.root, "", 1, out)
        return out

    def _walk(self, directory: str, prefix: str, depth: int, out: dict[str, bool]) -> bool:
        found = False
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return False
        recovered = [
            self.recover(os.path.join(directory, e.name[1 : -len(CONVERTING)]))
            for e in entries
            if e.name.startswith(".") and e.name.endswith(CONVERTING)
        ]
        if any(recovered):
            entries = list(os.scandir(directory))
        for entry in entries:
            level = folders.from_disk_level(entry.name)
            if level is None:
                continue
            try:
                folders.check_level(level, prefix + level)
            except InvalidMailboxName:
                continue
            name = prefix + level
            if prefix == "" and level.upper() == INBOX:
                if entry.is_dir(follow_symlinks=False):
                    out[INBOX] = self._walk(entry.path, INBOX + SEP, depth + 1, out)
                continue
            if entry.is_file(follow_symlinks=False):
                out[name] = False
            elif entry.is_dir(follow_symlinks=False):
                deeper = depth < folders.MAX_DEPTH
                out[name] = deeper and self._walk(entry.path, name + SEP, depth + 1, out)
            else:
                continue
            found = True
        return found

    def has_children(self, name: str) -> bool:
        if name == INBOX:
            path = os.path.join(self.root, INBOX)
        elif self.kind(name) == "dir":
            path = self.folder_path(name)
        else:
            return False
        out: dict[str, bool] = {}
        self._walk(path, name + SEP, len(name.split(SEP)), out)
        return bool(out)

    # -- create, rename, delete -----------------------------------------------------------------

    def create(self, name: str) -> dict[str, str]:
        """Make the empty folder ``name`` and its missing parents. Returns the parents that
        became directories: {name: new mbox path}."""
        if self.exists(name):
            raise MailboxExists(name)
        moved = self.make_parents(name)
        path = self.folder_path(name)
        self.check_inside(os.path.dirname(path))
        try:
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except FileExistsError:
            raise MailboxExists(name) from None
        try:
            owner = self.mbox_owner()
            if owner:
                os.fchown(fd, *owner)
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(os.path.dirname(path))
        return moved

    def make_parents(self, name: str) -> dict[str, str]:
        """Every parent of ``name`` a directory (file folders converted, missing ones made)."""
        moved = {}
        self.make_dirs(self.root)
        for parent in folders.parents(name):
            path = self.folder_path(parent)
            found = _kind(path)
            if found is None and self.recover(path):
                found = _kind(path)
            if found == "file" and parent != INBOX:
                self.to_directory(path)
                moved[parent] = os.path.join(path, MESSAGES_FILE)
            elif found is None and not os.path.lexists(path):
                self.make_dir(path)
                fsync_dir(os.path.dirname(path))
            elif found != "dir":
                raise StoreError(f"{path} is in the way of folder {name!r}")
        return moved

    def to_directory(self, path: str) -> None:
        """Turn the mbox file at ``path`` into a directory holding it as MESSAGES_FILE."""
        hidden = _converting(path)
        with self._locked(path):
            if _kind(path) != "file":
                raise StoreError(f"{path} changed while it was being converted")
            if os.path.lexists(hidden):
                os.rmdir(hidden)  # an empty one left by a crash (rmdir fails otherwise)
            self.make_dir(hidden)
            os.rename(path, os.path.join(hidden, MESSAGES_FILE))
            os.rename(hidden, path)
        fsync_dir(path)
        fsync_dir(os.path.dirname(path))

    def rename(self, old: str, new: str) -> dict[str, str]:
        """Move folder ``old`` (not INBOX) with its children and indexes to ``new``. Returns the
        parents of ``new`` that became directories, as ``create``."""
        found = self.kind(old)
        if found is None:
            raise MailboxNotFound(old)
        if self.exists(new):
            raise MailboxExists(new)
        moved = self.make_parents(new)
        src, dst = self.folder_path(old), self.folder_path(new)
        if os.path.lexists(dst):
            raise MailboxExists(new)
        self.check_inside(os.path.dirname(dst))
        lock = src if found == "file" else os.path.join(src, MESSAGES_FILE)
        with self._locked(lock):
            os.rename(src, dst)
        if found == "dir":  # our dotlock went along with the directory
            try:
                os.unlink(os.path.join(dst, MESSAGES_FILE + ".lock"))
            except FileNotFoundError:
                pass
        fsync_dir(os.path.dirname(dst))
        fsync_dir(os.path.dirname(src))
        src_ix, dst_ix = self.index_dir(old), self.index_dir(new)
        if _kind(dst_ix) == "dir":
            shutil.rmtree(dst_ix)  # left by a mailbox of that name deleted behind our back
        if _kind(src_ix) == "dir":
            self.make_dirs(os.path.dirname(dst_ix))
            os.rename(src_ix, dst_ix)
            fsync_dir(os.path.dirname(dst_ix))
        return moved

    def delete(self, name: str) -> None:
        """Remove folder ``name`` (not INBOX, no children), its mail and its index."""
        found = self.kind(name)
        if found is None:
            raise MailboxNotFound(name)
        if self.has_children(name):
            raise MailboxHasChildren(name)
        path = self.folder_path(name)
        mbox = path if found == "file" else os.path.join(path, MESSAGES_FILE)
        with self._locked(mbox):
            if os.path.lexists(mbox):
                os.unlink(mbox)
        if found == "dir":
            try:
                os.rmdir(path)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise StoreError(f"{path} holds files that are not folders") from e
        fsync_dir(os.path.dirname(path))
        index = self.index_dir(name)
        if _kind(index) == "dir":
            shutil.rmtree(index)

    # -- subscriptions (Dovecot's ~/mail/.subscriptions) ----------------------------------------

    def read_subscriptions(self) -> tuple[bool, list[str]]:
        """(version 2 file?, names in file order)."""
        try:
            fd = os.open(self.subscriptions_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False, []
        except OSError as e:
            raise StoreError(f"cannot read {self.subscriptions_path}: {e.strerror}") from e
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        v2 = data.startswith(_V2)
        names = []
        for line in (data[len(_V2) :] if v2 else data).split(b"\n"):
            if not line:
                continue
            raw = [self._unescape(level) for level in line.split(b"\t")] if v2 else [line]
            text = SEP.join(level.decode("utf-8", "replace") for level in raw)
            decoded = [folders.from_disk_level(level) for level in text.split(SEP)]
            names.append(
                SEP.join(d if d is not None else t for d, t in zip(decoded, text.split(SEP)))
            )
        return v2, names

    @staticmethod
    def _unescape(level: bytes) -> bytes:
        if b"\x01" not in level:
            return level
        out, i = bytearray(), 0
        while i < len(level):
            if level[i] == 1 and i + 1 < len(level):
                out += _V2_ESCAPES.get(level[i + 1 : i + 2], level[i + 1 : i + 2])
                i += 2
            else:
                out.append(level[i])
                i += 1
        return bytes(out)

    def write_subscriptions(self, v2: bool, names: list[str]) -> None:
        lines = []
        for name in names:
            levels = [folders.disk_level(level) for level in name.split(SEP)]
            if v2:
                lines.append("\t".join(levels).encode())
            else:
                lines.append(SEP.join(levels).encode())
        data = (_V2 if v2 else b"") + b"".join(line + b"\n" for line in lines)
        self.write_file(self.subscriptions_path, data)

    def write_file(self, path: str, data: bytes) -> None:
        """Replace a small file atomically and durably, mode 0600, owned by the account."""
        self.make_dirs(os.path.dirname(path))
        tmp = path + ".mailsuite-tmp"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self._as_root:
                os.fchown(fd, self.account.uid, self.account.gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(os.path.dirname(path))

    def specials_made(self) -> set[str]:
        """Special-use folders made for this account before (so a deleted one stays deleted)."""
        path = os.path.join(self.control, SPECIALS_MADE)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return set()
        with os.fdopen(fd, "rb") as f:
            return {line for line in f.read().decode("utf-8", "replace").split("\n") if line}

    def record_specials(self, names: set[str]) -> None:
        data = "".join(n + "\n" for n in sorted(names)).encode()
        self.write_file(os.path.join(self.control, SPECIALS_MADE), data)
