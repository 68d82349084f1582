"""Live reload against the real server (issue 14 item 3): ``kill -HUP`` after mail.ini
changed, with privilege separation (the harness's default) and in one process.

- mynetworks and smtpd_recipient_restrictions: a new SMTP session gets the new policy (a
  relay that was denied is allowed; a recipient that was taken is refused), a session opened
  before the HUP keeps the policy it started with and keeps working;
- an invalid mail.ini: refused with file, section and key in the maillog and twistd's log,
  and the old configuration still serves;
- a changed IMAP port: the new port listens, the old one is closed; an IMAP session opened
  before goes on; a key that needs a restart (queue_directory) is logged as such and kept;
- a hibernated IMAP session sleeps through a reload and wakes on new mail;
- relayhost: the next message and the retry of a deferred one go to the new relay host.
"""

from __future__ import annotations

import imaplib
import os
import signal
import smtplib
import socket
import time
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from tests import fakemx
from tests.integration.harness import Site, free_port
from tests.integration.test_end_to_end import message
from tests.integration import test_hibernate

TIMEOUT = 20.0


class ReloadCase(unittest.TestCase):
    mail_extra = ""

    def setUp(self) -> None:
        self.site = Site(self, mail_extra=self.mail_extra)
        self.site.start()

    def rewrite(self, mail_extra: str, replace: tuple[str, str] = ("", "")) -> None:
        self.site.mail_extra = self.mail_extra + "\n" + mail_extra
        self.site._write("mail.ini", self.site.ini().replace(*replace))

    def hup(self, expect: str) -> str:
        """SIGHUP to twistd; waits (bounded) until the maillog has ``expect`` once more."""
        before = self.site.maillog_text().count(expect)
        assert self.site.process is not None
        self.site.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while self.site.maillog_text().count(expect) <= before:
            self.assertLess(time.monotonic(), deadline,
                            self.site.maillog_text() + self.site.log())
            time.sleep(0.05)
        return self.site.maillog_text()

    def smtp(self) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", self.site.ports["smtp"], timeout=TIMEOUT)
        self.addCleanup(s.close)
        s.ehlo("client.example.org")
        return s

    def rcpt(self, s: smtplib.SMTP, to: str) -> int:
        s.rset()
        s.mail("alice@example.org")
        code, _ = s.rcpt(to)
        return code

    def test_new_sessions_get_new_policy_old_session_keeps_its(self) -> None:
        """mynetworks gains 127.0.0.0/8 and smtpd_recipient_restrictions becomes
        ``reject``: a new session may relay and cannot reach a local user; the session opened
        before still may not relay, still delivers locally, and NOOP keeps working."""
        old = self.smtp()
        self.assertEqual(self.rcpt(old, "bob@elsewhere.test"), 554)  # Relay access denied
        access = self.site._write("access", "boss@example.test REJECT\n")
        self.rewrite("mynetworks = 127.0.0.0/8\n"
                     f"smtpd_recipient_restrictions = check_recipient_access texthash:{access}")
        self.hup("reload -- configuration")
        new = self.smtp()
        self.assertEqual(self.rcpt(new, "bob@elsewhere.test"), 250)
        self.assertEqual(self.rcpt(new, "boss@example.test"), 554)
        self.assertEqual(old.noop()[0], 250)
        self.assertEqual(self.rcpt(old, "bob@elsewhere.test"), 554)
        self.assertEqual(self.rcpt(old, "boss@example.test"), 250)

    def test_invalid_file_refused_old_configuration_serves(self) -> None:
        """A bad value and an unknown key: refused, each line naming file, section and key,
        in the maillog and twistd's log; the running configuration goes on serving."""
        self.rewrite("mynetworks = 127.0.0.0/33\nno_such_knob = 1")
        text = self.hup("reload refused")
        for log in (text, self.site.log()):
            self.assertIn(f"{self.site.config}: [mail] mynetworks", log)
            self.assertIn(f"{self.site.config}: [mail] no_such_knob", log)
        self.assertNotIn("reload -- configuration", text)
        s = self.smtp()
        self.assertEqual(self.rcpt(s, "bob@elsewhere.test"), 554)
        self.assertEqual(self.rcpt(s, "boss@example.test"), 250)

    def test_table_mail_owner_cannot_read_refused(self) -> None:
        """privsep: an access table only root can read is refused as at start (the network
        process, mail_owner, could not read it), naming it; the old policy still serves."""
        if "mail_owner =" in self.mail_extra or os.geteuid() != 0:
            raise unittest.SkipTest("privilege separation only")
        access = self.site._write("access", "boss@example.test REJECT\n")
        os.chmod(access, 0o600)
        self.rewrite(f"smtpd_recipient_restrictions = check_recipient_access texthash:{access}")
        text = self.hup("reload refused")
        self.assertIn(f"error: {self.site.config}: [mail] smtpd_*_restrictions: {access}: ", text)
        self.assertIn("read by mail_owner", text)
        self.assertEqual(self.rcpt(self.smtp(), "boss@example.test"), 250)

    def test_new_login_gets_new_agent(self) -> None:
        """privsep: an IMAP session open at the reload stays in its agent (the configuration
        it started with); the next login of the same account gets a new agent."""
        if "mail_owner =" in self.mail_extra or os.geteuid() != 0:
            raise unittest.SkipTest("privilege separation only")
        agents = test_hibernate.HibernateTests.agents_of
        before = imaplib.IMAP4("127.0.0.1", self.site.ports["imap"], timeout=TIMEOUT)
        self.addCleanup(before.shutdown)
        before.login("boss", "secret")
        before.select("INBOX")
        old = set(agents(self, "boss"))  # type: ignore[arg-type]
        self.assertEqual(len(old), 1)
        self.rewrite("mynetworks = 127.0.0.0/8")
        self.hup("reload -- configuration")
        after = imaplib.IMAP4("127.0.0.1", self.site.ports["imap"], timeout=TIMEOUT)
        self.addCleanup(after.shutdown)
        after.login("boss", "secret")
        self.assertEqual(after.select("INBOX")[0], "OK")
        now = set(agents(self, "boss"))  # type: ignore[arg-type]
        self.assertEqual(len(now), 2)
        self.assertTrue(old < now)
        self.assertEqual(before.noop()[0], "OK")

    def test_changed_imap_port_rebound_restart_key_kept(self) -> None:
        """[listen] imap moves: the new port greets, the old one refuses connections; the
        IMAP session logged in before goes on. queue_directory changed: logged as needing a
        restart, and mail is still taken."""
        before = imaplib.IMAP4("127.0.0.1", self.site.ports["imap"], timeout=TIMEOUT)
        self.addCleanup(before.shutdown)
        before.login("boss", "secret")
        old_port = self.site.ports["imap"]
        self.site.ports["imap"] = free_port()
        queue = f"queue_directory = {self.site.dir}/queue"
        self.rewrite("", (queue, queue + "2"))
        text = self.hup("reload -- configuration")
        self.assertIn(f"{self.site.config}: [mail] queue_directory: changed; needs a restart",
                      text)
        with socket.create_connection(("127.0.0.1", self.site.ports["imap"]),
                                      timeout=TIMEOUT) as s:
            self.assertTrue(s.recv(100).startswith(b"* OK"))
        deadline = time.monotonic() + TIMEOUT
        while True:  # (the old port is closed once the network process has the new one)
            try:
                socket.create_connection(("127.0.0.1", old_port), timeout=TIMEOUT).close()
            except ConnectionRefusedError:
                break
            self.assertLess(time.monotonic(), deadline, f"port {old_port} still listens")
            time.sleep(0.05)
        self.assertEqual(before.noop()[0], "OK")
        self.assertEqual(before.select("INBOX")[0], "OK")
        self.assertEqual(self.rcpt(self.smtp(), "boss@example.test"), 250)


class OneProcessReloadTests(ReloadCase):
    """The same without privilege separation (``mail_owner =`` empty): applied in-process."""

    mail_extra = "mail_owner ="


class HibernatedAcrossReloadTests(unittest.TestCase):
    """An IMAP session hibernated (privsep: held by the network process, its agent gone)
    before a reload that moves the IMAP port and changes mynetworks: new mail wakes it into
    an agent of the new configuration, and the session goes on."""

    # test_hibernate's site and helpers (not its tests)
    skip = test_hibernate.HibernateTests.skip
    setUp = test_hibernate.HibernateTests.setUp
    agents_of = test_hibernate.HibernateTests.agents_of
    idle = test_hibernate.HibernateTests.idle
    asleep = test_hibernate.HibernateTests.asleep

    def test_new_mail_wakes_it_after_reload(self) -> None:
        line = self.idle()
        self.asleep()
        self.site.ports["imap"] = free_port()
        self.site.mail_extra = "mynetworks = 127.0.0.0/8"
        self.site._write("mail.ini", self.site.ini())
        before = self.site.maillog_text().count("reload -- configuration")
        assert self.site.process is not None
        self.site.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while self.site.maillog_text().count("reload -- configuration") <= before:
            self.assertLess(time.monotonic(), deadline, self.site.log())
            time.sleep(0.05)
        self.c.send(message("new", "body"), ["boss@example.test"])
        got = line.expect(b"* 1 RECENT")
        self.assertEqual(got[-2:], [b"* 4 EXISTS", b"* 1 RECENT"])
        line.send(b"DONE\r\nd NOOP\r\n")
        line.expect(b"d OK")
        fresh = imaplib.IMAP4("127.0.0.1", self.site.ports["imap"], timeout=TIMEOUT)
        fresh.login("boss", "secret")
        self.assertEqual(fresh.select("INBOX"), ("OK", [b"4"]))
        fresh.logout()


class RelayhostReloadTests(unittest.TestCase):
    """relayhost changed by a reload: the next message, and the retry of one deferred before,
    go to the new relay host (a fakemx sink on this test's reactor)."""

    timeout = 90

    @defer.inlineCallbacks
    def wait_for(self, predicate: Any, what: str) -> Any:
        deadline = time.monotonic() + TIMEOUT
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}")
            yield task.deferLater(reactor, 0.1, lambda: None)

    def send(self, site: Site, subject: str) -> defer.Deferred[Any]:
        def blocking() -> Any:
            with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=TIMEOUT) as s:
                return s.sendmail("boss@example.test", ["far@remote.test"],
                                  message(subject, "hello\n", to="far@remote.test"))
        return threads.deferToThread(blocking)

    @defer.inlineCallbacks
    def test_relayhost_change_applies_to_new_and_queued_mail(self) -> None:
        """A message deferred (nothing listens at the old relayhost), then relayhost moves to
        a listening sink: it and a message sent after the reload both arrive there."""
        dead, live = free_port(), free_port()
        sinks, ports = fakemx.start_sinks({"127.0.0.1": fakemx.Behaviour()}, live)
        for p in ports:
            self.addCleanup(p.stopListening)
        timing = "minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\nmynetworks = 127.0.0.0/8\n"
        site = Site(self, mail_extra=timing + f"relayhost = [127.0.0.1]:{dead}")
        site.start()
        yield self.send(site, "before")
        yield self.wait_for(lambda: "status=deferred" in site.maillog_text(), "a deferral")
        site.mail_extra = timing + f"relayhost = [127.0.0.1]:{live}"
        site._write("mail.ini", site.ini())
        assert site.process is not None
        site.process.send_signal(signal.SIGHUP)
        yield self.wait_for(lambda: "reload -- configuration" in site.maillog_text(), "reload")
        yield self.send(site, "after")
        received = sinks["127.0.0.1"].received
        yield self.wait_for(lambda: len(received) >= 2, "both messages at the new relay host")
        subjects = sorted(line for got in received for line in got.data.split(b"\n")
                          if line.startswith(b"Subject:"))
        self.assertEqual(subjects, [b"Subject: after", b"Subject: before"])
