"""The real service on loopback, driven by the stdlib's smtplib, poplib and imaplib."""

from __future__ import annotations

import grp
import imaplib
import os
import poplib
import re
import smtplib
import stat
import subprocess
from email.message import EmailMessage

from twisted.trial import unittest

from tests.integration.harness import ROOT, TWISTD, Site

TIMEOUT = 15


def message(
    subject: str, body: str, sender: str = "alice@remote.test", to: str = "boss@example.test"
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@remote.test>"
    msg.set_content(body)
    return msg.as_bytes()


class Clients:
    """Short-lived connections to one Site."""

    def __init__(self, site: Site) -> None:
        self.site = site

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.site.ports["smtp"], timeout=TIMEOUT)

    def send(self, data: bytes, rcpts: list[str], sender: str = "alice@remote.test") -> None:
        with self.smtp() as s:
            refused = s.sendmail(sender, rcpts, data)
            if refused:
                raise AssertionError(refused)

    def pop3(self, user: str = "boss", password: str = "secret") -> poplib.POP3:
        p = poplib.POP3("127.0.0.1", self.site.ports["pop3"], timeout=TIMEOUT)
        p.user(user)
        p.pass_(password)
        return p

    def imap(self, user: str = "boss", password: str = "secret") -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", self.site.ports["imap"], timeout=TIMEOUT)
        m.login(user, password)
        return m


def uidls(p: poplib.POP3) -> dict[int, str]:
    return {int(n): u.decode() for n, u in (line.split() for line in p.uidl()[1])}


class EndToEndTests(unittest.TestCase):
    def setUp(self) -> None:
        self.site = Site(self)
        self.site.start()
        self.c = Clients(self.site)

    def select(self, m: imaplib.IMAP4) -> int:
        """SELECT INBOX; returns UIDVALIDITY from the response code."""
        typ, data = m.select("INBOX")
        self.assertEqual(typ, "OK", data)
        validity = m.response("UIDVALIDITY")[1]
        return int(validity[0])

    def test_smtp_pop3_imap_and_restart(self) -> None:
        """Mail sent with smtplib is read with poplib and imaplib; after a restart the UIDVALIDITY,
        the IMAP UIDs, the POP3 UIDLs and stored flags are all unchanged."""
        for i in range(3):
            self.c.send(message(f"hello {i}", f"body {i}\nFrom the start of a line\n"),
                        ["boss@example.test"])
        p = self.c.pop3()
        count, total = p.stat()
        self.assertEqual(count, 3)
        listed = {int(n): int(s) for n, s in (x.split() for x in p.list()[1])}
        retrieved = {}
        for n in listed:
            _, lines, _octets = p.retr(n)
            retrieved[n] = b"\r\n".join(lines) + b"\r\n"
            self.assertEqual(len(retrieved[n]), listed[n], "LIST size != bytes RETR sent (CRLF)")
        self.assertEqual(sum(listed.values()), total)
        self.assertIn(b"Subject: hello 0", retrieved[1])
        self.assertIn(b"Received: from ", retrieved[1])
        self.assertIn(b"body 0", retrieved[1])
        before_uidl = uidls(p)
        p.quit()

        m = self.c.imap()
        validity = self.select(m)
        typ, data = m.uid("SEARCH", "ALL")
        uids = [int(x) for x in data[0].split()]
        self.assertEqual(len(uids), 3)
        typ, data = m.uid("FETCH", f"{uids[0]}",
                          "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(typ, "OK")
        self.assertIn(b"Subject: hello 0", data[0][1])
        size = int(re.search(rb"RFC822.SIZE (\d+)", data[0][0]).group(1))
        self.assertEqual(size, listed[1])
        typ, data = m.uid("FETCH", f"{uids[0]}", "(BODY.PEEK[])")
        self.assertEqual(data[0][1], retrieved[1])
        m.uid("STORE", f"{uids[1]}", "+FLAGS", r"(\Flagged \Seen)")
        typ, data = m.search(None, "UNSEEN")
        self.assertEqual(data[0].split(), [b"1", b"3"])
        typ, data = m.search(None, "SUBJECT", '"hello 2"')
        self.assertEqual(data[0].split(), [b"3"])
        m.logout()

        self.site.restart()

        p = self.c.pop3()
        self.assertEqual(uidls(p), before_uidl)
        p.quit()
        m = self.c.imap()
        self.assertEqual(self.select(m), validity)
        typ, data = m.uid("SEARCH", "ALL")
        self.assertEqual([int(x) for x in data[0].split()], uids)
        typ, data = m.uid("FETCH", f"{uids[1]}", "(FLAGS)")
        self.assertIn(rb"\Flagged", data[0])
        self.assertIn(rb"\Seen", data[0])
        m.logout()

    def test_new_mail_gets_new_uids_and_pop3_deletes_at_quit(self) -> None:
        """DELE takes effect at QUIT only; the other messages keep their UIDL and IMAP UID, and a
        later delivery gets a higher UID."""
        for i in range(3):
            self.c.send(message(f"m{i}", "x"), ["boss@example.test"])
        p = self.c.pop3()
        first = uidls(p)
        p.dele(2)
        self.assertEqual(p.stat()[0], 2)
        p.close()  # connection dropped without QUIT: nothing is deleted
        p = self.c.pop3()
        self.assertEqual(uidls(p), first)
        p.dele(2)
        p.quit()
        p = self.c.pop3()
        self.assertEqual(sorted(uidls(p).values()), sorted([first[1], first[3]]))
        p.quit()
        m = self.c.imap()
        self.select(m)
        _, data = m.uid("SEARCH", "ALL")
        kept = [int(x) for x in data[0].split()]
        self.assertEqual(len(kept), 2)
        self.c.send(message("later", "y"), ["boss@example.test"])
        m.noop()
        _, data = m.uid("SEARCH", "ALL")
        now = [int(x) for x in data[0].split()]
        self.assertEqual(now[:2], kept)
        self.assertGreater(now[2], max(kept), "a UID was reused")
        m.logout()

    def test_recipients(self) -> None:
        """Local accounts (system ones too, as Postfix) and aliases are accepted; unknown users get
        550 5.1.1, other domains from this client (127.0.0.1, outside mynetworks: the harness
        default) 554 5.7.1 Relay access denied; an alias with two members delivers to both."""
        with self.c.smtp() as s:
            s.ehlo("client.remote.test")
            self.assertEqual(s.mail("alice@remote.test")[0], 250)
            code, text = s.rcpt("nobody@example.test")
            self.assertEqual(code, 550)
            self.assertIn(b"5.1.1", text)
            code, text = s.rcpt("someone@elsewhere.test")
            self.assertEqual(code, 554)
            self.assertIn(b"5.7.1", text)
            self.assertEqual(s.rcpt("team@example.test")[0], 250)
            self.assertEqual(s.rcpt("root@example.test")[0], 250)  # system accounts get mail
            code, text = s.data(message("to the team", "hi", to="team@example.test"))
            self.assertEqual(code, 250)
            self.assertEqual(s.verify("boss")[0], 252)
        for user, password in (("boss", "secret"), ("carol", "hunter2")):
            p = self.c.pop3(user, password)
            self.assertEqual(p.stat()[0], 1)
            p.quit()
        with open(self.site.inbox("root"), "rb") as f:
            self.assertIn(b"Subject: to the team", f.read())
        log = self.site.maillog_text()
        self.assertRegex(log, r"postfix/local\[\d+\]: \w+: to=<boss@example.test>,"
                              r" orig_to=<team@example.test>.*status=sent")
        self.assertIn("client=localhost[127.0.0.1]", log)

    def test_mailbox_file_mode_and_owner(self) -> None:
        """A new INBOX is 0600, owned by the user, group mail (when running as root)."""
        self.c.send(message("mode", "x"), ["carol@example.test"])
        st = os.stat(self.site.inbox("carol"))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        if os.geteuid() == 0:
            self.assertEqual(st.st_uid, self.site.uids["carol"])
            self.assertEqual(st.st_gid, grp.getgrnam("mail").gr_gid)

    def test_login_failures(self) -> None:
        """Wrong passwords and unknown users are refused by POP3 and IMAP alike and logged in the
        shape fail2ban's dovecot filter matches."""
        with self.assertRaises(poplib.error_proto):
            self.c.pop3("boss", "wrong")
        with self.assertRaises(imaplib.IMAP4.error):
            self.c.imap("nosuchuser", "secret")
        with self.assertRaises(imaplib.IMAP4.error):
            self.c.imap("root", "secret")  # uid 0 < first_valid_uid
        m = self.c.imap()
        m.logout()
        log = self.site.maillog_text()
        self.assertRegex(log, r"dovecot: pop3-login: .*auth failed.*rip=127\.0\.0\.1")
        self.assertRegex(log, r"dovecot: imap-login: Login: user=<boss>.*rip=127\.0\.0\.1")


class ConfigRefusedTests(unittest.TestCase):
    def test_broken_config_exits_before_binding(self) -> None:
        """A broken mail.ini is refused with file, section and key named, and a non-zero exit."""
        site = Site(self)
        with open(site.config) as f:
            text = f.read()
        text = text.replace("first_valid_uid = 1000", "first_valid_uid = lots")
        text = text.replace("[tls]", "[tls]\nbogus_key = 1")
        with open(site.config, "w") as f:
            f.write(text)
        proc = subprocess.run(
            [*TWISTD, "--nodaemon", "--pidfile=", "mailsuite", "--config", site.config],
            env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60,
        )
        self.assertNotEqual(proc.returncode, 0)
        out = proc.stdout + proc.stderr
        self.assertIn(site.config, out)
        self.assertIn("first_valid_uid", out)
        self.assertIn("bogus_key", out)
