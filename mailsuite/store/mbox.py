"""The mbox mail store: IMailStore on the files Postfix local(8), mutt and Dovecot share.

INBOX is ``mailbox_config.inbox_path(account)`` (e.g. ``/var/mail/boss``); the other folders are
under ``folder_root(account)`` as ``mboxtree`` lays them out; the index of each folder lives in
``folder_root/.imap/<name>/mailsuite.index`` (see ``index``).

One ``MboxMailbox`` (``mboxmailbox``) per folder is shared by every session that has it open
(counted by open and close), and kept a while after the last close (``idle_budget`` messages in
all), so opening it again costs a stat. A per-mailbox DeferredLock runs its operations one at a
time; each runs its file work in a thread (``mboxfile``) and the new state is published, and
listeners told, on the reactor thread. Folder operations (create, rename, delete) run one at a
time per account and wait for the open mailboxes they move.

EXPUNGE (IMAP, and POP3's QUIT) is answered as soon as it is durable: the messages are marked
expunged in the index (a journal record, ``IndexKeeper.hide``), leave ``messages`` and every
session is told, and the file is compacted (rewritten without them, ``MboxFile.expunge``) right
after, as the mailbox's next operation. Until that is done another program (mutt) still sees
them in the file; a crash before it leaves them marked, and the next open compacts them away
(they never come back: a POP3 client would fetch them again). Readers and new sessions do not
wait for the compaction (the file they read is unchanged until its end); writers (flags, appends,
deliveries) run after it. ``MboxStore.settle()`` waits for every pending compaction (the server
calls it on stop).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailsuite.accounts import Account
from mailsuite.store import events, folders
from mailsuite.store.folderattrs import FolderAttrsStore, stored_uses
from mailsuite.store.folders import INBOX
from mailsuite.store.interfaces import (
    IMailStore,
    InvalidMailboxName,
    MailboxEntry,
    MailboxExists,
    MailboxNotFound,
    StoreError,
    StoreRefused,
)
from mailsuite.store.locking import DEFAULT_STALE_AFTER, LockTimeout
from mailsuite.store.mboxfile import MboxFile
from mailsuite.store.mboxmailbox import MboxMailbox
from mailsuite.store.mboxtree import FolderTree
from mailsuite.store.quota import Quota, mbox_files, warning_message
from mailsuite.store.safepath import AnchorCache
from mailsuite.store.spam import spam_marked
from mailsuite.threads import Blocking

log = Logger()


def store_errors(work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)`` with an OSError from the folder tree (a missing or unwritable home, a
    full disk) raised as StoreError: a clean NO for the client, not an internal error."""
    try:
        return work(*args)
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        raise StoreError(f"{e.strerror or e}{where}") from e


class MailboxConfig(Protocol):
    def inbox_path(self, account: Account) -> str: ...

    def folder_root(self, account: Account) -> str: ...


IDLE_BUDGET = 300_000  # messages of mailboxes nobody has open that stay in memory


@implementer(IMailStore)
class MboxStore(FolderAttrsStore):
    """All mailboxes of all accounts, as mbox files; see the module docstring.

    ``specials`` ({folder name: special-use flag}) defaults to
    ``mailbox_config.special_folders()`` (the ``[mailbox]`` keys) when the config has it.
    The file work runs through ``blocking`` (mailsuite.threads).
    """

    def __init__(
        self,
        mailbox_config: MailboxConfig,
        blocking: Blocking,
        now: Callable[[], datetime] | None = None,
        lock_timeout: float = 30.0,
        stale_after: float = DEFAULT_STALE_AFTER,
        specials: dict[str, str] | None = None,
        hostname: str = "",
    ) -> None:
        self._config = mailbox_config
        self.hostname = hostname or os.uname().nodename  # the quota warning's sender
        self.blocking = blocking
        self.now = now or (lambda: datetime.now(UTC))
        self._lock_timeout = lock_timeout
        self._stale_after = stale_after
        if specials is None:
            get = getattr(mailbox_config, "special_folders", None)
            specials = get() if get is not None else folders.DEFAULT_SPECIALS
        self.specials = folders.check_specials(specials)
        self._spam_header: str = getattr(mailbox_config, "spam_header", "")
        self._junk: str = getattr(mailbox_config, "junk", "") if self._spam_header else ""
        self._boxes: dict[tuple[str, str], MboxMailbox] = {}
        self._idle: OrderedDict[tuple[str, str], MboxMailbox] = OrderedDict()
        self.idle_budget = IDLE_BUDGET
        self._folder_locks: dict[str, defer.DeferredLock] = {}
        #: The INBOX MboxFile of each account delivered to: made once, not per message (its
        #: paths are names below trusted directories, walked again at every append: safepath)
        self._delivery_files: dict[Account, MboxFile] = {}
        #: The spool and home directories held open between operations (checked by path at
        #: each one: safepath.AnchorCache)
        self._anchors = AnchorCache()
        #: ``[mailbox] quota_rule``: every write to a mailbox is admitted by it (store/quota.py)
        self.quota = Quota.from_config(mailbox_config, self._quota_paths, self._quota_control,
                                       time.time)

    def settle(self) -> defer.Deferred[None]:
        """Fires when every operation queued on a mailbox so far is done (the compactions of
        what was expunged among them): the server waits for this before it stops."""
        boxes = list(self._boxes.values())
        d = defer.DeferredList([box.settled() for box in boxes], consumeErrors=True)
        return d.addCallback(lambda _: None)

    def _tree(self, account: Account) -> FolderTree:
        return FolderTree(
            account,
            self._config.folder_root(account),
            self._config.inbox_path(account),
            self._lock_timeout,
            self._stale_after,
            self._anchors,
        )

    def _file(self, account: Account, name: str = INBOX, path: str | None = None) -> MboxFile:
        tree = self._tree(account)
        return MboxFile(
            account,
            path or tree.inbox_path,
            tree.root,
            now=lambda: self.now().timestamp(),
            lock_timeout=self._lock_timeout,
            stale_after=self._stale_after,
            index_dir=tree.index_dir(name),
            anchors=tree.anchors,
        )

    def _forget(self, key: tuple[str, str], box: MboxMailbox) -> None:
        """Nobody has ``box`` open any more: keep it a while (a later open costs a stat, not
        an index read), the least recently used going first beyond ``idle_budget`` messages."""
        if box.users > 0 or self._boxes.get(key) is not box:
            return
        self._idle[key] = box
        self._idle.move_to_end(key)
        total = sum(len(b.messages) for b in self._idle.values())
        while self._idle and total > self.idle_budget:
            old_key, old = self._idle.popitem(last=False)
            total -= len(old.messages)
            self._drop(old_key, old)

    def _drop(self, key: tuple[str, str], box: MboxMailbox) -> None:
        if box.users <= 0 and self._boxes.get(key) is box:
            del self._boxes[key]

    def _drop_idle(self, account: Account, affected: Callable[[str], bool]) -> None:
        """Forget the idle mailboxes of ``account`` that a folder operation may move or remove
        (``affected`` names them); every other kept mailbox stays (a LIST at each login must
        not cost the next SELECT an index read)."""
        for key in [k for k in self._idle if k[0] == account.name and affected(k[1])]:
            self._drop(key, self._idle.pop(key))

    def _folder_lock(self, account: Account) -> defer.DeferredLock:
        return self._folder_locks.setdefault(account.name, defer.DeferredLock())

    @defer.inlineCallbacks
    def open(self, account: Account, name: str = INBOX) -> Any:
        try:
            name = folders.normalize(name)
        except InvalidMailboxName as e:
            raise MailboxNotFound(str(e)) from e
        key = (account.name, name)
        self._idle.pop(key, None)
        box = self._boxes.get(key)
        if box is None:
            tree = self._tree(account)
            path = yield self._folder_lock(account).run(
                self.blocking, store_errors, tree.mbox_path, name
            )
            if path is None:
                raise MailboxNotFound(name)
            box = self._boxes.get(key)
            if box is None:
                box = self._boxes[key] = MboxMailbox(self, key, self._file(account, name, path))
        box.users += 1
        try:
            yield box.refresh()
        except BaseException:
            box.close()
            raise
        return box

    def deliver_many(
        self, account: Account, items: list[tuple[bytes, str]]
    ) -> defer.Deferred[None]:
        """Deliver several ``(data, sender)`` to one INBOX with one lock and one fsync (group
        commit, mta/delivery.py); through the open INBOX when a session has it. Spam
        (``[mailbox] spam_header``, mailsuite.store.spam) goes to the ``junk`` folder instead:
        this is the one place every delivery to a mailbox passes (SMTP, LMTP, sendmail, the
        queue; the per-user agent under privilege separation), not .forward's files and
        commands. mta/delivery.py makes each batch all spam or none: a batch of both is
        written as two, and one failing fails the whole (its other part is written again)."""
        date = int(self.now().timestamp())
        marked = [bool(self._junk) and spam_marked(data, self._spam_header) for data, _ in items]
        if not any(marked):
            return self._deliver_inbox(account, list(items), date).addCallback(lambda _: None)
        spam = [item for item, m in zip(items, marked, strict=True) if m]
        ham = [item for item, m in zip(items, marked, strict=True) if not m]
        d = self._deliver_junk(account, spam, date)
        if ham:
            d.addCallback(lambda _: self._deliver_inbox(account, ham, date))
        return d.addCallback(lambda _: None)

    def _deliver_inbox(self, account: Account, items: list[tuple[bytes, str]],
                       date: int, admit: bool = True) -> defer.Deferred[Any]:
        box = self._boxes.get((account.name, INBOX))
        work = box._file.append_many if box is not None else \
            self._delivery_file(account).append_many
        if admit:
            work = self.admitted(account, work, items)
        if box is not None:
            d = box._run(work, items, date)
        else:
            d = self.blocking(work, None, items, date)
            d.addCallback(self._arrived, account)
        return self.after_write(d, account) if admit else d

    @defer.inlineCallbacks
    def _deliver_junk(self, account: Account, items: list[tuple[bytes, str]], date: int) -> Any:
        """Into the junk folder, made when missing (as the account: the agent runs as the
        user, and a root server makes it the user's); into INBOX when the account can have no
        such folder (no home, an unsafe path), as Dovecot's Sieve keeps what fileinto cannot."""
        try:
            box = yield self._open_made(account, self._junk)
        except LockTimeout:
            raise
        except StoreError as e:
            log.warn("{user}: spam kept in INBOX: {folder}: {why}", user=account.name,
                     folder=self._junk, why=e)
            return (yield self._deliver_inbox(account, items, date))
        try:
            yield self.after_write(box._run(self.admitted(
                account, box._file.append_many, items), items, date), account)
        finally:
            box.close()

    @defer.inlineCallbacks
    def _open_made(self, account: Account, name: str) -> Any:
        try:
            return (yield self.open(account, name))
        except MailboxNotFound:
            pass
        with contextlib.suppress(MailboxExists):  # made meanwhile
            yield self.create(account, name)
        return (yield self.open(account, name))

    def _delivery_file(self, account: Account) -> MboxFile:
        mfile = self._delivery_files.get(account)
        if mfile is None:
            if len(self._delivery_files) > 10000:
                self._delivery_files.clear()
            mfile = self._delivery_files[account] = self._file(account)
        return mfile

    def deliver(self, account: Account, data: bytes, sender: str) -> defer.Deferred[None]:
        if self._junk and spam_marked(data, self._spam_header):
            return self.deliver_many(account, [(data, sender)])
        box = self._boxes.get((account.name, INBOX))
        if box is not None:
            d = box._append(data, sender, frozenset(), None)
        else:
            date = int(self.now().timestamp())
            work = self.admitted(account, self._delivery_file(account).append, [(data, sender)])
            d = self.after_write(self.blocking(work, None, data, sender, frozenset(), date),
                                 account).addCallback(self._arrived, account)
        return d.addCallback(lambda _: None)

    def _arrived(self, result: Any, account: Account) -> Any:
        events.mail_arrived(self, account.name, INBOX)  # no session has it open: NOTIFY's bus
        return result

    # -- quota (store/quota.py) -------------------------------------------------------------

    def _quota_control(self, account: Account) -> str:
        """Where the usage record is: beside the indexes (mboxtree's control directory)."""
        return os.path.join(os.path.abspath(self._config.folder_root(account)), ".imap")

    def _quota_paths(self, account: Account) -> list[str]:
        """Blocking: the account's mbox files, INBOX first."""
        return mbox_files(self._config.folder_root(account), self._config.inbox_path(account))

    def quota_report(self, account: Account) -> defer.Deferred[Any] | None:
        """Deferred[(Usage, Limits)] of ``account`` (GETQUOTA, RCPT); None: no quota."""
        return None if self.quota is None else self.blocking(self.quota.report, account)

    def quota_admit(self, account: Account, size: int, count: int) -> defer.Deferred[None]:
        """Fails with QuotaExceeded when ``count`` messages of ``size`` bytes are too many."""
        if self.quota is None:
            return defer.succeed(None)
        return self.blocking(self.quota.admit, account, size, count)

    def admitted(self, account: Account, work: Callable[..., Any],
                 items: list[tuple[bytes, str]]) -> Callable[..., Any]:
        """``work`` (writing ``items``), refused first with QuotaExceeded over quota."""
        if self.quota is None:
            return work
        return self.quota.guarded(account, work, sum(len(m) for m, _ in items), len(items))

    def after_write(self, d: defer.Deferred[Any], account: Account) -> defer.Deferred[Any]:
        """``d`` (a write), then the quota warning when it crossed quota_warning (put into
        INBOX once, even over quota; the write's result is not held up by it)."""
        quota = self.quota
        if quota is None or not quota.warning:
            return d

        def due(result: Any) -> Any:
            check = self.blocking(quota.warn_due, account)
            check.addCallback(lambda due: self._send_warning(account) if due else None)
            check.addErrback(lambda f: log.failure("quota warning for {user}", f,
                                                   user=account.name))
            return result

        return d.addCallback(due)

    def _send_warning(self, account: Account) -> defer.Deferred[Any]:
        import email.utils
        assert self.quota is not None
        quota = self.quota

        def write(report: tuple[Any, Any]) -> defer.Deferred[Any]:
            when, (usage, limits) = self.now(), report
            message = warning_message(account, usage, limits, quota.warning, self.hostname,
                                      email.utils.format_datetime(when))
            log.info("{user}: quota warning ({percent}%) delivered", user=account.name,
                     percent=quota.warning)
            return self._deliver_inbox(account, [(message, "MAILER-DAEMON")],
                                       int(when.timestamp()), admit=False)

        return self.blocking(quota.report, account).addCallback(write)

    # -- folders --------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _folder_op(
        self,
        account: Account,
        affected: Callable[[str], bool],
        work: Callable[[], Any],
        then: Callable[[Any], None] | None = None,
    ) -> Any:
        """Run ``work`` in a thread, alone among the account's folder operations and while no
        operation runs on an open mailbox ``affected`` names; ``then(result)`` on the reactor
        thread before those mailboxes are let go."""
        lock = self._folder_lock(account)
        yield lock.acquire()
        self._drop_idle(account, affected)
        held: list[MboxMailbox] = []
        try:
            for (user, name), box in sorted(self._boxes.items()):
                if user == account.name and affected(name):
                    yield box._lock.acquire()
                    held.append(box)
            result = yield self.blocking(store_errors, work)
            if then is not None:
                then(result)
            return result
        finally:
            for box in held:
                box._lock.release()
            lock.release()

    def _moved(self, account: Account, moves: dict[str, tuple[str, str, str]]) -> None:
        """Open mailboxes that moved on disk: {old name: (new name, mbox path, index dir)}."""
        for old, (new, path, index_dir) in moves.items():
            box = self._boxes.pop((account.name, old), None)
            if box is None:
                continue
            box.name = new
            box._key = (account.name, new)
            box._file.move(path, index_dir)
            self._boxes[box._key] = box

    def list_mailboxes(self, account: Account) -> defer.Deferred[list[MailboxEntry]]:
        tree = self._tree(account)

        def work() -> tuple[dict[str, bool], dict[str, str], dict[str, str]]:
            try:
                found, moved = folders_and_specials()
                return found, moved, {**self.specials, **stored_uses(tree, list(found))}
            except StoreRefused as e:  # no home, a symlinked ~/mail: INBOX still works
                log.warn("{user}: only INBOX listed: {why}", user=account.name, why=e)
                return {INBOX: False}, {}, {}

        def folders_and_specials() -> tuple[dict[str, bool], dict[str, str]]:
            moved: dict[str, str] = {}
            made = tree.specials_made()
            todo = [name for name in self.specials if name not in made]
            if todo:
                v2, subscribed = tree.read_subscriptions()
                for name in todo:
                    if not tree.exists(name):
                        moved.update(tree.create(name))
                    if name not in subscribed:
                        subscribed.append(name)
                tree.write_subscriptions(v2, subscribed)
                tree.record_specials(made | set(todo))
            return tree.list_folders(), moved

        def entries(result: tuple[dict[str, bool], Any, dict[str, str]]) -> list[MailboxEntry]:
            found, _, uses = result
            return [
                MailboxEntry(name, found[name], uses.get(name))
                for name in folders.list_order(found)
            ]

        specials_parents = {p for name in self.specials for p in folders.parents(name)}
        d = self._folder_op(
            account,
            specials_parents.__contains__,
            work,
            lambda result: self._converted(account, tree, result[1]),
        )
        return d.addCallback(entries)

    def _converted(self, account: Account, tree: FolderTree, moved: dict[str, str]) -> None:
        self._moved(account, {n: (n, path, tree.index_dir(n)) for n, path in moved.items()})

    def create(self, account: Account, name: str) -> defer.Deferred[None]:
        try:
            name = folders.normalize(name)
        except InvalidMailboxName as e:
            return defer.fail(e)
        tree = self._tree(account)
        parents = set(folders.parents(name))
        d = self._folder_op(
            account,
            parents.__contains__,
            lambda: tree.create(name),
            lambda moved: self._converted(account, tree, moved),
        )
        return d.addCallback(lambda _: None)

    def delete(self, account: Account, name: str) -> defer.Deferred[None]:
        try:
            name = folders.normalize(name)
        except InvalidMailboxName as e:
            return defer.fail(e)
        if name == INBOX:
            return defer.fail(InvalidMailboxName("INBOX cannot be deleted"))
        tree = self._tree(account)

        def then(_: None) -> None:
            box = self._boxes.pop((account.name, name), None)
            if box is not None:
                box._gone()

        d = self._folder_op(account, name.__eq__, lambda: tree.delete(name), then)
        return d.addCallback(lambda _: None)

    def rename(self, account: Account, old: str, new: str) -> defer.Deferred[None]:
        try:
            old, new = folders.normalize(old), folders.normalize(new)
        except InvalidMailboxName as e:
            return defer.fail(e)
        if new == INBOX:
            return defer.fail(MailboxExists(INBOX))
        if folders.is_under(new, old) or new == old:
            return defer.fail(InvalidMailboxName(f"cannot rename {old!r} to {new!r}"))
        tree = self._tree(account)
        if old == INBOX:
            return self._rename_inbox(account, tree, new)
        parents = set(folders.parents(new))

        def affected(name: str) -> bool:
            return name == old or folders.is_under(name, old) or name in parents

        def work() -> dict[str, tuple[str, str, str]]:
            if not tree.exists(old):
                raise MailboxNotFound(old)
            moving = [n for n in self._open_names(account) if n == old or folders.is_under(n, old)]
            converted = tree.rename(old, new)
            moves = {n: (n, path, tree.index_dir(n)) for n, path in converted.items()}
            for name in moving:
                to = folders.renamed(name, old, new)
                moves[name] = (to, tree.mbox_path(to) or tree.folder_path(to), tree.index_dir(to))
            v2, subscribed = tree.read_subscriptions()
            renamed = [
                folders.renamed(s, old, new) if s == old or folders.is_under(s, old) else s
                for s in subscribed
            ]
            if renamed != subscribed:
                tree.write_subscriptions(v2, renamed)
            return moves

        d = self._folder_op(account, affected, work, lambda moves: self._moved(account, moves))
        return d.addCallback(lambda _: None)

    def _open_names(self, account: Account) -> list[str]:
        return [name for (user, name) in list(self._boxes) if user == account.name]

    @defer.inlineCallbacks
    def _rename_inbox(self, account: Account, tree: FolderTree, new: str) -> Any:
        """RFC 3501: INBOX's messages move into ``new``; INBOX stays, empty."""
        parents = set(folders.parents(new))

        def prepare() -> dict[str, str]:
            if tree.exists(new):
                raise MailboxExists(new)
            return tree.make_parents(new)

        lock = self._folder_lock(account)
        yield lock.acquire()
        self._drop_idle(account, lambda name: name in parents or name == new)
        try:
            yield self._folder_op_locked(account, parents, prepare, tree)
            target = self._file(account, new, tree.folder_path(new))
            box = self._boxes.get((account.name, INBOX))
            if box is not None:
                if box._hidden:
                    box._compact()  # what was expunged does not move (an earlier try failed)
                yield box._run(box._file.move_all, target)
            else:
                yield self.blocking(self._file(account).move_all, None, target)
        finally:
            lock.release()

    @defer.inlineCallbacks
    def _folder_op_locked(
        self,
        account: Account,
        names: set[str],
        work: Callable[[], dict[str, str]],
        tree: FolderTree,
    ) -> Any:
        held = []
        try:
            for (user, name), box in sorted(self._boxes.items()):
                if user == account.name and name in names:
                    yield box._lock.acquire()
                    held.append(box)
            moved = yield self.blocking(store_errors, work)
            self._converted(account, tree, moved)
        finally:
            for box in held:
                box._lock.release()

    def subscriptions(self, account: Account) -> defer.Deferred[set[str]]:
        tree = self._tree(account)
        d = self._folder_lock(account).run(self.blocking, store_errors, tree.read_subscriptions)
        return d.addCallback(lambda result: set(result[1]))

    def _subscription(self, account: Account, name: str, on: bool) -> defer.Deferred[None]:
        try:
            name = folders.normalize(name)
        except InvalidMailboxName as e:
            return defer.fail(e)
        tree = self._tree(account)

        def work() -> None:
            v2, subscribed = tree.read_subscriptions()
            if on and name not in subscribed:
                tree.write_subscriptions(v2, [*subscribed, name])
            elif not on and name in subscribed:
                tree.write_subscriptions(v2, [s for s in subscribed if s != name])

        return self._folder_lock(account).run(self.blocking, store_errors, work)

    def subscribe(self, account: Account, name: str) -> defer.Deferred[None]:
        return self._subscription(account, name, True)

    def unsubscribe(self, account: Account, name: str) -> defer.Deferred[None]:
        return self._subscription(account, name, False)
