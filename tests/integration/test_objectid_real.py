"""OBJECTID and CREATE-SPECIAL-USE through the real server (mbox store on disk) with imaplib:
MAILBOXID and the special use given at CREATE survive RENAME and a restart; EMAILID is the same
after the server reads the mailbox again."""

from __future__ import annotations

import os
import re

from twisted.trial import unittest

from tests.integration.harness import Site
from tests.integration.test_end_to_end import Clients, message

ROOT_ONLY = None if os.geteuid() == 0 else "the real server runs as root"


def code(typ_data: tuple[str, list[bytes]]) -> bytes:
    m = re.search(rb"\(([A-Za-z0-9_-]+)\)", b" ".join(typ_data[1]))
    assert m is not None, typ_data
    return m.group(1)


class ObjectIdRealTests(unittest.TestCase):
    skip = ROOT_ONLY

    def setUp(self) -> None:
        self.site = Site(self)
        self.c = Clients(self.site)
        self.site.start()

    def test_ids_and_uses_survive_rename_and_restart(self) -> None:
        """CREATE (USE (\\Archive)) answers a MAILBOXID; after RENAME and a restart STATUS
        gives the same one, LIST (SPECIAL-USE) still shows \\Archive under the new name, the
        file is beside the folder's index; FETCH EMAILID of a delivered message is the same
        before and after the restart; SELECT sends INBOX's MAILBOXID, the same each time."""
        self.c.send(message("objectid", "body\n"), ["boss@example.test"])
        m = self.c.imap()
        typ, data = m._simple_command("CREATE", "Keep (USE (\\Archive))")
        self.assertEqual(typ, "OK", data)
        created = m.untagged_responses.pop("MAILBOXID")[-1].strip(b"()")
        self.assertEqual(m.rename("Keep", "Kept")[0], "OK")
        m.select("INBOX")
        inbox_id = m.untagged_responses.pop("MAILBOXID")[-1].strip(b"()")
        typ, data = m.fetch("1", "(EMAILID)")
        email_id = code((typ, data))
        m.logout()
        self.assertTrue(os.path.isfile(os.path.join(
            self.site.home("boss"), "mail", ".imap", "Kept", ".mailsuite-folder")))
        self.site.restart()
        m = self.c.imap()
        self.assertEqual(code(m.status("Kept", "(MAILBOXID)")), created)
        self.assertEqual(m._simple_command("LIST", '(SPECIAL-USE) "" "Ke*"')[0], "OK")
        self.assertEqual(m.untagged_responses.pop("LIST"),
                         [b'(\\HasNoChildren \\Archive) "/" Kept'])
        m.select("INBOX")
        self.assertEqual(m.untagged_responses.pop("MAILBOXID")[-1].strip(b"()"), inbox_id)
        self.assertEqual(code(m.fetch("1", "(EMAILID)")), email_id)
        self.assertNotEqual(inbox_id, created)
        m.logout()
        self.assertNotIn("Traceback", self.site.log())
