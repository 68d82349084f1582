"""OUTLOOK.md items 19-25 as scripted clients against the real server, over TLS as Outlook
connects (STLS on 110 / implicit 995, STARTTLS on 587 / implicit 465)."""

from __future__ import annotations

import base64
import imaplib
import poplib
import smtplib
import ssl
import time

from twisted.trial import unittest

from tests.integration.harness import Site
from tests.integration.test_tls_clients import TIMEOUT, message

WANT_EHLO = {"auth", "size", "pipelining", "8bitmime", "enhancedstatuscodes"}


class OutlookCase(unittest.TestCase):
    def setUp(self) -> None:
        # mynetworks without loopback: the test clients count as "the world" for relaying.
        self.site = Site(self, tls=True, mail_extra="mynetworks = 192.0.2.0/24")
        self.site.start()
        self.ctx = ssl.create_default_context(cafile=self.site.cert)
        self.ctx.check_hostname = False

    def deliver(self, data: bytes, to: str = "boss@example.test") -> None:
        with smtplib.SMTP("127.0.0.1", self.site.ports["smtp"], timeout=TIMEOUT) as s:
            self.assertEqual(s.sendmail("alice@remote.test", [to], data), {})

    def pop3s(self) -> poplib.POP3_SSL:
        p = poplib.POP3_SSL("127.0.0.1", self.site.ports["pop3s"], context=self.ctx,
                            timeout=TIMEOUT)
        p.user("boss")
        p.pass_("secret")
        return p

    def submission(self) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", self.site.ports["submission"], timeout=TIMEOUT)
        s.starttls(context=self.ctx)
        s.ehlo("outlook.example")
        return s


class Pop3Items(OutlookCase):
    def test_19_capa_stls_and_995(self) -> None:
        """19. CAPA lists USER, UIDL, TOP, STLS, SASL PLAIN LOGIN; STLS on 110 works (and is
        then no longer listed); 995 is TLS from the start."""
        p = poplib.POP3("127.0.0.1", self.site.ports["pop3"], timeout=TIMEOUT)
        caps = p.capa()
        for cap in ("USER", "UIDL", "TOP", "STLS"):
            self.assertIn(cap, caps)
        self.assertEqual(caps["SASL"], ["PLAIN", "LOGIN"])
        p.stls(context=self.ctx)
        self.assertNotIn("STLS", p.capa())
        p.quit()
        p = self.pop3s()
        self.assertEqual(p.capa()["SASL"], ["PLAIN", "LOGIN"])
        p.quit()

    def test_20_sizes_uidl_top_dele_rset_quit(self) -> None:
        """20. Over 995: STAT/LIST sizes count CRLF (== RETR bytes); UIDL is the same in every
        session, after new deliveries and deletions; TOP n 0; DELE + RSET undoes; QUIT
        commits; a dropped connection deletes nothing."""
        for n in range(3):
            self.deliver(message("alice@remote.test", "boss@example.test", f"pop {n}")
                         + b"line two\r\n")
        p = self.pop3s()
        count, total = p.stat()
        self.assertEqual(count, 3)
        sizes = {int(n): int(s) for n, s in (x.split() for x in p.list()[1])}
        retrieved = {n: b"".join(line + b"\r\n" for line in p.retr(n)[1]) for n in sizes}
        self.assertEqual({n: len(b) for n, b in retrieved.items()}, sizes)
        self.assertEqual(sum(sizes.values()), total)
        uidl = p.uidl()[1]
        top = p.top(1, 0)[1]
        self.assertIn(b"Subject: pop 0", top)
        self.assertEqual(top[-1], b"")
        p.dele(1)
        p.rset()
        p.quit()
        p = self.pop3s()
        self.assertEqual(p.uidl()[1], uidl)
        p.dele(1)
        p.sock.close()  # dropped, no QUIT
        time.sleep(0.2)
        p = self.pop3s()
        self.assertEqual(p.stat()[0], 3)
        p.dele(2)
        p.quit()
        self.deliver(message("alice@remote.test", "boss@example.test", "pop 3"))
        p = self.pop3s()
        after = p.uidl()[1]
        self.assertEqual(after[:2], [uidl[0], b"2 " + uidl[2].split()[1]])
        self.assertEqual(len(after), 3)
        p.quit()

    def test_21_nul_bytes_removed(self) -> None:
        """21. A message with NUL bytes is served over 995 without them."""
        self.deliver(b"Subject: nul\r\n\r\nbad\0byte\r\n")
        p = self.pop3s()
        body = b"\r\n".join(p.retr(1)[1])
        p.quit()
        self.assertIn(b"bad", body)
        self.assertNotIn(b"\0", body)

    def test_22_pop3_delete_seen_by_imap(self) -> None:
        """22. POP3 DELE + QUIT (995) shows in an IMAP session (993) as EXPUNGE."""
        self.deliver(message("alice@remote.test", "boss@example.test", "shared 1"))
        self.deliver(message("alice@remote.test", "boss@example.test", "shared 2"))
        m = imaplib.IMAP4_SSL("127.0.0.1", self.site.ports["imaps"], ssl_context=self.ctx,
                              timeout=TIMEOUT)
        m.login("boss", "secret")
        self.assertEqual(m.select("INBOX"), ("OK", [b"2"]))
        p = self.pop3s()
        p.dele(1)
        p.quit()
        m.noop()
        self.assertEqual(m.response("EXPUNGE"), ("EXPUNGE", [b"1"]))
        m.logout()


class SubmissionItems(OutlookCase):
    def test_23_ehlo_after_starttls_and_465(self) -> None:
        """23. 587 with STARTTLS: after TLS, EHLO lists AUTH PLAIN LOGIN, SIZE, PIPELINING,
        8BITMIME, ENHANCEDSTATUSCODES; 465 is implicit TLS with the same list."""
        with self.submission() as s:
            self.assertLessEqual(WANT_EHLO, set(s.esmtp_features))
            self.assertEqual(s.esmtp_features["auth"].split(), ["PLAIN", "LOGIN"])
            self.assertNotIn("starttls", s.esmtp_features)
        with smtplib.SMTP_SSL("127.0.0.1", self.site.ports["smtps"], context=self.ctx,
                              timeout=TIMEOUT) as s:
            s.ehlo("outlook.example")
            self.assertLessEqual(WANT_EHLO, set(s.esmtp_features))

    def test_24_auth_login_plain_wrong(self) -> None:
        """24. AUTH LOGIN with two 334 prompts and with an initial response; AUTH PLAIN <b64>;
        a wrong password gives 535 5.7.8."""
        b64 = base64.b64encode
        with self.submission() as s:
            self.assertEqual(s.docmd("AUTH", "LOGIN"), (334, b"VXNlcm5hbWU6"))
            self.assertEqual(s.docmd(b64(b"boss").decode()), (334, b"UGFzc3dvcmQ6"))
            self.assertEqual(s.docmd(b64(b"wrong").decode()),
                             (535, b"5.7.8 Error: authentication failed"))
            self.assertEqual(s.docmd("AUTH", "LOGIN " + b64(b"boss").decode()),
                             (334, b"UGFzc3dvcmQ6"))
            self.assertEqual(s.docmd(b64(b"secret").decode()),
                             (235, b"2.7.0 Authentication successful"))
        with self.submission() as s:
            self.assertEqual(s.docmd("AUTH", "PLAIN " + b64(b"\0boss\0secret").decode()),
                             (235, b"2.7.0 Authentication successful"))

    def test_25_mail_size_and_relay(self) -> None:
        """25. 'MAIL FROM: <a@example.test> SIZE=1234' (space after the colon) is 250; a remote
        RCPT without AUTH from outside mynetworks is 554 5.7.1 Relay access denied; after AUTH
        it is accepted for relay (into the outbound queue; the transaction is reset here, so
        nothing leaves); another user's sender is 553."""
        with smtplib.SMTP("127.0.0.1", self.site.ports["smtp"], timeout=TIMEOUT) as s:
            s.ehlo("outlook.example")
            self.assertEqual(s.docmd("MAIL FROM: <a@example.test> SIZE=1234"), (250, b"2.1.0 Ok"))
            code, text = s.docmd("RCPT TO:<friend@remote.example>")
            self.assertEqual((code, text[:5]), (554, b"5.7.1"))
            self.assertIn(b"Relay access denied", text)
        with self.submission() as s:
            s.login("boss", "secret")
            self.assertEqual(s.docmd("MAIL FROM: <boss@example.test> SIZE=1234"),
                             (250, b"2.1.0 Ok"))
            self.assertEqual(s.docmd("RCPT TO:<friend@remote.example>"), (250, b"2.1.5 Ok"))
            code, text = s.docmd("RCPT TO:<carol@example.test>")
            self.assertEqual(code, 250)
            s.rset()
            code, text = s.docmd("MAIL FROM:<carol@example.test>")
            self.assertEqual(code, 553)
            self.assertIn(b"Sender address rejected: not owned by user boss", text)
