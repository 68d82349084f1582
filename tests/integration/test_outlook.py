"""OUTLOOK.md items 1-18 as one scripted IMAP session against the real server (twistd, mbox
store, SMTP delivery), with Outlook's own command strings; items 3-4 also over TLS as Outlook
connects (STARTTLS on 143 and TLS from the first byte on 993, TLS 1.2 and 1.3, an SNI name with
a trailing dot) with every login form. LOGINDISABLED needs a client that is not on this machine
(loopback may always log in in clear), so it is pinned in tests/test_sasl_imap.py; the 2-minute
IDLE keep-alive and the IDLE no-timeout rule are pinned with a clock in
tests/test_imap_commands.py.
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import ssl
import time
from datetime import UTC, datetime

from twisted.trial import unittest

from tests.integration.harness import Site

TIMEOUT = 15
FOLDERS = "sent = Sent Items\ndrafts = Drafts\ntrash = Deleted Items\njunk = Junk E-mail\n"
MULTIPART = (
    b"From: Alice <alice@remote.test>\r\nTo: boss@example.test\r\nSubject: report %d\r\n"
    b"Date: Mon, 14 Sep 2026 19:07:10 +0200\r\nMessage-ID: <r%d@remote.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\n"
    b"numbers inside\r\n--BB\r\nContent-Type: application/octet-stream\r\n\r\nAAAA\r\n--BB--\r\n"
)


class Imap:
    """A raw IMAP client: each command is sent exactly as written and read to its tagged reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""
        self.n = 0
        self.greeting = self.line()

    def line(self) -> bytes:
        """One response line, with any literals it announces read into it."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise AssertionError(f"connection closed; got {out + self.buf!r}")
                self.buf += data
            text, self.buf = self.buf.split(b"\r\n", 1)
            out += text + b"\r\n"
            m = re.search(rb"\{(\d+)\}\Z", text)
            if not m:
                return out
            size = int(m.group(1))
            while len(self.buf) < size:
                self.buf += self.sock.recv(65536)
            out += self.buf[:size]
            self.buf = self.buf[size:]

    def until(self, tag: bytes) -> bytes:
        out = b""
        while True:
            line = self.line()
            out += line
            if line.startswith(tag + b" "):
                return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, command: str | bytes, ok: bool = True) -> bytes:
        self.n += 1
        tag = b"o%d" % self.n
        raw = command.encode() if isinstance(command, str) else command
        self.send(tag + b" " + raw + b"\r\n")
        out = self.until(tag)
        if ok and not re.search(rb"^" + tag + rb" OK", out, re.MULTILINE):
            raise AssertionError(f"{raw!r} -> {out!r}")
        return out

    def append(self, command: str, data: bytes) -> bytes:
        """APPEND with a synchronising literal: wait for `+`, then send the message."""
        self.n += 1
        tag = b"o%d" % self.n
        self.send(tag + b" " + command.encode() + b" {%d}\r\n" % len(data))
        cont = self.line()
        if not cont.startswith(b"+"):
            raise AssertionError(cont)
        self.send(data + b"\r\n")
        return self.until(tag)

    def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """STARTTLS, then the TLS handshake on the same socket."""
        self.cmd("STARTTLS")
        assert not self.buf, self.buf
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def close(self) -> None:
        self.sock.close()


def fetch_literal(out: bytes, label: bytes) -> bytes:
    m = re.search(re.escape(label) + rb" \{(\d+)\}\r\n", out)
    assert m is not None, (label, out[:300])
    return out[m.end() : m.end() + int(m.group(1))]


class OutlookSessionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.site = Site(self, mailbox_options=FOLDERS)
        self.site.start()

    def connect(self) -> Imap:
        client = Imap(self.site.ports["imap"])
        self.addCleanup(client.close)
        return client

    def login(self) -> Imap:
        client = self.connect()
        client.cmd('LOGIN "boss" "secret"')
        return client

    def deliver(self, data: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", self.site.ports["smtp"], timeout=TIMEOUT) as s:
            s.sendmail("alice@remote.test", ["boss@example.test"], data)

    def test_outlook_session(self) -> None:
        """OUTLOOK.md items 1-18 in order, as Outlook sends them."""
        c = self.connect()
        # 1. CAPABILITY before and after login; never UIDONLY.
        pre = c.cmd("CAPABILITY")
        self.assertIn(b"IMAP4rev1", pre)
        # 2. ID before login.  3. LOGIN with literals.
        self.assertIn(b"* ID (", c.cmd('ID ("name" "Microsoft Outlook" "version" "16.0")'))
        c.n += 1
        c.send(b"o%d LOGIN {4}\r\n" % c.n)
        self.assertTrue(c.line().startswith(b"+"))
        c.send(b"boss {6}\r\n")
        self.assertTrue(c.line().startswith(b"+"))
        c.send(b"secret\r\n")
        self.assertIn(b" OK", c.until(b"o%d" % c.n))
        post = c.cmd("CAPABILITY")
        for cap in (b"IMAP4rev1", b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE", b"SPECIAL-USE",
                    b"CHILDREN", b"ID", b"UNSELECT"):
            self.assertIn(b" " + cap, post.split(b"\r\n")[0] + b" ")
        self.assertNotIn(b"UIDONLY", pre + post)
        self.assertIn(b"* ID (", c.cmd('ID ("name" "Microsoft Outlook")'))
        # 5. NAMESPACE
        self.assertIn(b'* NAMESPACE (("" "/")) NIL NIL', c.cmd("NAMESPACE"))
        # 6. the special-use folders, pre-created and subscribed, under the configured names.
        wanted = {b"Sent Items": b"\\Sent", b"Deleted Items": b"\\Trash", b"Drafts": b"\\Drafts",
                  b"Junk E-mail": b"\\Junk"}
        for command in ('LIST "" "*"', 'LSUB "" "*"', 'XLIST "" "*"', 'LIST (SPECIAL-USE) "" "*"'):
            out = c.cmd(command)
            for name, flag in wanted.items():
                self.assertRegex(out, rb'\((\\HasNoChildren )?[^)]*' + re.escape(flag)
                                 + rb'[^)]*\) "/" "?' + re.escape(name), command)
            if "SPECIAL-USE" not in command:
                self.assertRegex(out, rb'"/" "?INBOX"?\r\n')
        self.assertIn(b"\\HasNoChildren", c.cmd('LIST "" "*"'))
        # 7. folders under folders with mail: both stay selectable.
        c.cmd('CREATE "INBOX/Projects"')
        self.assertIn(b"OK [APPENDUID", c.append('APPEND "INBOX/Projects"', MULTIPART % (0, 0)))
        c.cmd('CREATE "INBOX/Projects/2026"')
        out = c.cmd('LIST "" "INBOX/*"')
        self.assertIn(b'(\\HasChildren) "/" INBOX/Projects\r\n', out)
        self.assertNotIn(b"Noselect", out)
        self.assertIn(b"* 1 EXISTS", c.cmd('SELECT "INBOX/Projects"'))
        c.cmd('SELECT "INBOX/Projects/2026"')
        # 8. RENAME and DELETE of folders with children; SUBSCRIBE persists (checked after restart).
        c.cmd('CREATE "Old/Child"')
        c.cmd('RENAME "Old" "Older"')
        self.assertIn(b'"/" Older/Child', c.cmd('LIST "" "*"'))
        c.cmd('DELETE "Older/Child"')
        c.cmd('DELETE "Older"')
        self.assertNotIn(b"Older", c.cmd('LIST "" "*"'))
        c.cmd('SUBSCRIBE "INBOX/Projects"')
        # mail for INBOX: 38 appended by IMAP, then one by SMTP (so that UID 39 exists).
        for i in range(1, 39):
            c.append("APPEND INBOX", MULTIPART % (i, i))
        self.deliver(MULTIPART % (39, 39))
        # 9. SELECT response codes.
        out = c.cmd("SELECT INBOX")
        for code in (b"* 39 EXISTS", b"RECENT", b"* FLAGS (", b"[UIDVALIDITY ", b"[UIDNEXT 40]",
                     b"[PERMANENTFLAGS (", b"OK [READ-WRITE]"):
            self.assertIn(code, out)
        validity = re.search(rb"UIDVALIDITY (\d+)", out).group(1)  # type: ignore[union-attr]
        # 10. the header sync and body downloads; none sets \Seen; RFC822.SIZE == len(BODY[]).
        self.assertEqual(c.cmd("UID FETCH 1:* (UID FLAGS)").count(b"FETCH (UID"), 39)
        out = c.cmd("UID FETCH 30:* (UID RFC822.SIZE FLAGS INTERNALDATE BODY.PEEK[HEADER])")
        self.assertEqual(out.count(b"BODY[HEADER] {"), 10)
        out = c.cmd("UID FETCH 38 (UID RFC822.SIZE BODY.PEEK[])")
        body = fetch_literal(out, b"BODY[]")
        self.assertIn(b"RFC822.SIZE %d " % len(body), out)
        self.assertEqual(body, MULTIPART % (38, 38))
        out = c.cmd("uid fetch 39 (UID RFC822.SIZE RFC822.peek)")
        self.assertIn(b"RFC822.SIZE %d " % len(fetch_literal(out, b"RFC822")), out)
        self.assertIn(b"Subject: report 39", fetch_literal(out, b"RFC822"))
        self.assertNotIn(b"\\Seen", c.cmd("UID FETCH 1:* (FLAGS)"))
        # 11. header fields, parts, MIME headers, partials.
        out = c.cmd("UID FETCH 39 (BODY.PEEK[HEADER.FIELDS (From To Subject Date Message-ID)] "
                    "BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[]<0.2048>)")
        self.assertTrue(fetch_literal(out, b"BODY[HEADER.FIELDS (FROM TO SUBJECT DATE MESSAGE-ID)]")
                        .startswith(b"From: Alice <alice@remote.test>\r\nTo: "))
        self.assertEqual(fetch_literal(out, b"BODY[1]"), b"numbers inside")
        self.assertEqual(fetch_literal(out, b"BODY[1.MIME]"), b"Content-Type: text/plain\r\n\r\n")
        # the whole message: it is under 2048 bytes
        self.assertTrue(fetch_literal(out, b"BODY[]<0>").endswith(MULTIPART % (39, 39)))
        self.assertNotIn(b"\\Seen", c.cmd("UID FETCH 1:* (FLAGS)"))
        # 12. STORE forms; flags survive a reconnect and a restart (checked below).
        self.assertIn(b"UID 5 FLAGS (\\Seen", c.cmd("UID STORE 5 +FLAGS (\\Seen)"))
        c.cmd("UID STORE 6 +FLAGS (\\Seen \\Flagged)")
        c.cmd("UID STORE 6 -FLAGS (\\Seen)")
        self.assertNotIn(b"FETCH", c.cmd("UID STORE 7 FLAGS.SILENT (\\Answered $label1)"))
        # 13. a delivery while selected: EXISTS on the next NOOP.
        self.deliver(MULTIPART % (40, 40))
        self.assertIn(b"* 40 EXISTS", c.cmd("NOOP"))
        # 14. APPEND to Sent Items with flags and date; INTERNALDATE kept; no server-side copy.
        out = c.append('APPEND "Sent Items" (\\Seen) "14-Sep-2026 19:07:10 +0200"',
                       MULTIPART % (99, 99))
        self.assertRegex(out, rb"OK \[APPENDUID \d+ 1\]")
        # 16. STATUS of it
        out = c.cmd('STATUS "Sent Items" (MESSAGES UNSEEN UIDNEXT UIDVALIDITY)')
        self.assertRegex(out, rb'\* STATUS "Sent Items" '
                              rb'\(MESSAGES 1 UNSEEN 0 UIDNEXT 2 UIDVALIDITY \d+\)')
        c.cmd('EXAMINE "Sent Items"')
        date = re.search(rb'INTERNALDATE "([^"]+)"', c.cmd("UID FETCH 1 (INTERNALDATE)")).group(1)  # type: ignore[union-attr]
        self.assertEqual(  # the same instant (the mbox store keeps the time, not the zone)
            datetime.strptime(date.decode().strip(), "%d-%b-%Y %H:%M:%S %z"),
            datetime(2026, 9, 14, 17, 7, 10, tzinfo=UTC),
        )
        c.cmd("UNSELECT")
        # 15. delete = UID COPY to Deleted Items + \Deleted + UID EXPUNGE n; UID MOVE; EXPUNGE.
        c.cmd("SELECT INBOX")
        self.assertRegex(c.cmd('UID COPY 10 "Deleted Items"'), rb"OK \[COPYUID \d+ 10 1\]")
        c.cmd("UID STORE 9:10 +FLAGS (\\Deleted)")
        out = c.cmd("UID EXPUNGE 10")
        self.assertEqual(re.findall(rb"\* (\d+) EXPUNGE", out), [b"10"])
        self.assertIn(b"UID 9 ", c.cmd("UID FETCH 9 (UID FLAGS)"))
        out = c.cmd('UID MOVE 11 "Deleted Items"')
        self.assertRegex(out, rb"\* OK \[COPYUID \d+ 11 2\]")
        self.assertIn(b"* 10 EXPUNGE", out)
        self.assertIn(b"* 9 EXPUNGE", c.cmd("EXPUNGE"))
        for i in range(3):  # editing a draft: APPEND new + delete old, repeated
            c.cmd('SELECT "Drafts"')
            old = c.append("APPEND Drafts (\\Draft)", MULTIPART % (200 + i, 200 + i))
            if i:
                uid = int(re.search(rb"APPENDUID \d+ (\d+)", old).group(1)) - 1  # type: ignore[union-attr]
                c.cmd(f"UID STORE {uid} +FLAGS (\\Deleted)")
                c.cmd(f"UID EXPUNGE {uid}")
        self.assertIn(b"MESSAGES 1 ", c.cmd('STATUS "Drafts" (MESSAGES UIDNEXT)'))
        self.assertIn(b"MESSAGES 2", c.cmd('STATUS "Deleted Items" (MESSAGES)'))
        # 16. CHECK, NOOP, CLOSE, UNSELECT
        c.cmd("SELECT INBOX")
        c.cmd("CHECK")
        c.cmd("NOOP")
        c.cmd("CLOSE")
        c.cmd("EXAMINE INBOX")
        c.cmd("UNSELECT")
        # 17. IDLE: + idling, a new message as EXISTS within a second, DONE -> OK.
        c.cmd("SELECT INBOX")
        c.n += 1
        tag = b"o%d" % c.n
        c.send(tag + b" IDLE\r\n")
        self.assertTrue(c.line().startswith(b"+ idling"))
        started = time.monotonic()
        self.deliver(MULTIPART % (41, 41))
        self.assertRegex(c.line(), rb"^\* \d+ EXISTS\r\n")
        self.assertLess(time.monotonic() - started, 5.0)  # generous for a loaded machine
        c.send(b"DONE\r\n")
        self.assertIn(tag + b" OK", c.until(tag))
        # 18. pipelined SELECT + UID FETCH answered in order.
        c.n += 2
        c.send(b"p1 SELECT INBOX\r\np2 UID FETCH 1:* (UID FLAGS)\r\n")
        out = c.until(b"p2")
        self.assertLess(out.index(b"p1 OK"), out.index(b"FETCH (UID"))
        c.cmd("LOGOUT")
        # 9, 12, 8 after a restart and an external append: same UIDVALIDITY, flags kept,
        # new UIDs above every earlier one, subscriptions kept.
        self.site.restart()
        with open(self.site.inbox("boss"), "ab") as spool:
            spool.write(b"From mutt@localhost Mon Sep 14 19:07:10 2026\nSubject: by mutt\n\nhi\n\n")
        c = self.login()
        out = c.cmd("SELECT INBOX")
        self.assertIn(b"[UIDVALIDITY " + validity + b"]", out)
        flags = c.cmd("UID FETCH 5:7 (FLAGS)")
        self.assertIn(b"UID 5 FLAGS (\\Seen)",
                      flags.replace(b"FLAGS (\\Seen) UID 5", b"UID 5 FLAGS (\\Seen)"))
        self.assertRegex(flags, rb"\\Flagged")
        self.assertIn(b"$label1", flags)
        out = c.cmd("UID FETCH 42:* (UID)")
        self.assertRegex(out, rb"UID (4[2-9]|[5-9]\d)\b")
        self.assertIn(b'"/" INBOX/Projects', c.cmd('LSUB "" "*"'))
        c.cmd("LOGOUT")


class OutlookTLSTests(unittest.TestCase):
    """OUTLOOK.md items 3-4 over TLS: Outlook's login forms on 143 after STARTTLS and on 993."""

    def setUp(self) -> None:
        self.site = Site(self, tls=True, mailbox_options=FOLDERS)
        self.site.start()

    def context(self, version: ssl.TLSVersion) -> ssl.SSLContext:
        """Trusts the site's self-signed certificate and speaks exactly ``version``."""
        ctx = ssl.create_default_context(cafile=self.site.cert)
        ctx.check_hostname = False
        ctx.minimum_version = ctx.maximum_version = version
        return ctx

    def connect(self, how: str, version: ssl.TLSVersion) -> Imap:
        """``how``: "starttls" (143) or "implicit" (993); SNI "mail.example.test." (with the
        trailing dot)."""
        if how == "implicit":
            raw = socket.create_connection(("127.0.0.1", self.site.ports["imaps"]), timeout=TIMEOUT)
            client = Imap.__new__(Imap)
            client.sock = self.context(version).wrap_socket(
                raw, server_hostname="mail.example.test.")
            client.buf, client.n = b"", 0
            client.greeting = client.line()
            self.addCleanup(client.close)
        else:
            client = Imap(self.site.ports["imap"])
            self.addCleanup(client.close)
            caps = client.cmd("CAPABILITY").split(b"\r\n")[0].split()
            self.assertIn(b"STARTTLS", caps)
            client.starttls(self.context(version), "mail.example.test.")
        self.assertEqual(client.sock.version(), {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                                 ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version])
        return client

    def test_logins_over_starttls_and_993(self) -> None:
        """3-4. On 143 after STARTTLS and on 993, TLS 1.2 and 1.3, SNI with a trailing dot:
        CAPABILITY offers AUTH=PLAIN AUTH=LOGIN and SASL-IR (no STARTTLS, no LOGINDISABLED);
        LOGIN with quoted strings and with literals, AUTHENTICATE PLAIN with and without an
        initial response and AUTHENTICATE LOGIN all log in (post-login CAPABILITY as item 1,
        no login capabilities), each logged with its method and TLS; a wrong password is NO
        [AUTHENTICATIONFAILED]."""
        b64 = base64.b64encode
        forms = ["quoted", "literals", "plain-ir", "plain", "login", "wrong"]
        for how in ("starttls", "implicit"):
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                for form in forms:
                    c = self.connect(how, version)
                    caps = c.cmd("CAPABILITY").split(b"\r\n")[0].split()
                    for cap in (b"SASL-IR", b"AUTH=PLAIN", b"AUTH=LOGIN", b"IDLE", b"UIDPLUS"):
                        self.assertIn(cap, caps, (how, version))
                    for cap in (b"STARTTLS", b"LOGINDISABLED", b"UIDONLY"):
                        self.assertNotIn(cap, caps, (how, version))
                    c.n += 1
                    tag = b"o%d" % c.n
                    if form == "quoted":
                        c.send(tag + b' LOGIN "boss" "secret"\r\n')
                    elif form == "literals":
                        c.send(tag + b" LOGIN {4}\r\n")
                        self.assertTrue(c.line().startswith(b"+"))
                        c.send(b"boss {6}\r\n")
                        self.assertTrue(c.line().startswith(b"+"))
                        c.send(b"secret\r\n")
                    elif form == "plain-ir":
                        c.send(tag + b" AUTHENTICATE PLAIN " + b64(b"\0boss\0secret") + b"\r\n")
                    elif form == "plain":
                        c.send(tag + b" AUTHENTICATE PLAIN\r\n")
                        self.assertEqual(c.line(), b"+ \r\n")
                        c.send(b64(b"\0boss\0secret") + b"\r\n")
                    elif form == "login":
                        c.send(tag + b" AUTHENTICATE LOGIN\r\n")
                        self.assertEqual(c.line(), b"+ VXNlcm5hbWU6\r\n")
                        c.send(b64(b"boss") + b"\r\n")
                        self.assertEqual(c.line(), b"+ UGFzc3dvcmQ6\r\n")
                        c.send(b64(b"secret") + b"\r\n")
                    else:
                        c.send(tag + b' LOGIN "boss" "wrong"\r\n')
                    out = c.until(tag)
                    if form == "wrong":
                        self.assertEqual(
                            out, tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
                        continue
                    self.assertIn(tag + b" OK [CAPABILITY IMAP4rev1 ", out, (how, version, form))
                    post = c.cmd("CAPABILITY").split(b"\r\n")[0] + b" "
                    for cap in (b"IMAP4rev1", b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE",
                                b"SPECIAL-USE", b"CHILDREN", b"ID", b"UNSELECT"):
                        self.assertIn(b" " + cap + b" ", post)
                    for cap in (b"AUTH=", b"SASL-IR", b"STARTTLS", b"LOGINDISABLED"):
                        self.assertNotIn(cap, post)
                    self.assertIn(b"* 0 EXISTS", c.cmd("SELECT INBOX"))
                    c.cmd("LOGOUT")
        log = self.site.maillog_text()
        for method, count in (("PLAIN", 4 * 4), ("LOGIN", 4)):
            self.assertEqual(log.count(f"Login: user=<boss>, method={method}, rip=127.0.0.1, "
                                       f"lip=127.0.0.1, TLS\n"), count, log)
        self.assertEqual(log.count("Aborted login (auth failed, 1 attempts): user=<boss>,"
                                   " method=PLAIN, rip=127.0.0.1, lip=127.0.0.1, TLS\n"), 4, log)
        self.assertEqual(log.count("imap-login"), 4 * 5 + 4, log)
