"""Where the index of one mbox file is kept: ``IndexKeeper``, the base of ``mboxfile.MboxFile``.

The index (``index``) lives in its folder's index directory under the account's home, walked
from it through ``safepath``; changes are appended to its journal and folded into a new index
when the journal grows big. Without a home directory the index is kept in memory only, for the
life of the process. UIDVALIDITY values come from ``uidvalidity``. Blocking: run in a thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

from twisted.logger import Logger

from mailsuite.accounts import Account
from mailsuite.store import index as ix
from mailsuite.store import modseq as ms
from mailsuite.store import uidvalidity
from mailsuite.store.interfaces import Changes
from mailsuite.store.safepath import Anchors, Dir, MissingAnchor, Place, open_dir

log = Logger()

LOG_LIMIT = 1 << 20  # the index journal is folded into the index beyond this (+16 B a message)
INDEX_NAME = "mailsuite.index"

#: The indexes of accounts without a home directory, by index directory: kept for the life of
#: the process (Dovecot's INDEX=MEMORY), so UIDs and UIDVALIDITY (POP3 UIDLs) stay as they are
#: while the server runs, also when the mailbox leaves the store's cache.
_IN_MEMORY: dict[str, ix.Index] = {}
_IN_MEMORY_LOCK = threading.Lock()


def _has(entries: ix.EntryTable, uid: int) -> bool:
    i = entries.position(uid)
    return i < len(entries) and entries.uid[i] == uid


class IndexKeeper:
    """The index of one mbox file: read, saved, journaled (``mboxfile.MboxFile`` sets these)."""

    account: Account
    path: str
    folder_root: str
    index_dir: str
    index_path: str
    index_place: Place
    _anchors: Anchors
    _now: Callable[[], float]
    _root: bool

    def _index_dir(self, create: bool) -> Dir | None:
        """The index directory, walked (and made, with ``create``) from its anchor; None when
        it is missing, or when the home it lives in is: then the index is kept in memory."""
        try:
            return open_dir(self.index_place, create)
        except MissingAnchor:
            if self.index_place.anchor == self._anchors.home:
                return None
            raise
        except FileNotFoundError:
            if create:
                raise
            return None

    def _saved_index(self) -> ix.Index | None:
        """The saved index; None if there is none (or it is damaged: it is made again)."""
        try:
            return self._read_index()
        except ix.CorruptIndex as e:
            log.warn("rebuilding index {path}: {why}", path=self.index_path, why=e)
            return None

    def _load_index(self) -> tuple[ix.Index, bool]:
        """The saved index, or a new one (a new UIDVALIDITY) if there is none: (index, is_new)."""
        index = self._saved_index()
        if index is None:
            return ix.Index(uid_validity=self._new_validity()), True
        return index, False

    def _read_index(self) -> ix.Index | None:
        d = self._index_dir(create=False)
        if d is None:
            with _IN_MEMORY_LOCK:
                kept = _IN_MEMORY.get(self.index_dir)
            return kept.copy() if kept is not None else None  # (a home made meanwhile: kept)
        with d:
            return ix.read_index(INDEX_NAME, d.fd)

    def _control_dir(self) -> Dir | None:
        """``~/mail/.imap``, walked (and made) from the home; None when there is no home."""
        try:
            return open_dir(self._anchors.place(os.path.join(self.folder_root, ".imap")), True)
        except MissingAnchor:
            return None

    def _new_validity(self) -> int:
        """A UIDVALIDITY the account never gave before (``uidvalidity``)."""
        control = self._control_dir()
        if control is None:
            return uidvalidity.allocate_in_memory(self.folder_root, self._now())
        with control:
            return uidvalidity.allocate(control, self._now(), self._owner())

    def _adopt_validity(self, validity: int) -> bool:
        """Take ``validity`` (Dovecot's X-IMAPbase) over for this mailbox, once (``uidvalidity``);
        never for an account with no home: its index in memory would hand out the UIDs again."""
        control = self._control_dir()
        if control is None:
            return False
        with control:
            adopted = uidvalidity.adopt(control, validity, self._owner())
        if not adopted:
            log.warn("{path}: X-IMAPbase {validity} was taken over before and its index is"
                     " gone: a new UIDVALIDITY", path=self.path, validity=validity)
        return adopted

    def _save(self, index: ix.Index) -> None:
        d = self._index_dir(create=True)
        if d is None:  # no home: the index lives in memory only
            with _IN_MEMORY_LOCK:
                _IN_MEMORY[self.index_dir] = index.copy()
            return
        with d:
            ix.write_index(INDEX_NAME, index, self._owner(), d.fd)
        if _IN_MEMORY:
            with _IN_MEMORY_LOCK:
                _IN_MEMORY.pop(self.index_dir, None)  # the home exists now: on disk from here on

    def _owner(self) -> tuple[int, int] | None:
        return (self.account.uid, self.account.gid) if self._root else None

    def _journal(self, index: ix.Index, records: bytes, count: int) -> bool:
        """Append ``records`` (changes that turn the saved index into ``index``, of ``count``
        messages) to the journal; False when the whole index must be written instead: it has
        none on disk yet, or its journal has grown big (compaction)."""
        if not index.generation:
            return False
        size = self._append_log(index, records, self._owner())
        return size is not None and size <= LOG_LIMIT + 16 * count

    def _grow(
        self, state: ix.Index, added: Sequence[ix.Entry], stamp: ix.Stamp, save: bool = False
    ) -> ix.Index:
        """``state`` with ``added`` appended, made durable in O(len(added)) (journal records;
        the whole index when ``save`` or when the journal says so)."""
        uid_next = added[-1].uid + 1 if added else state.uid_next
        head = ix.Index(state.uid_validity, uid_next, stamp, ix.EntryTable(), state.generation)
        count = len(state.entries) + len(added)
        if save or not self._journal(head, ix.log_records(None, added, head), count):
            full = state.copy(uid_next=uid_next, stamp=stamp, entries=state.entries + added,
                              compacted=None)
            full.highest_modseq = max([state.highest_modseq] + [e.modseq for e in added[-1:]])
            self._save(full)
            state.generation = full.generation
        return state.grown(added, stamp)

    def hide(self, state: ix.Index, uids: list[int]) -> tuple[ix.Index, Changes, list[int]]:
        """Mark these messages (of ``state``) expunged, durably, before the file is compacted
        without them (``MboxFile.expunge``): a crash in between does not bring them back.
        (new state, changes, the UIDs newly hidden: those still in ``state``)."""
        gone = {u for u in uids if _has(state.entries, u)} - state.hidden
        if not gone:
            return state, Changes(), []
        modseq = state.highest_modseq + 1
        new = replace(state, hidden=state.hidden | gone,  # the same entries: none changed
                      highest_modseq=modseq, vanished=state.vanished.add(gone, modseq))
        records = ix.log_records(hidden=gone) + ms.record(b"V", modseq, gone)
        if not self._journal(new, records, len(new.entries)):
            self._save(new)
        return new, Changes(expunged=sorted(gone)), sorted(gone)

    def note_compaction(self, state: ix.Index, ino: int, gone: set[int]) -> None:
        """Journal, before a compaction renames its new file (inode ``ino``, without ``gone``)
        in, that it does: cut short before its new index is saved, the next load knows the
        file for what it is (``index.reconcile``)."""
        self._append_log(state, ix.compaction_record(ino, gone), self._owner())

    def _append_log(
        self, index: ix.Index, records: bytes, owner: tuple[int, int] | None
    ) -> int | None:
        """Journal ``records``; None when the index they belong to is no longer on disk (its
        directory or file removed from outside): then the caller writes the whole index again
        from the state in memory, which keeps UIDVALIDITY and the UIDs."""
        d = self._index_dir(create=False)
        if d is None:
            return None
        with d:
            if not d.exists(INDEX_NAME):
                return None
            try:
                return ix.append_log(INDEX_NAME, index, records, owner, d.fd)
            except FileNotFoundError:
                return None
