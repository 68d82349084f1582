"""The mbox store: the conformance tests, plus what only real files can show (other programs
writing the same mailbox, locks, crashes, ownership)."""

from __future__ import annotations

import os
import stat
import time

from twisted.internet import defer
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.accounts import Account
from mailsuite.store import mbox as mbox_module
from mailsuite.store import mboxfile
from mailsuite.store.interfaces import StoreError
from mailsuite.store.locking import LockTimeout, try_fcntl_lock
from mailsuite.store.mbox import MboxStore
from mailsuite.store.mboxformat import to_stored
from tests.store_conformance import MSG1, MSG2, StoreConformanceMixin


class FakeMailboxConfig:
    """What cfg.mailbox offers: INBOX in a spool directory, folders under ~/mail."""

    def __init__(self, spool: str) -> None:
        self.spool = spool

    def inbox_path(self, account: Account) -> str:
        return os.path.join(self.spool, account.name)

    def folder_root(self, account: Account) -> str:
        return os.path.join(account.home, "mail")


def asctime(when: float) -> str:
    return time.asctime(time.localtime(when))


class MboxTestCase(unittest.TestCase):
    """Temp spool and home; blocking work runs inline (no threads, no reactor)."""

    def setUp(self) -> None:
        root = self.mktemp()
        self.spool = os.path.join(root, "spool")
        home = os.path.join(root, "home", "boss")
        os.makedirs(self.spool)
        os.makedirs(home)
        self.account = Account("boss", os.getuid(), os.getgid(), home)
        self.path = os.path.join(self.spool, "boss")
        self.index_path = os.path.join(home, "mail", ".imap", "INBOX", "mailsuite.index")
        self.clock = [1_800_000_000.0]
        self.patch(threads, "run_inline", True)

    def now(self):
        from datetime import UTC, datetime

        return datetime.fromtimestamp(self.clock[0], UTC)

    def make_store(self, **kw) -> MboxStore:
        kw.setdefault("lock_timeout", 0.2)
        self.store = MboxStore(FakeMailboxConfig(self.spool), now=self.now, **kw)
        return self.store

    def write(self, data: bytes, mode: str = "ab") -> None:
        with open(self.path, mode) as f:
            f.write(data)

    def external_append(self, data: bytes, sender: str = "x@example.test") -> None:
        """Append as Postfix local(8) does."""
        line = f"From {sender}  {asctime(self.clock[0])}\n".encode()
        self.write(line + to_stored(data) + b"\n")

    def read_file(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()


class MboxConformanceTests(MboxTestCase, StoreConformanceMixin):
    """The mbox store passes the store conformance tests."""
