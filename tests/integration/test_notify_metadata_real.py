"""NOTIFY's MailboxMetadataChange and ServerMetadataChange with imaplib against the real
server (imap_metadata = yes): one client's SETMETADATA reaches the other client's NOTIFY as
the unsolicited METADATA response of entry names (RFC 5464 4.4.2)."""

from __future__ import annotations

import imaplib

from twisted.trial import unittest

from tests.integration.harness import PRIVSEP, SERVICES, Site

SKIP = None if PRIVSEP else "needs root and the mail_owner user (setup-debian.sh test makes it)"
#: this helper's loopback ports (22400-22499)
PORTS = dict(zip(SERVICES, range(22410, 22420), strict=False))
for _name in ("SETMETADATA", "NOTIFY"):  # commands imaplib does not know
    imaplib.Commands.setdefault(_name, ("AUTH", "SELECTED"))


class NotifyMetadataImaplibTests(unittest.TestCase):
    skip = SKIP

    def setUp(self) -> None:
        self.site = Site(self, imap_options="imap_metadata = yes")
        self.site.ports = dict(PORTS)
        self.site.config = self.site._write("mail.ini", self.site.ini())
        self.site.start()

    def client(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.site.ports["imap"], timeout=15)
        self.addCleanup(client.sock.close)
        client.login("boss", "secret")
        return client

    def test_other_clients_setmetadata_is_told(self) -> None:
        """Client A: NOTIFY SET (personal (MailboxMetadataChange ServerMetadataChange));
        client B sets an INBOX entry and a server entry; A's NOOP collects both METADATA
        responses, names only; B hears nothing of its own."""
        a, b = self.client(), self.client()
        typ, data = a._simple_command(
            "NOTIFY", "SET (personal (MailboxMetadataChange ServerMetadataChange))")
        self.assertEqual(typ, "OK", data)
        for mailbox, pair in (("INBOX", '/private/comment "hi"'),
                              ('""', '/shared/comment "motd"')):
            typ, data = b._simple_command("SETMETADATA", mailbox, "(" + pair + ")")
            self.assertEqual(typ, "OK", data)
        self.assertEqual(a.noop()[0], "OK")
        self.assertEqual(a.untagged_responses.pop("METADATA", None),
                         [b"INBOX /private/comment", b'"" /shared/comment'])
        self.assertEqual(b.noop()[0], "OK")
        self.assertNotIn("METADATA", b.untagged_responses)
        a.logout()
        b.logout()
        self.assertNotIn("Traceback", self.site.log())
