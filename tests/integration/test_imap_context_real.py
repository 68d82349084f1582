"""CONTEXT=SEARCH from the stdlib's imaplib against the IMAP server on a real TCP port
(127.0.0.1, port 0) over an mbox store (header reads in the store's threads): one client keeps
a ``RETURN (UPDATE)`` search, a second one appends and stores, the first sees ADDTO and
REMOVEFROM on its NOOPs."""

from __future__ import annotations

import imaplib
import time
from typing import Any

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.integration import test_imap_sort_real as sort_real


def _mail(sender: str, subject: str) -> bytes:
    return f"From: {sender}\nSubject: {subject}\n\nbody\n".encode()


class ImaplibContextTests(unittest.TestCase):
    # the mbox store, the account as the user running the tests: as the SORT test's
    setUp = sort_real.ImaplibSortTests.setUp
    _avatar = sort_real.ImaplibSortTests._avatar

    @staticmethod
    def _until(client: imaplib.IMAP4, wanted: bytes) -> list[bytes]:
        """NOOP until an ESEARCH with ``wanted`` comes (the header read is in a thread)."""
        seen: list[bytes] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            client.noop()
            seen += [d for d in client.response("ESEARCH")[1] if d]
            if any(wanted in d for d in seen):
                break
            time.sleep(0.05)
        return seen

    def _clients(self, port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with imaplib.IMAP4("127.0.0.1", port) as one, imaplib.IMAP4("127.0.0.1", port) as two:
            for c in (one, two):
                c.login("boss", "secret")
            two.append("INBOX", None, None, _mail("amy@x.org", "one"))
            two.append("INBOX", None, None, _mail("bob@x.org", "two"))
            one.select("INBOX")
            two.select("INBOX")
            out["caps"] = one.capabilities
            out["search"] = one.uid("SEARCH", "RETURN", "(UPDATE ALL)", "FROM", "amy")
            out["first"] = one.response("ESEARCH")
            two.append("INBOX", None, None, _mail("amy@x.org", "three"))
            out["added"] = self._until(one, b"ADDTO")
            two.store("1", "+FLAGS", "(\\Deleted)")
            two.expunge()
            out["removed"] = self._until(one, b"REMOVEFROM")
            tag = out["first"][1][0].split(b'"')[1].decode()
            imaplib.Commands.setdefault("CANCELUPDATE", ("SELECTED",))  # imaplib has no name
            out["cancel"] = one._simple_command("CANCELUPDATE", f'"{tag}"')
        return out

    @defer.inlineCallbacks
    def test_update_seen_by_imaplib(self):  # type: ignore[no-untyped-def]
        out = yield threads.deferToThread(self._clients, self.port.getHost().port)
        self.assertIn("CONTEXT=SEARCH", out["caps"])
        self.assertIn("CONTEXT=SORT", out["caps"])
        self.assertEqual(out["search"][0], "OK")
        self.assertRegex(out["first"][1][0], rb'^\(TAG "[A-Z]+\d+"\) UID ALL 1$')
        self.assertTrue(any(d.endswith(b" UID ADDTO (0 3)") for d in out["added"]), out)
        self.assertTrue(any(d.endswith(b" UID REMOVEFROM (0 1)") for d in out["removed"]), out)
        self.assertEqual(out["cancel"][0], "OK")
