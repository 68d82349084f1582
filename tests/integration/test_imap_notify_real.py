"""NOTIFY (RFC 5465) and UNAUTHENTICATE (RFC 8437) against the real server (twistd, mbox store,
privilege separation when the tests run as root): Python's imaplib in two connections, mail
arriving by SMTP into a mailbox the watching session has not selected."""

from __future__ import annotations

import contextlib
import imaplib
import smtplib

from twisted.trial import unittest

from tests.integration.harness import PRIVSEP, Site

PORTS = {"smtp": 21510, "pop3": 21511, "imap": 21512}  # this module's, in 21500-21599
imaplib.Commands.setdefault("NOTIFY", ("AUTH", "SELECTED"))
imaplib.Commands.setdefault("UNAUTHENTICATE", ("AUTH", "SELECTED"))


def _untagged(client: imaplib.IMAP4, want: bytes, seconds: float = 15.0) -> bytes:
    """Read response lines the server sends between commands until one holds ``want``."""
    client.sock.settimeout(seconds)
    seen = b""
    for _ in range(50):
        line = client.readline()
        if not line:
            break
        seen += line
        if want in line:
            return line
    raise AssertionError(f"no {want!r} in {seen!r}")


def _close(client: imaplib.IMAP4) -> None:
    with contextlib.suppress(OSError):
        client.shutdown()


class NotifyRealTests(unittest.TestCase):
    def site(self) -> Site:
        site = Site(self, mail_extra="mynetworks = 127.0.0.0/8")
        site.ports = dict(PORTS)
        site.config = site._write("mail.ini", site.ini())
        site.start()
        return site

    def test_two_connections_and_smtp_delivery(self) -> None:
        site = self.site()
        watcher = imaplib.IMAP4("127.0.0.1", site.ports["imap"], timeout=15)
        other = imaplib.IMAP4("127.0.0.1", site.ports["imap"], timeout=15)
        self.addCleanup(_close, other)
        self.addCleanup(_close, watcher)
        watcher.login("boss", "secret")
        other.login("boss", "secret")
        self.assertIn(b"NOTIFY", watcher.capability()[1][0].split())
        self.assertEqual(watcher.create("Work")[0], "OK")
        self.assertEqual(watcher.select("Work")[0], "OK")
        typ, data = watcher._simple_command(
            "NOTIFY", "SET", "STATUS", "(selected (MessageNew MessageExpunge))",
            "(personal (MessageNew MessageExpunge MailboxName SubscriptionChange))")
        self.assertEqual(typ, "OK", data)
        self.assertIn(b"INBOX", b" ".join(watcher.untagged_responses.pop("STATUS", [])))

        # another session makes a folder: LIST between commands
        self.assertEqual(other.create("Projects")[0], "OK")
        self.assertIn(b'"/" Projects', _untagged(watcher, b"* LIST"))

        # SMTP delivery into INBOX, which the watcher has not selected: STATUS
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=15) as smtp:
            smtp.sendmail("bob@example.org", ["boss@example.test"],
                          b"Subject: hello\r\n\r\nbody\r\n")
        line = _untagged(watcher, b"* STATUS INBOX")
        self.assertIn(b"MESSAGES 1", line)

        # the other session appends to the selected mailbox: EXISTS at once
        other.append("Work", None, None, b"Subject: w\r\n\r\nwork\r\n")
        self.assertIn(b"* 1 EXISTS", _untagged(watcher, b"EXISTS"))

        watcher.sock.settimeout(15)
        self.assertEqual(watcher._simple_command("NOTIFY", "NONE")[0], "OK")
        self.assertNotIn("Traceback", site.log())
        self.assertEqual(watcher.logout()[0], "BYE")
        self.assertEqual(other.logout()[0], "BYE")

    def test_unauthenticate(self) -> None:
        """Offered after login only, and not by a privilege-separated server (its agent runs
        as the user); where offered, the same connection logs in again."""
        site = self.site()
        client = imaplib.IMAP4("127.0.0.1", site.ports["imap"], timeout=15)
        self.addCleanup(_close, client)
        self.assertNotIn("UNAUTHENTICATE", client.capabilities)
        client.login("boss", "secret")
        caps = client.capability()[1][0].split()
        if PRIVSEP:
            self.assertNotIn(b"UNAUTHENTICATE", caps)
            with self.assertRaises(imaplib.IMAP4.error):  # BAD: not a command here
                client._simple_command("UNAUTHENTICATE")
            return
        self.assertIn(b"UNAUTHENTICATE", caps)
        client.select("INBOX")
        self.assertEqual(client._simple_command("UNAUTHENTICATE")[0], "OK")
        client.state = "NONAUTH"
        client.login("boss", "secret")
        self.assertEqual(client.select("INBOX")[0], "OK")
        client.logout()

