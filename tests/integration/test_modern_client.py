"""A Thunderbird-style session with the stdlib's imaplib against the real server (twistd, mbox
store), the merged extensions used together on one connection as a modern client uses them:
STARTTLS, LOGIN, COMPRESS=DEFLATE (imaplib wrapped to deflate/inflate its socket), ENABLE QRESYNC,
a SELECT (QRESYNC ...) after another session changed flags, expunged and appended, UID FETCH
(CHANGEDSINCE ... VANISHED), LIST-EXTENDED with RETURN (SPECIAL-USE STATUS (UNSEEN HIGHESTMODSEQ)),
UID SORT and ESORT, ESEARCH, and IDLE that pushes EXISTS, FETCH (with UID and MODSEQ) and
VANISHED for what the other session and SMTP delivery do meanwhile."""

from __future__ import annotations

import imaplib
import re
import ssl
import time
import zlib

from twisted.trial import unittest

from tests.integration.harness import SERVICES, TLS_SERVICES, Site
from tests.integration.test_end_to_end import Clients, message

#: this helper's loopback ports (22500-22599; test_mbsync_real has 22500-09 and 22520-29)
PORTS = dict(zip(SERVICES + TLS_SERVICES, range(22510, 22520), strict=False))
WAIT = 30.0
# imaplib checks each command's name against its table: COMPRESS (RFC 4978) is not in it
imaplib.Commands.setdefault("COMPRESS", ("AUTH",))
SUBJECTS = ["cherry", "Re: apple", "banana", "date", "elder", "fig"]


class DeflatingIMAP4(imaplib.IMAP4):
    """imaplib with RFC 4978 COMPRESS=DEFLATE: after ``compress()`` every byte it sends is raw
    deflate (a sync flush after each command) and every byte read is inflated."""

    _out: zlib._Compress | None = None

    def compress(self) -> str:
        typ, _ = self._simple_command("COMPRESS", "DEFLATE")
        if typ == "OK":
            # the server deflates from the byte after its OK line; nothing can be buffered
            # behind that line, as the server waits for the next (compressed) command
            self._out = zlib.compressobj(6, zlib.DEFLATED, -15)
            self._in = zlib.decompressobj(-15)
            self._got = b""
        return typ

    def send(self, data: bytes) -> None:  # type: ignore[override]  # imaplib's is Buffer
        if self._out is not None:
            data = self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH)
        super().send(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise self.abort("socket error: EOF")
        self._got += self._in.decompress(chunk)

    def read(self, size: int) -> bytes:
        if self._out is None:
            return super().read(size)
        while len(self._got) < size:
            self._fill()
        out, self._got = self._got[:size], self._got[size:]
        return out

    def readline(self) -> bytes:
        if self._out is None:
            return super().readline()
        while b"\n" not in self._got:
            self._fill()
        end = self._got.index(b"\n") + 1
        out, self._got = self._got[:end], self._got[end:]
        return out


def uids_of(fetches: list[bytes]) -> dict[int, bytes]:
    found = {}
    for item in fetches:
        uid = re.search(rb"UID (\d+)", item)
        assert uid is not None, item
        found[int(uid.group(1))] = item
    return found


class ModernClientTests(unittest.TestCase):
    def setUp(self) -> None:
        self.site = Site(self, tls=True)
        self.site.ports = dict(PORTS)  # this helper's range, not a random one
        self.site.config = self.site._write("mail.ini", self.site.ini())
        self.site.start()
        self.c = Clients(self.site)
        for subject in SUBJECTS:
            self.deliver(subject)

    def deliver(self, subject: str) -> None:
        """By SMTP; returns once the message is in the INBOX (delivery is queued)."""
        self.c.send(message(subject, f"body of {subject}\n"), ["boss@example.test"])
        deadline = time.monotonic() + WAIT
        while True:
            other = self.c.imap()
            other.select("INBOX", readonly=True)
            _, found = other.search(None, "SUBJECT", f'"{subject}"')
            other.logout()
            if found[0]:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{subject} not delivered")
            time.sleep(0.1)

    def other(self, *commands: tuple[str, ...]) -> None:
        """Another (plain) session runs UID commands on the INBOX, then EXPUNGE."""
        other = self.c.imap()
        other.select("INBOX")
        for command in commands:
            self.assertEqual(other.uid(*command)[0], "OK", command)
        other.expunge()
        other.logout()

    def connect(self) -> DeflatingIMAP4:
        client = DeflatingIMAP4("127.0.0.1", self.site.ports["imap"], timeout=WAIT)
        ctx = ssl.create_default_context(cafile=self.site.cert)
        ctx.check_hostname = False
        self.assertEqual(client.starttls(ssl_context=ctx)[0], "OK")
        self.assertEqual(client.login("boss", "secret")[0], "OK")
        caps = client.capability()[1][0].split()
        for cap in (b"COMPRESS=DEFLATE", b"QRESYNC", b"CONDSTORE", b"LIST-EXTENDED",
                    b"LIST-STATUS", b"SPECIAL-USE", b"SORT", b"ESEARCH", b"ESORT", b"IDLE"):
            self.assertIn(cap, caps)
        self.assertEqual(client.compress(), "OK")
        typ, _ = client._simple_command("ENABLE", "QRESYNC")
        self.assertEqual(typ, "OK")
        self.assertIn(b"QRESYNC", client.untagged_responses.pop("ENABLED", [b""])[0])
        return client

    def command(self, client: imaplib.IMAP4, *args: str) -> dict[str, list]:
        """A command imaplib does not know; its untagged responses by name."""
        client.untagged_responses.clear()
        typ, data = client._simple_command(*args)
        self.assertEqual(typ, "OK", (args, data))
        found = dict(client.untagged_responses)
        client.untagged_responses.clear()
        return found

    def test_thunderbird_session(self) -> None:
        client = self.connect()
        got = self.command(client, "SELECT", "INBOX")
        client.state = "SELECTED"
        validity = int(got["UIDVALIDITY"][0])
        modseq = int(got["HIGHESTMODSEQ"][0])
        cached = uids_of(self.command(client, "UID", "FETCH", "1:*", "(FLAGS MODSEQ)")["FETCH"])
        uids = sorted(cached)
        self.assertEqual(len(uids), len(SUBJECTS))
        self.command(client, "UNSELECT")

        # meanwhile: another client flags one, expunges one; a new one arrives by SMTP
        self.other(("STORE", str(uids[1]), "+FLAGS", "(\\Flagged)"),
                   ("STORE", str(uids[2]), "+FLAGS", "(\\Deleted)"))
        self.deliver("grape")

        got = self.command(client, "SELECT", "INBOX",
                           f"(QRESYNC ({validity} {modseq} 1:{uids[-1]}))")
        self.assertEqual(got["VANISHED"], [b"(EARLIER) %d" % uids[2]])
        # changes only for the known UIDs given (RFC 7162 3.2.5.1); the new message shows in
        # EXISTS and UIDNEXT, and the client fetches it from its old UIDNEXT on, as Thunderbird
        changed = uids_of(got["FETCH"])
        self.assertEqual(sorted(changed), [uids[1]])
        self.assertEqual(got["EXISTS"], [str(len(SUBJECTS)).encode()])
        fresh = uids_of(self.command(client, "UID", "FETCH", f"{uids[-1] + 1}:*",
                                     "(FLAGS MODSEQ)")["FETCH"])
        self.assertEqual(len(fresh), 1)
        new = max(fresh)
        self.assertGreater(new, uids[-1])
        self.assertEqual(int(got["UIDNEXT"][0]), new + 1)
        self.assertIn(b"\\Flagged", changed[uids[1]])
        self.assertIn(b"MODSEQ", changed[uids[1]])
        now = int(got["HIGHESTMODSEQ"][0])
        self.assertGreater(now, modseq)

        got = self.command(client, "UID", "FETCH", "1:*", "(FLAGS)",
                           f"(CHANGEDSINCE {modseq} VANISHED)")
        self.assertEqual(got["VANISHED"], [b"(EARLIER) %d" % uids[2]])
        self.assertEqual(sorted(uids_of(got["FETCH"])), [uids[1], new])
        self.assertNotIn("FETCH", self.command(client, "UID", "FETCH", "1:*", "(FLAGS)",
                                               f"(CHANGEDSINCE {now})"))

        self.list_extended(client, now)
        self.sort_and_search(client, uids, new)
        self.idle(client, uids, new)
        client.logout()

    def list_extended(self, client: imaplib.IMAP4, modseq: int) -> None:
        got = self.command(client, "LIST", '"" "*" RETURN (SPECIAL-USE STATUS '
                                           "(UNSEEN HIGHESTMODSEQ))")
        lists = got["LIST"]
        self.assertIn(b'(\\HasNoChildren) "/" INBOX', lists)
        self.assertTrue([x for x in lists if b"\\Sent" in x and x.endswith(b" Sent")], lists)
        self.assertTrue([x for x in lists if b"\\Trash" in x], lists)
        statuses = {s.split(b" ", 1)[0]: s for s in got["STATUS"]}
        self.assertEqual(len(statuses), len(lists))
        # six delivered, one expunged, one more delivered: all unseen
        self.assertEqual(statuses[b"INBOX"],
                         b"INBOX (UNSEEN %d HIGHESTMODSEQ %d)" % (len(SUBJECTS), modseq))

    def sort_and_search(self, client: imaplib.IMAP4, uids: list[int], new: int) -> None:
        # base subjects (RFC 5256: "Re: apple" sorts as "apple"); uids[2] ("banana") is gone
        by_subject = [uids[1], uids[0], uids[3], uids[4], uids[5], new]
        got = self.command(client, "UID", "SORT", "(SUBJECT)", "UTF-8", "ALL")
        self.assertEqual(got["SORT"], [" ".join(map(str, by_subject)).encode()])
        got = self.command(client, "UID", "SORT", "(REVERSE SUBJECT)", "UTF-8", "ALL")
        reverse = [int(n) for n in got["SORT"][0].split()]
        self.assertEqual(sorted(reverse), sorted(by_subject))
        got = self.command(client, "UID", "SORT", "RETURN", "(MIN MAX COUNT)", "(REVERSE SUBJECT)",
                           "UTF-8", "ALL")
        # RFC 5267 3.2: the lowest and highest *sorted* message, the first and last of the order
        self.assertRegex(got["ESEARCH"][0], rb'\A\(TAG "[A-Z0-9]+"\) UID MIN %d MAX %d COUNT 6\Z'
                         % (reverse[0], reverse[-1]))
        got = self.command(client, "UID", "SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "FLAGGED")
        self.assertRegex(got["ESEARCH"][0], rb'\A\(TAG "[A-Z0-9]+"\) UID MIN %d MAX %d COUNT 1 '
                         rb"ALL %d\Z" % (uids[1], uids[1], uids[1]))

    def idle(self, client: DeflatingIMAP4, uids: list[int], new: int) -> None:
        """IDLE (RFC 2177) on the compressed connection: pushed, as QRESYNC has them (RFC 7162
        3.2.10: VANISHED, not EXPUNGE; FETCH with UID and MODSEQ), what others do meanwhile."""
        tag = client._new_tag()
        client.send(tag + b" IDLE\r\n")
        self.assertTrue(client._get_line().startswith(b"+"))
        self.other(("STORE", str(uids[0]), "+FLAGS", "(\\Seen)"),
                   ("STORE", str(new), "+FLAGS", "(\\Deleted)"))
        self.deliver("huckleberry")
        pushed: list[bytes] = []
        deadline = time.monotonic() + WAIT
        while not any(line.endswith(b" EXISTS") for line in pushed):
            if time.monotonic() > deadline:
                raise AssertionError(f"no EXISTS pushed: {pushed}")
            pushed.append(client._get_line())
        client.send(b"DONE\r\n")
        while True:
            line = client._get_line()
            if line.startswith(tag):
                break
            pushed.append(line)
        self.assertRegex(line, rb" OK")
        self.assertIn(b"* VANISHED %d" % new, pushed)
        self.assertFalse([x for x in pushed if x.endswith(b" EXPUNGE")], pushed)
        fetch = [x for x in pushed if b" FETCH " in x]
        self.assertTrue(fetch, pushed)
        self.assertIn(b"UID %d" % uids[0], fetch[0])
        self.assertIn(b"\\Seen", fetch[0])
        self.assertIn(b"MODSEQ", fetch[0])
        self.assertIn(b"* 6 EXISTS", pushed)  # 7 less the one expunged, and one more
