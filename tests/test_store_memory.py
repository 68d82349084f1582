"""The memory store passes the store conformance tests."""

from twisted.trial import unittest

from mailsuite.accounts import Account
from mailsuite.store.memory import MemoryStore
from tests.store_conformance import FolderConformanceMixin, StoreConformanceMixin


class MemoryStoreTests(StoreConformanceMixin, FolderConformanceMixin, unittest.TestCase):
    account = Account("boss", 1000, 1000, "/home/boss")

    def make_store(self, specials=None):
        self.store = MemoryStore(specials=specials)
        return self.store

    def external_append(self, data):
        self.store._box(self.account, "INBOX", create=True).external_append(data)
