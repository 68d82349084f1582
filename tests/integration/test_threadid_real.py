"""THREADID (RFC 8474 5.2) through the real server (mbox store on disk) with imaplib: the
messages of a thread share an id, SEARCH THREADID finds them, and the ids are the same after a
restart (made of stored data only)."""

from __future__ import annotations

import os
import random
import re
import socket

from twisted.trial import unittest

from tests.integration import harness
from tests.integration.harness import Site
from tests.integration.test_end_to_end import Clients, message

ROOT_ONLY = None if os.geteuid() == 0 else "the real server runs as root"
PORTS = range(22400, 22500)  # this test's loopback ports


_given: set[int] = set()


def _port() -> int:
    """A free port of PORTS not given before: a site's services are bound only once all are
    picked, so a port free twice must not be given twice (it was: "address in use")."""
    for port in random.sample(PORTS, len(PORTS)):
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise AssertionError("no free port")


def thread_ids(m) -> dict[bytes, bytes]:  # type: ignore[no-untyped-def]
    typ, data = m.fetch("1:*", "(UID THREADID)")
    assert typ == "OK", data
    return dict(re.findall(rb"UID (\d+) THREADID \(([A-Za-z0-9_-]+)\)", b" ".join(data)))


class ThreadIdRealTests(unittest.TestCase):
    skip = ROOT_ONLY

    def setUp(self) -> None:
        self.patch(harness, "free_port", _port)
        self.site = Site(self)
        self.c = Clients(self.site)
        self.site.start()

    def test_thread_ids_search_and_restart(self) -> None:
        """Three messages, two in one thread (In-Reply-To): FETCH THREADID gives one id to the
        two, another to the third; UID SEARCH THREADID finds the two; after a restart the
        same ids."""
        first = message("topic", "first\n")
        reply = message("reply", "second\n").replace(
            b"Message-ID:", b"In-Reply-To: <topic@remote.test>\nMessage-ID:")
        for data in (first, message("elsewhere", "third\n"), reply):
            self.c.send(data, ["boss@example.test"])
        m = self.c.imap()
        m.select("INBOX")
        before = thread_ids(m)
        self.assertEqual(sorted(before), [b"1", b"2", b"3"])
        self.assertEqual(before[b"1"], before[b"3"])
        self.assertNotEqual(before[b"1"], before[b"2"])
        typ, data = m.uid("SEARCH", "THREADID", before[b"1"].decode())
        self.assertEqual((typ, data), ("OK", [b"1 3"]))
        m.logout()
        self.site.restart()
        m = self.c.imap()
        m.select("INBOX")
        self.assertEqual(thread_ids(m), before)
        m.logout()
        self.assertNotIn("Traceback", self.site.log())
