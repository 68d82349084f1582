"""A folder's attributes (``folderattrs``) known without a thread or a read: every SELECT asks
for its MAILBOXID (RFC 8474), and a read of ``.mailsuite-folder`` through the thread pool was
most of a SELECT of a folder another session has open (1.5 ms of 1.9 in process).

What a read found is kept with the ``lstat`` of the attributes file (and, for a folder other
than INBOX, of the folder's file or directory: it must still be there) taken before and after
the read; a later look with the same stats, taken on the reactor thread (metadata:
microseconds), is answered from memory. Any write of the file (CREATE's special use, a MAILBOXID
made), RENAME and DELETE (the index directory moves or goes), another program replacing the
folder: a stat differs, and the file is read again as before.
"""

from __future__ import annotations

import os
from typing import Any

from mailsuite.store.folders import INBOX

#: (inode, device, size, mtime_ns, ctime_ns, file type) per path; None: missing.
Stamp = tuple[tuple[int, int, int, int, int, int] | None, ...]


def _stat(path: str) -> tuple[int, int, int, int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode >> 12)


def stamp(tree: Any, name: str, attrs_file: str) -> Stamp | None:
    """What the files of folder ``name`` look like now; None when that says nothing (the
    attributes file or the folder missing: the read answers that)."""
    paths = [os.path.join(tree.index_dir(name), attrs_file)]
    if name != INBOX:
        paths.append(tree.folder_path(name))
    found = tuple(_stat(p) for p in paths)
    return None if None in found else found


class AttrsCache:
    """(account, folder) -> (stamp, attributes) of the last read that no write overlapped."""

    def __init__(self, attrs_file: str) -> None:
        self.attrs_file = attrs_file
        self._known: dict[tuple[str, str], tuple[Stamp, Any]] = {}

    def get(self, tree: Any, name: str) -> Any:
        """The attributes, if the files are as they were at the read; else None."""
        key = (tree.account.name, name)
        known = self._known.get(key)
        if known is None:
            return None
        if stamp(tree, name, self.attrs_file) != known[0]:
            self._known.pop(key, None)
            return None
        return known[1]

    def reading(self, tree: Any, name: str, read: Any, *args: Any) -> Any:
        """``read(tree, name, *args)`` (blocking, in the thread), kept when the stats before
        and after it agree (nothing wrote meanwhile, not even the read itself)."""
        before = stamp(tree, name, self.attrs_file)
        attrs = read(tree, name, *args)
        if before is not None and stamp(tree, name, self.attrs_file) == before:
            self._known[(tree.account.name, name)] = (before, attrs)
        return attrs
