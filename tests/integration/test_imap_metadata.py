"""METADATA (RFC 5464) with the stdlib's imaplib against the real, privilege-separated server
(imap_metadata = yes): entries set, read back in a later session after a restart (durable, in
the user's own files), moved with RENAME and gone with DELETE."""

from __future__ import annotations

import imaplib
import os

from twisted.trial import unittest

from tests.integration.harness import PRIVSEP, SERVICES, Site

SKIP = None if PRIVSEP else "needs root and the mail_owner user (setup-debian.sh test makes it)"
#: this helper's loopback ports (21600-21699)
PORTS = dict(zip(SERVICES, range(21630, 21640), strict=False))
# imaplib knows no METADATA commands: the states it may send them in
for _name in ("GETMETADATA", "SETMETADATA"):
    imaplib.Commands.setdefault(_name, ("AUTH", "SELECTED"))


def metadata(client: imaplib.IMAP4, mailbox: str, *entries: str) -> list[bytes]:
    """GETMETADATA through imaplib (it has no method of its own): the METADATA data."""
    typ, data = client._simple_command("GETMETADATA", mailbox, "(" + " ".join(entries) + ")")
    assert typ == "OK", (typ, data)
    _, found = client._untagged_response(typ, data, "METADATA")
    return [item if isinstance(item, bytes) else b"".join(item) for item in found]


def setmetadata(client: imaplib.IMAP4, mailbox: str, pairs: str) -> str:
    typ, data = client._simple_command("SETMETADATA", mailbox, "(" + pairs + ")")
    return f"{typ} {data}"


class MetadataImaplibTests(unittest.TestCase):
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

    def test_set_get_restart_rename_delete(self) -> None:
        client = self.client()
        self.assertIn(b"METADATA", client.capability()[1][0].split())  # after login only
        self.assertTrue(setmetadata(client, '""', '/shared/comment "Shared comment"')
                        .startswith("OK"))
        client.create("Work")
        self.assertTrue(setmetadata(client, "Work", '/private/comment "about work"')
                        .startswith("OK"))
        self.assertEqual(metadata(client, "Work", "/private/comment"),
                         [b'Work (/private/comment "about work")'])
        client.logout()
        self.site.restart()
        client = self.client()
        self.assertEqual(metadata(client, '""', "/shared/comment"),
                         [b'"" (/shared/comment "Shared comment")'])
        home = self.site.home("boss")
        path = os.path.join(home, "mail", ".imap", "Work", ".mailsuite-metadata")
        self.assertEqual(os.stat(path).st_uid, self.site.uids["boss"])
        self.assertEqual(client.rename("Work", "Play")[0], "OK")
        self.assertEqual(metadata(client, "Play", "/private/comment"),
                         [b'Play (/private/comment "about work")'])
        self.assertEqual(client.delete("Play")[0], "OK")
        client.create("Play")
        self.assertEqual(metadata(client, "Play", "/private/comment"),
                         [b"Play (/private/comment NIL)"])
        client.logout()
