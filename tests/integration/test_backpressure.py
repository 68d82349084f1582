"""A client that sends commands and never reads the replies (issue 9, S5): the real server
stops reading it once its replies pile up, instead of buffering them without bound."""

from __future__ import annotations

import socket
import time

from twisted.trial import unittest

from tests.integration.harness import Site

SEND = 30 * 1024 * 1024  # of input, each line answered with ten times its size
GROWTH = 25 * 1024 * 1024  # more than the kernel's socket buffers, far less than 300 MB


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class UnreadRepliesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.site = Site(self)
        self.site.start()

    def flood(self, port: int, line: bytes) -> int:
        """Send ``line`` over and over for at most 10 s without reading, or until the server
        closes the connection (a limit of commands before login); the bytes taken."""
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(s.close)
        s.recv(4096)  # the greeting
        s.setblocking(False)
        chunk, sent = line * (65536 // len(line)), 0
        deadline = time.monotonic() + 10
        while sent < SEND and time.monotonic() < deadline:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                break
        return sent

    def check(self, service: str, line: bytes) -> None:
        assert self.site.process is not None
        pid = self.site.process.pid
        before = rss(pid)
        self.flood(self.site.ports[service], line)
        time.sleep(0.5)
        self.assertLess(rss(pid) - before, GROWTH)

    def test_imap_before_login(self) -> None:
        """b'x\\r\\n' is answered '* BAD Missing tag or command.': 10 times the input (until
        the third, which ends the connection: Dovecot's invalid commands before login)."""
        self.check("imap", b"x\r\n")

    def test_pop3_before_login(self) -> None:
        """b'x\\r\\n' is answered '-ERR Unknown command.': 8 times the input (until the
        third, which ends the connection)."""
        self.check("pop3", b"x\r\n")
