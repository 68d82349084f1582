"""Hibernation of IDLE sessions through the real server (privilege separation on): a session
in IDLE leaves its agent (which then exits), and comes back, with what changed meanwhile, on
new mail, on a change another session makes, or on the client's next bytes."""

from __future__ import annotations

import grp
import os
import select
import socket
import time

from twisted.trial import unittest

from tests.integration.harness import Site
from tests.integration.test_end_to_end import Clients, message
from tests.integration.test_privsep import SKIP, descendants, status, wait_until

WAIT = 20.0


class Line:
    """A raw IMAP connection: what a client sends, and every line it gets (bounded waits)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.buf = b""
        self.expect(b"* OK")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def expect(self, start: bytes, timeout: float = WAIT) -> list[bytes]:
        """Lines up to and including the first starting with ``start``."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            while b"\r\n" in self.buf:
                line, self.buf = self.buf.split(b"\r\n", 1)
                got.append(line)
                if line.startswith(start):
                    return got
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.sock], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no {start!r} within {timeout} s; got {got!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"closed before {start!r}; got {got!r}")
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def write_mbox(site: Site, user: str, count: int) -> None:
    """``count`` messages in ``user``'s INBOX, the user's own file (0600, group mail)."""
    path = site.inbox(user)
    with open(path, "wb") as f:
        for n in range(count):
            f.write(b"From alice@remote.test Mon Nov 30 10:00:00 2026\n"
                    + message(f"m{n}", "body").replace(b"\r\n", b"\n") + b"\n")
    os.chown(path, site.uids[user], grp.getgrnam("mail").gr_gid)
    os.chmod(path, 0o600)


class HibernateTests(unittest.TestCase):
    skip = SKIP

    def setUp(self) -> None:
        self.site = Site(self, imap_options="imap_hibernate_timeout = 1s")
        # three messages written as another program would (a delivery over SMTP keeps a
        # channel to the agent open for a while, and the agent with it)
        write_mbox(self.site, "boss", 3)
        self.site.start()
        self.c = Clients(self.site)

    def agents_of(self, user: str) -> list[int]:
        assert self.site.process is not None
        uid = self.site.uids[user]
        out = []
        for pid in descendants(self.site.process.pid):
            try:
                if int(status(pid)["Uid"].split()[0]) == uid:
                    out.append(pid)
            except (OSError, KeyError):
                continue
        return out

    def idle(self) -> Line:
        line = Line(self.site.ports["imap"])
        line.send(b"a LOGIN boss secret\r\nb SELECT INBOX\r\n")
        line.expect(b"b OK")
        line.send(b"c IDLE\r\n")
        line.expect(b"+ ")
        self.addCleanup(line.close)
        return line

    def asleep(self) -> None:
        """The session has left its agent, and the agent has exited."""
        deadline = time.monotonic() + WAIT
        while self.agents_of("boss"):
            if time.monotonic() > deadline:
                raise AssertionError("boss's agent did not exit")
            time.sleep(0.1)

    def test_new_mail_wakes_it(self) -> None:
        line = self.idle()
        self.asleep()
        self.c.send(message("new", "body"), ["boss@example.test"])
        got = line.expect(b"* 1 RECENT")  # the mail that came while it slept is recent here
        self.assertEqual(got[-2:], [b"* 4 EXISTS", b"* 1 RECENT"])
        line.send(b"DONE\r\n")
        line.expect(b"c OK")
        line.send(b"d FETCH 4 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
        got = line.expect(b"d OK")
        self.assertIn(b"Subject: new", b"\r\n".join(got))
        line.send(b"e LOGOUT\r\n")
        line.expect(b"e OK")

        def log() -> str:
            with open(self.site.maillog) as f:
                return f.read()

        wait_until(lambda: "Logged out in=" in log(), "the logout line")
        self.assertNotIn("Disconnected: Connection closed", log())

    def test_changes_of_another_session(self) -> None:
        """A flag set and a message expunged by another client while this one sleeps reach
        it as RFC 3501 says: EXPUNGE, then FETCH FLAGS under the new numbers."""
        line = self.idle()
        self.asleep()
        other = self.c.imap()
        other.select("INBOX")
        other.store("3", "+FLAGS", "(\\Flagged)")
        other.store("2", "+FLAGS", "(\\Deleted)")
        other.expunge()
        other.logout()
        # woken by the first change; the others reach the thawed session as they happen
        got = line.expect(b"* 2 EXPUNGE", timeout=WAIT)
        self.assertFalse([g for g in got if b"EXPUNGE" in g or b"EXISTS" in g][:-1], got)
        line.send(b"DONE\r\nd FETCH 1:* (FLAGS)\r\n")
        got = line.expect(b"d OK")
        # (the flag change may still come as an untagged FETCH before IDLE's end: RFC 3501
        # allows it there; the FETCH command's own answers follow "c OK")
        answers = got[[g.split(b" ")[0] for g in got].index(b"c") + 1:]
        fetched = [g for g in answers if g.startswith(b"* ") and b" FETCH " in g]
        self.assertEqual(len(fetched), 2, got)
        self.assertIn(b"\\Flagged", fetched[1])

    def test_pipelined_bytes_wake_it(self) -> None:
        """What the client sends to a sleeping session is the thawed session's first input,
        in order, once."""
        line = self.idle()
        self.asleep()
        line.send(b"DONE\r\nd NOOP\r\ne SEARCH ALL\r\n")
        got = line.expect(b"e OK")
        tags = [g.split(b" ")[0] for g in got if not g.startswith(b"*")]
        self.assertEqual(tags, [b"c", b"d", b"e"], got)
        self.assertIn(b"* SEARCH 1 2 3", got)

    def test_disconnect_while_asleep_is_logged(self) -> None:
        line = self.idle()
        self.asleep()
        line.close()

        def logged() -> bool:
            with open(self.site.maillog) as f:
                return "Disconnected: Connection closed (IDLE hibernated)" in f.read()

        wait_until(logged, "the disconnect line")
        assert self.site.process is not None
        # the network process forgot the session: a new login still works
        m = self.c.imap()
        self.assertEqual(m.select("INBOX")[0], "OK")
        m.logout()

    def test_off(self) -> None:
        """imap_hibernate_timeout = 0: the session stays in its agent."""
        self.site.stop()
        self.site = Site(self, imap_options="imap_hibernate_timeout = 0")
        write_mbox(self.site, "boss", 1)
        self.site.start()
        line = Line(self.site.ports["imap"])
        self.addCleanup(line.close)
        line.send(b"a LOGIN boss secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
        line.expect(b"+ ")
        time.sleep(3)
        self.assertTrue(self.agents_of("boss"))

    def test_qresync_session_sleeps_and_keeps_it(self) -> None:
        """A QRESYNC client (Thunderbird) in IDLE hibernates too, and once thawed still gets
        VANISHED for an expunge and UID and MODSEQ in its unsolicited FETCH (RFC 7162)."""
        line = Line(self.site.ports["imap"])
        self.addCleanup(line.close)
        line.send(b"a LOGIN boss secret\r\ne ENABLE QRESYNC\r\nb SELECT INBOX\r\n")
        line.expect(b"b OK")
        line.send(b"c IDLE\r\n")
        line.expect(b"+ ")
        self.asleep()
        other = self.c.imap()
        other.select("INBOX")
        other.store("3", "+FLAGS", "(\\Flagged)")
        other.store("2", "+FLAGS", "(\\Deleted)")
        other.expunge()
        other.logout()
        got = line.expect(b"* VANISHED 2", timeout=WAIT)
        line.send(b"DONE\r\nd NOOP\r\n")
        got += line.expect(b"d OK")
        self.assertFalse([g for g in got if b"EXPUNGE" in g], got)
        everything = b"\r\n".join(got)  # (the FETCH comes before VANISHED or after it)
        self.assertRegex(everything, rb"\* \d FETCH \(UID 3 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)")
