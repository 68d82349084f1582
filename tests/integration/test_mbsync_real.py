"""mbsync (Debian's isync) syncing a real server's INBOX (twistd, mbox store) with a local Maildir
both ways: 50 messages pulled; flags set on the server by another IMAP session and locally by
renaming Maildir files, and cleared again; messages expunged on either side; a message written
into the Maildir appended to the server; new mail delivered by SMTP between syncs; after a restart
of the server a further sync changes nothing; and the server's mbox stays a parseable mbox holding
exactly what IMAP shows.

What isync 1.4 uses of ours (``-Dn`` transcript, asserted below): LOGIN in clear, or STARTTLS,
CAPABILITY and AUTHENTICATE PLAIN (SASL-IR) with ``SSLType STARTTLS``; then COMPRESS DEFLATE,
NAMESPACE, LIST, SELECT, UID FETCH (UID FLAGS) and (BODY.PEEK[]), UID STORE +FLAGS.SILENT and
-FLAGS.SILENT, CHECK, APPEND with UIDPLUS's APPENDUID to learn the new message's UID (without
UIDPLUS it would search for its X-TUID header), and CLOSE to expunge what it marked \\Deleted.
It sends no MOVE, ENABLE, CONDSTORE's CHANGEDSINCE or QRESYNC (asserted too): each sync lists
the flags of every UID, and expunges through CLOSE."""

from __future__ import annotations

import email
import email.policy
import imaplib
import mailbox
import os
import re
import shutil
import subprocess
import tempfile
import time

from twisted.trial import unittest

from tests.integration.harness import SERVICES, TLS_SERVICES, Site
from tests.integration.test_end_to_end import Clients, message

MBSYNC = shutil.which("mbsync")
#: this helper's loopback ports (22500-22599): 22500-22509 and 22520-22529 (TLS) here
NAMES = SERVICES + TLS_SERVICES
COUNT = 50
WAIT = 30.0


def subject_of(data: bytes) -> str:
    return str(email.message_from_bytes(data, policy=email.policy.default)["Subject"])


class Maildir:
    """The near side: ``cur``/``new`` files of INBOX, by Subject, with the flags of their names."""

    def __init__(self, path: str) -> None:
        self.path = path

    def files(self) -> dict[str, str]:
        """Subject -> path of every message file."""
        found: dict[str, str] = {}
        for sub in ("cur", "new"):
            folder = os.path.join(self.path, sub)
            for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
                with open(os.path.join(folder, name), "rb") as f:
                    subject = subject_of(f.read())
                if subject in found:
                    raise AssertionError(f"{subject} twice: {found[subject]}, {name}")
                found[subject] = os.path.join(folder, name)
        return found

    def flags(self) -> dict[str, str]:
        """Subject -> the Maildir flag letters (``:2,FS``) of its file."""
        return {s: p.rpartition(":2,")[2] if ":2," in p else "" for s, p in self.files().items()}

    def set_flags(self, subject: str, letters: str) -> None:
        """As a mail reader does: rename into cur/ with the new info part."""
        path = self.files()[subject]
        base = os.path.basename(path).partition(":2,")[0]
        os.rename(path, os.path.join(self.path, "cur", f"{base}:2,{''.join(sorted(letters))}"))


class MbsyncTests(unittest.TestCase):
    if MBSYNC is None:
        skip = "mbsync is not installed (scripts/setup-debian.sh test installs isync)"

    #: the connection's lines of the mbsyncrc: in clear (LOGIN, its warning)
    tls = False
    first_port = 22500

    def setUp(self) -> None:
        self.site = Site(self, tls=self.tls)
        # this helper's range, not a random one
        self.site.ports = {name: self.first_port + NAMES.index(name) for name in self.site.ports}
        self.site.config = self.site._write("mail.ini", self.site.ini())
        self.site.start()
        self.c = Clients(self.site)
        self.local = tempfile.mkdtemp(prefix="ms-mbsync-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.local, True)
        os.makedirs(os.path.join(self.local, "mail"))
        self.maildir = Maildir(os.path.join(self.local, "mail", "INBOX"))
        self.rc = os.path.join(self.local, "mbsyncrc")
        with open(self.rc, "w") as f:
            f.write(self.config())

    def config(self) -> str:
        mail = os.path.join(self.local, "mail")
        return f"""\
IMAPAccount server
Host 127.0.0.1
Port {self.site.ports['imap']}
User boss
Pass secret
{self.security()}

IMAPStore far
Account server

MaildirStore near
Path {mail}/
Inbox {mail}/INBOX

Channel inbox
Far :far:
Near :near:
Patterns INBOX
Create Near
Sync All
Expunge Both
SyncState *
"""

    def security(self) -> str:
        return "SSLType None\nAuthMechs LOGIN"

    def sync(self) -> list[str]:
        """One ``mbsync inbox`` run (must succeed); the IMAP commands it sent."""
        assert MBSYNC is not None
        proc = subprocess.run(
            [MBSYNC, "-Dn", "-c", self.rc, "inbox"], capture_output=True, text=True,
            timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": self.local, "LC_ALL": "C.UTF-8"},
        )
        if proc.returncode != 0:
            raise AssertionError(f"mbsync exited {proc.returncode}:\n{proc.stdout[-4000:]}\n"
                                 f"{proc.stderr[-4000:]}\n{self.site.log()[-4000:]}")
        self.transcript = proc.stdout + proc.stderr
        return re.findall(r"^(?:\(\d+ in progress\) )?>>> \d+ (.*)$", proc.stdout, re.M)

    def deliver(self, *numbers: int) -> None:
        """By SMTP; returns once all of them are in the mbox (delivery is queued)."""
        for n in numbers:
            self.c.send(message(f"msg {n:02d}", f"body of message {n}\n"), ["boss@example.test"])
        want = {f"msg {n:02d}" for n in numbers}
        deadline = time.monotonic() + WAIT
        while not want <= set(self.server_flags()):
            if time.monotonic() > deadline:
                raise AssertionError(f"not delivered: {want - set(self.server_flags())}")
            time.sleep(0.1)

    def imap(self) -> imaplib.IMAP4:
        client = self.c.imap()
        self.assertEqual(client.select("INBOX")[0], "OK")
        return client

    def server_flags(self) -> dict[str, set[str]]:
        """Subject -> system flags of each message in the server's INBOX (another session)."""
        client = self.imap()
        try:
            _, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        finally:
            client.logout()
        found = {}
        for item in data:
            if isinstance(item, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                assert flags is not None, item
                found[subject_of(item[1])] = set(flags.group(1).decode().split())
        return found

    def server_store(self, subjects: list[str], command: str, flags: str) -> None:
        client = self.imap()
        try:
            _, data = client.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            uids = {subject_of(item[1]): re.search(rb"UID (\d+)", item[0]).group(1).decode()  # type: ignore[union-attr]
                    for item in data if isinstance(item, tuple)}
            typ, _ = client.uid("STORE", ",".join(uids[s] for s in subjects), command, flags)
            self.assertEqual(typ, "OK")
            if "\\Deleted" in flags:
                self.assertEqual(client.expunge()[0], "OK")
        finally:
            client.logout()

    def assert_mbox(self, server: dict[str, set[str]]) -> None:
        """The INBOX file parses as an mbox holding exactly the messages IMAP shows, each whole."""
        box = mailbox.mbox(self.site.inbox("boss"), create=False)
        try:
            subjects = []
            for msg in box:
                if msg["Subject"] is None:  # the mbox's own pseudo message, if the store keeps one
                    continue
                subjects.append(str(msg["Subject"]))
                self.assertIn(b"body of", msg.as_bytes().partition(b"\n\n")[2])
        finally:
            box.close()
        self.assertEqual(sorted(subjects), sorted(server))
        self.assertEqual(len(subjects), len(set(subjects)))

    def test_two_way_sync(self) -> None:
        self.deliver(*range(COUNT))
        sent = self.sync()
        self.assertEqual(sorted(self.maildir.files()), [f"msg {n:02d}" for n in range(COUNT)])
        self.assertIn("COMPRESS DEFLATE", sent)
        self.assertFalse([c for c in sent if re.match(r"(UID )?(MOVE|ENABLE) ", c)
                          or "CHANGEDSINCE" in c or "QRESYNC" in c], sent)

        # flags both ways: another session on the server, renames in the Maildir
        self.server_store(["msg 01", "msg 02"], "+FLAGS", "(\\Seen)")
        self.server_store(["msg 02", "msg 03"], "+FLAGS", "(\\Flagged)")
        self.maildir.set_flags("msg 10", "S")
        self.maildir.set_flags("msg 11", "FS")
        # expunge both ways: on the server; in the Maildir by removing the file and by T
        self.server_store(["msg 20", "msg 21"], "+FLAGS", "(\\Deleted)")
        os.unlink(self.maildir.files()["msg 30"])
        self.maildir.set_flags("msg 31", "T")
        # a message saved locally (new/, no UID yet) and new mail by SMTP
        with open(os.path.join(self.maildir.path, "new", "1800000000.local1.near"), "wb") as f:
            f.write(message("msg local", "body of a local one\n"))
        self.deliver(50, 51, 52)

        sent = self.sync()
        appends = [c for c in sent if c.startswith("APPEND")]
        self.assertEqual(len(appends), 1, sent)
        # it learnt the new UID from UIDPLUS's APPENDUID, not by searching for its X-TUID header
        self.assertIn("[APPENDUID ", self.transcript)
        self.assertFalse([c for c in sent if "X-TUID" in c], sent)
        gone = {"msg 20", "msg 21", "msg 30", "msg 31"}
        want = sorted({f"msg {n:02d}" for n in range(COUNT + 3)} - gone | {"msg local"})
        local = self.maildir.flags()
        server = self.server_flags()
        self.assertEqual(sorted(local), want)
        self.assertEqual(sorted(server), want)
        letters = {"\\Seen": "S", "\\Flagged": "F", "\\Answered": "R", "\\Draft": "D",
                   "\\Deleted": "T"}
        expected = {"msg 01": "S", "msg 02": "FS", "msg 03": "F", "msg 10": "S", "msg 11": "FS"}
        for subject in want:
            on_server = "".join(sorted(letters[f] for f in server[subject] if f in letters))
            self.assertEqual(on_server, expected.get(subject, ""), subject)
            self.assertEqual(local[subject], expected.get(subject, ""), subject)
        self.assert_mbox(server)

        # clearing flags both ways
        self.server_store(["msg 02"], "-FLAGS", "(\\Flagged)")
        self.maildir.set_flags("msg 11", "")
        self.sync()
        self.assertEqual(self.maildir.flags()["msg 02"], "S")
        self.assertEqual(self.server_flags()["msg 11"], set())

        # nothing changed since (a restart keeps UIDVALIDITY and the UIDs): the next sync sends
        # nothing that changes either side
        self.site.restart()
        names = sorted(self.maildir.files().values())
        server = self.server_flags()
        sent = self.sync()
        changing = [c for c in sent if c.split()[0] in ("APPEND", "EXPUNGE", "MOVE")
                    or c.startswith(("UID STORE", "UID EXPUNGE"))]
        self.assertEqual(changing, [])
        self.assertEqual(sorted(self.maildir.files().values()), names)
        self.assertEqual(self.server_flags(), server)
        self.assert_mbox(server)


class MbsyncStartTLSTests(MbsyncTests):
    """The same with mbsync's usual set-up: STARTTLS on 143 (trusting the site's certificate),
    then AUTHENTICATE PLAIN and COMPRESS inside TLS."""

    tls = True
    first_port = 22520

    def security(self) -> str:
        return f"SSLType STARTTLS\nCertificateFile {self.site.cert}"

    def sync(self) -> list[str]:
        sent = super().sync()
        self.assertEqual(sent[:4], ["STARTTLS", "CAPABILITY", "AUTHENTICATE PLAIN <authdata>",
                                    "COMPRESS DEFLATE"], sent)
        self.assertNotIn("sent in the clear", self.transcript)
        return sent
