"""A Thunderbird-style resync (RFC 7162 QRESYNC) against the real server (twistd, mbox store) with
the stdlib's imaplib: the client caches the mailbox, another session changes flags and expunges,
Postfix appends to the mbox, the server restarts, and the client's SELECT (QRESYNC ...) returns
exactly what changed."""

from __future__ import annotations

import imaplib
import fcntl
import os
import re
import time

from twisted.trial import unittest

from tests.integration.harness import Site


def _client(site: Site) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", site.ports["imap"], timeout=30)
    client.login("boss", "secret")
    return client


def _postfix_append(site: Site, subject: bytes) -> None:
    """Append to the mbox as Postfix local(8) does (the server notices on its own): under its
    locks, a dotlock and an fcntl lock (mailbox_delivery_lock = fcntl, dotlock), so after the
    expunge's compaction, which moves the messages in place under the same locks. (Unlocked,
    the append could land before the compaction's truncate and be cut off.)"""
    path = site.inbox("boss")
    deadline = time.monotonic() + 10
    while True:
        try:
            os.close(os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        with open(path, "ab") as f:
            fcntl.lockf(f, fcntl.LOCK_EX)  # waits for the server's lock
            f.write(b"From x@example.test  Tue Nov 28 06:01:02 2026\nSubject: " + subject +
                    b"\n\nbody\n\n")
    finally:
        os.unlink(path + ".lock")
    if os.geteuid() == 0:
        os.chown(path, site.uids["boss"], site.uids["boss"])


class QresyncRealClientTests(unittest.TestCase):
    def test_resync_after_changes_and_restart(self) -> None:
        site = Site(self)
        site.start()
        client = _client(site)
        self.assertIn(b"QRESYNC", client.capability()[1][0])
        for n in range(5):
            client.append("INBOX", "", None, b"Subject: %d\r\n\r\nbody\r\n" % n)
        self.assertEqual(client._simple_command("ENABLE", "QRESYNC")[0], "OK")
        self.assertEqual(client.select("INBOX")[0], "OK")
        validity = int(client.response("UIDVALIDITY")[1][0])
        modseq = int(client.response("HIGHESTMODSEQ")[1][0])
        cached = client.uid("FETCH", "1:*", "(FLAGS MODSEQ)")[1]
        self.assertEqual(len(cached), 5)
        uids = [int(re.search(rb"UID (\d+)", c).group(1)) for c in cached]  # type: ignore[union-attr]
        client.logout()

        other = _client(site)
        other.select("INBOX")
        other.uid("STORE", f"{uids[0]},{uids[3]}", "+FLAGS", "(\\Flagged)")
        other.uid("STORE", str(uids[2]), "+FLAGS", "(\\Deleted)")
        other.expunge()
        other.logout()
        _postfix_append(site, b"by postfix")
        site.restart()  # everything above must have been kept in the index

        client = _client(site)
        client._simple_command("ENABLE", "QRESYNC")
        typ, _ = client._simple_command("SELECT", "INBOX", f"(QRESYNC ({validity} {modseq}))")
        self.assertEqual(typ, "OK")
        vanished = client.untagged_responses.pop("VANISHED", [])
        fetched = client.untagged_responses.pop("FETCH", [])
        self.assertEqual(vanished, [b"(EARLIER) %d" % uids[2]])
        changed = {int(re.search(rb"UID (\d+)", f).group(1)): f for f in fetched}  # type: ignore[union-attr]
        new_uid = max(changed)
        self.assertEqual(sorted(changed), [uids[0], uids[3], new_uid])
        self.assertGreater(new_uid, uids[-1])
        for uid in (uids[0], uids[3]):
            self.assertIn(b"\\Flagged", changed[uid])
        now = int(client.response("HIGHESTMODSEQ")[1][0])
        self.assertGreater(now, modseq)
        # nothing changed since: the next resync is empty
        client._simple_command("SELECT", "INBOX", f"(QRESYNC ({validity} {now}))")
        self.assertNotIn("VANISHED", client.untagged_responses)
        self.assertNotIn("FETCH", client.untagged_responses)
        client.logout()
