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

Every path is walked from the account's home by ``safepath`` at each operation (relative to
directories held open, O_NOFOLLOW, each directory and file owned by the user): a symlinked
``~/mail``, folder or parent directory is never followed, a file or directory of someone else
is neither listed nor opened, and a directory swapped for a symlink mid-session is found at the
next operation. Without a home directory only INBOX exists (folder operations are refused with
``NoHome``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from mailsuite.accounts import Account
from mailsuite.store import folders
from mailsuite.store.folders import INBOX, MESSAGES_FILE, SEP
from mailsuite.store.interfaces import (
    InvalidMailboxName,
    MailboxExists,
    MailboxHasChildren,
    MailboxNotFound,
    StoreError,
    StoreRefused,
)
from mailsuite.store.locking import DEFAULT_STALE_AFTER, locked_mailbox
from mailsuite.store.safepath import (
    AnchorCache,
    Anchors,
    Dir,
    MissingAnchor,
    mail_gid,
    open_dir,
)

CONVERTING = ".mailsuite-dir"  # suffix of the hidden directory a file folder becomes
SPECIALS_MADE = "mailsuite-specials"  # in ~/mail/.imap: special-use folders made once
SUBSCRIPTIONS = ".subscriptions"
_V2 = b"V\t2\n\n"
_V2_ESCAPES = {b"1": b"\x01", b"t": b"\t", b"r": b"\r", b"n": b"\n", b"0": b"\0"}


class NoHome(StoreRefused):
    """The account's home directory does not exist: only INBOX (in the spool) is there."""


def _lock_opener(d: Dir, name: str) -> int | None:
    try:
        return d.open_file(name, os.O_RDWR)[0]
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot open {d.at(name)}: {e.strerror}") from e


class FolderTree:
    """The folders of one account: see the module docstring."""

    def __init__(
        self,
        account: Account,
        root: str,
        inbox_path: str,
        lock_timeout: float = 30.0,
        stale_after: float = DEFAULT_STALE_AFTER,
        anchor_cache: AnchorCache | None = None,
    ) -> None:
        self.account = account
        self.root = os.path.abspath(root)
        self.inbox_path = os.path.abspath(inbox_path)
        self.control = os.path.join(self.root, ".imap")
        self.subscriptions_path = os.path.join(self.root, SUBSCRIPTIONS)
        self._lock_timeout = lock_timeout
        self._stale_after = stale_after
        self._as_root = os.geteuid() == 0
        self.anchors = Anchors(account.uid, account.gid, account.home, self.inbox_path, self.root,
                               anchor_cache)
        self._root_place = self.anchors.place(self.root)

    # -- paths ----------------------------------------------------------------------------------

    def folder_path(self, name: str) -> str:
        """Where folder ``name`` (not INBOX) is: its file, or its directory."""
        return os.path.join(self.root, *self._levels(name))

    def index_dir(self, name: str) -> str:
        return os.path.join(self.control, *self._levels(name))

    @staticmethod
    def _levels(name: str) -> list[str]:
        return [folders.disk_level(level) for level in name.split(SEP)]

    def _open_root(self, create: bool = False) -> Dir:
        """``~/mail`` walked from the home (made if missing with ``create``). NoHome if the
        home is missing, FileNotFoundError if ``~/mail`` is, UnsafePath if it is a symlink."""
        try:
            return open_dir(self._root_place, create)
        except MissingAnchor as e:
            if self._root_place.anchor == self.anchors.home:
                raise NoHome(
                    f"{self.account.name} has no home directory ({self.anchors.home}):"
                    " only INBOX is available"
                ) from e
            raise

    @contextmanager
    def _holder(self, levels: list[str]) -> Iterator[Dir | None]:
        """The directory holding the last of ``levels`` (disk names below ``~/mail``), every
        one on the way a real directory of the user; None if one is missing or is not."""
        with ExitStack() as stack:
            try:
                d = stack.enter_context(self._open_root())
            except FileNotFoundError:
                yield None
                return
            for level in levels[:-1]:
                if d.kind(level) != "dir":
                    yield None
                    return
                d = stack.enter_context(d.sub(level))
            yield d

    def kind(self, name: str) -> str | None:
        """ "file" or "dir" if ``name`` (not INBOX) is a folder, else None."""
        levels = self._levels(name)
        with self._holder(levels) as d:
            if d is None:
                return None
            found = d.kind(levels[-1])
            if found is None and self._recover(d, levels[-1]):
                found = d.kind(levels[-1])
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

    def _recover(self, d: Dir, level: str) -> bool:
        """Finish a file-to-directory change of ``level`` in ``d`` that a crash cut short;
        True if one was found."""
        hidden = "." + level + CONVERTING
        if d.kind(hidden) != "dir" or d.exists(level):
            return False
        with d.sub(hidden) as h:
            names = h.names()
        if names == [MESSAGES_FILE]:
            d.rename(hidden, d, level)
        elif not names:
            d.rmdir(hidden)  # crashed before the file moved: the folder was never moved
            return False
        else:
            raise StoreRefused(f"{d.at(hidden)}: unexpected files; move them back by hand")
        d.fsync()
        return True

    # -- ownership ------------------------------------------------------------------------------

    def mbox_owner(self) -> tuple[int, int] | None:
        if not self._as_root:
            return None
        gid = mail_gid()
        return self.account.uid, self.account.gid if gid is None else gid

    def _owner(self) -> tuple[int, int]:
        return self.account.uid, self.account.gid

    @contextmanager
    def _locked(self, d: Dir, name: str) -> Iterator[None]:
        with locked_mailbox(
            name,
            lambda: _lock_opener(d, name),
            exclusive=True,
            timeout=self._lock_timeout,
            stale_after=self._stale_after,
            dir_fd=d.fd,
            full_path=d.at(name),
            dir_ident=d.ident,
        ):
            yield

    # -- listing --------------------------------------------------------------------------------

    def list_folders(self) -> dict[str, bool]:
        """{name: has_children} of every folder, INBOX included."""
        out: dict[str, bool] = {INBOX: False}
        try:
            root = self._open_root()
        except FileNotFoundError:
            return out
        with root:
            self._walk(root, "", 1, out)
        return out

    def _walk(self, d: Dir, prefix: str, depth: int, out: dict[str, bool]) -> bool:
        found = False
        entries = d.names()
        recovered = [
            self._recover(d, e[1 : -len(CONVERTING)])
            for e in entries
            if e.startswith(".") and e.endswith(CONVERTING)
        ]
        if any(recovered):
            entries = d.names()
        for entry in entries:
            level = folders.from_disk_level(entry)
            if level is None:
                continue
            try:
                folders.check_level(level, prefix + level)
            except InvalidMailboxName:
                continue
            name = prefix + level
            kind = d.kind(entry)
            if prefix == "" and level.upper() == INBOX:
                if kind == "dir":
                    with d.sub(entry) as sub:
                        out[INBOX] = self._walk(sub, INBOX + SEP, depth + 1, out)
                continue
            if kind == "file":
                out[name] = False
            elif kind == "dir":
                out[name] = False
                if depth < folders.MAX_DEPTH:
                    with d.sub(entry) as sub:
                        out[name] = self._walk(sub, name + SEP, depth + 1, out)
            else:
                continue
            found = True
        return found

    def has_children(self, name: str) -> bool:
        levels = self._levels(name)
        with self._holder(levels) as d:
            if d is None or d.kind(levels[-1]) != "dir":
                return False
            with d.sub(levels[-1]) as sub:
                return self._walk(sub, name + SEP, len(levels), {})

    # -- create, rename, delete -----------------------------------------------------------------

    def create(self, name: str) -> dict[str, str]:
        """Make the empty folder ``name`` and its missing parents. Returns the parents that
        became directories: {name: new mbox path}."""
        if self.exists(name):
            raise MailboxExists(name)
        moved = self.make_parents(name)
        levels = self._levels(name)
        with self._holder(levels) as d:
            if d is None:
                raise StoreError(f"{self.folder_path(name)}: a parent changed meanwhile")
            try:
                fd = d.create_file(levels[-1], os.O_WRONLY, self.mbox_owner())
            except FileExistsError:
                raise MailboxExists(name) from None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            d.fsync()
        return moved

    def make_parents(self, name: str) -> dict[str, str]:
        """Every parent of ``name`` a directory (file folders converted, missing ones made)."""
        moved = {}
        with ExitStack() as stack:
            d = stack.enter_context(self._open_root(create=True))
            for parent, level in zip(folders.parents(name), self._levels(name), strict=False):
                found = d.kind(level)
                if found is None and self._recover(d, level):
                    found = d.kind(level)
                if found == "file" and parent != INBOX:
                    self._to_directory(d, level)
                    moved[parent] = os.path.join(self.folder_path(parent), MESSAGES_FILE)
                elif found is None and not d.exists(level):
                    d.sub(level, create=True).close()
                    d.fsync()
                elif found != "dir":
                    raise StoreRefused(f"{d.at(level)} is in the way of folder {name!r}")
                d = stack.enter_context(d.sub(level))
        return moved

    def _to_directory(self, d: Dir, level: str) -> None:
        """Turn the mbox file ``level`` in ``d`` into a directory holding it as MESSAGES_FILE."""
        hidden = "." + level + CONVERTING
        with self._locked(d, level):
            if d.kind(level) != "file":
                raise StoreError(f"{d.at(level)} changed while it was being converted")
            if d.exists(hidden):
                d.rmdir(hidden)  # an empty one left by a crash (rmdir fails otherwise)
            with d.sub(hidden, create=True) as h:
                d.rename(level, h, MESSAGES_FILE)
                h.fsync()
            d.rename(hidden, d, level)
        d.fsync()

    def rename(self, old: str, new: str) -> dict[str, str]:
        """Move folder ``old`` (not INBOX) with its children and indexes to ``new``. Returns the
        parents of ``new`` that became directories, as ``create``."""
        found = self.kind(old)
        if found is None:
            raise MailboxNotFound(old)
        if self.exists(new):
            raise MailboxExists(new)
        moved = self.make_parents(new)
        src, dst = self._levels(old), self._levels(new)
        with self._holder(src) as sd, self._holder(dst) as dd:
            if sd is None or dd is None or sd.kind(src[-1]) != found:
                raise StoreError(f"{self.folder_path(old)}: changed meanwhile")
            if dd.exists(dst[-1]):
                raise MailboxExists(new)
            if found == "file":
                with self._locked(sd, src[-1]):
                    sd.rename(src[-1], dd, dst[-1])
            else:
                with sd.sub(src[-1]) as folder, self._locked(folder, MESSAGES_FILE):
                    sd.rename(src[-1], dd, dst[-1])  # the dotlock goes along (held by fd)
            dd.fsync()
            sd.fsync()
        self._rename_index([".imap", *src], [".imap", *dst])
        return moved

    def _rename_index(self, src: list[str], dst: list[str]) -> None:
        with self._holder(dst) as dd:
            if dd is not None and dd.kind(dst[-1]) == "dir":
                dd.rmtree(dst[-1])  # left by a mailbox of that name deleted behind our back
        with self._holder(src) as sd:
            if sd is None or sd.kind(src[-1]) != "dir":
                return
            self._make_dirs(dst[:-1])
            with self._holder(dst) as dd:
                if dd is None:
                    raise StoreError(f"{os.path.join(self.root, *dst)}: changed meanwhile")
                sd.rename(src[-1], dd, dst[-1])
                dd.fsync()

    def _make_dirs(self, levels: list[str]) -> None:
        """``~/mail/LEVEL/LEVEL...`` made where missing (directories of the user, 0700)."""
        with ExitStack() as stack:
            d = stack.enter_context(self._open_root(create=True))
            for level in levels:
                d = stack.enter_context(d.sub(level, create=True))

    def delete(self, name: str) -> None:
        """Remove folder ``name`` (not INBOX, no children), its mail and its index."""
        found = self.kind(name)
        if found is None:
            raise MailboxNotFound(name)
        if self.has_children(name):
            raise MailboxHasChildren(name)
        levels = self._levels(name)
        with self._holder(levels) as d:
            if d is None or d.kind(levels[-1]) != found:
                raise StoreError(f"{self.folder_path(name)}: changed meanwhile")
            if found == "file":
                with self._locked(d, levels[-1]):
                    d.unlink(levels[-1])
            else:
                with d.sub(levels[-1]) as folder, self._locked(folder, MESSAGES_FILE):
                    folder.unlink(MESSAGES_FILE)
                try:
                    d.rmdir(levels[-1])
                except OSError as e:
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    path = self.folder_path(name)
                    raise StoreRefused(f"{path} holds files that are not folders") from e
            d.fsync()
        index = [".imap", *levels]
        with self._holder(index) as d:
            if d is not None and d.kind(index[-1]) == "dir":
                d.rmtree(index[-1])

    # -- small files: subscriptions (Dovecot's ~/mail/.subscriptions), specials made ------------

    def _read_small(self, levels: list[str]) -> bytes | None:
        try:
            with self._holder(levels) as d:
                return None if d is None else d.read_file(levels[-1])
        except NoHome:
            return None

    def _write_small(self, levels: list[str], data: bytes) -> None:
        self._make_dirs(levels[:-1])
        with self._holder(levels) as d:
            if d is None:
                raise StoreError(f"{os.path.join(self.root, *levels[:-1])}: changed meanwhile")
            d.write_file(levels[-1], data, self._owner() if self._as_root else None)

    def read_subscriptions(self) -> tuple[bool, list[str]]:
        """(version 2 file?, names in file order)."""
        data = self._read_small([SUBSCRIPTIONS]) or b""
        v2 = data.startswith(_V2)
        names = []
        for line in (data[len(_V2) :] if v2 else data).split(b"\n"):
            if not line:
                continue
            raw = [self._unescape(level) for level in line.split(b"\t")] if v2 else [line]
            text = SEP.join(level.decode("utf-8", "replace") for level in raw)
            decoded = [folders.from_disk_level(level) for level in text.split(SEP)]
            names.append(
                SEP.join(
                    d if d is not None else t for d, t in zip(decoded, text.split(SEP), strict=True)
                )
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
            levels = self._levels(name)
            if v2:
                lines.append("\t".join(levels).encode())
            else:
                lines.append(SEP.join(levels).encode())
        data = (_V2 if v2 else b"") + b"".join(line + b"\n" for line in lines)
        self._write_small([SUBSCRIPTIONS], data)

    def specials_made(self) -> set[str]:
        """Special-use folders made for this account before (so a deleted one stays deleted)."""
        data = self._read_small([".imap", SPECIALS_MADE]) or b""
        return {line for line in data.decode("utf-8", "replace").split("\n") if line}

    def record_specials(self, names: set[str]) -> None:
        data = "".join(n + "\n" for n in sorted(names)).encode()
        self._write_small([".imap", SPECIALS_MADE], data)
