"""Dovecot's IMAP limits (imap/limits.py) on StringTransport sessions: process_limit shared by
the factories of 143 and 993, mail_max_userip_connections, invalid and total commands before
login, APPEND bounded by message_size_limit before its literal is read."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mailsuite.imap.limits import LOGIN_MAX_COMMANDS
from mailsuite.imap.server import IMAPFactory
from mailsuite.limits import Limits
from tests.test_imap_server import ImapTestCase, Session, make_config

STRANGER = "198.51.100.2"
USERIP = (b"Maximum number of connections from user+IP exceeded"
          b" (mail_max_userip_connections=2)")


class ImapLimitTests(ImapTestCase):
    def configure(self, mail: dict[str, Any] | None = None, **imap: Any) -> None:
        config = make_config(disable_plaintext_auth=False)
        config = replace(config, imap=replace(config.imap, **imap),
                         mail=replace(config.mail, **(mail or {})))
        self.limits = Limits(config.mail, self.maillog, self.clock)
        self.factory = IMAPFactory(config, self.portal, self.maillog, clock=self.clock,
                                   limits=self.limits)
        self.imaps = IMAPFactory(config, self.portal, self.maillog, clock=self.clock,
                                 implicit_tls=True, limits=self.limits)

    def log(self, text: str) -> list[str]:
        return [line for line in self.maillog.lines if text in line]

    def test_process_limit_counts_both_ports(self) -> None:
        """[imap] process_limit: sessions of 143 and 993 together; one more gets BYE
        [UNAVAILABLE] instead of the greeting and is closed; Dovecot's warning once a
        minute; a closed session makes room."""
        self.configure(process_limit=2)
        a = self.session()

        b = Session(self.imaps)
        c = self.session(STRANGER)
        self.assertTrue(a.greeting.startswith(b"* OK"))
        self.assertTrue(b.greeting.startswith(b"* OK"))
        self.assertEqual(c.greeting, b"* BYE [UNAVAILABLE] Maximum number of connections"
                                     b" reached, try again later.\r\n")
        self.assertTrue(c.transport.disconnecting)
        c.proto.connectionLost()
        self.session().proto.connectionLost()
        (line,) = self.log("process_limit")
        self.assertIn("postfix/master[", line)
        self.assertTrue(line.endswith("Warning: service(imap): process_limit (2) reached,"
                                      " client connections are being dropped"))
        a.proto.connectionLost()
        self.assertTrue(self.session().greeting.startswith(b"* OK"))

    def test_refused_connection_reads_nothing(self) -> None:
        """Commands a refused client sent at once are not run (no login, no reply)."""
        self.configure(process_limit=1)
        self.session()
        refused = self.session()
        self.assertEqual(refused.cmd(b"a LOGIN boss secret"), b"")
        self.assertEqual(self.realm.avatars, [])

    def test_userip_limit(self) -> None:
        """mail_max_userip_connections per user and address, loopback included (Dovecot has
        no exemption): the third login gets BYE and is closed, logged once a minute; another
        address, and the same one after a logout, are served."""
        self.configure(mail_max_userip_connections=2)
        first, second = self.session(), self.session()
        self.assertIn(b"L1 OK", first.login())
        self.assertIn(b"L1 OK", second.login())
        third = self.session()
        self.assertEqual(third.login(), b"* BYE " + USERIP + b"\r\n")
        self.assertTrue(third.transport.disconnecting)
        third.proto.connectionLost()
        fourth = self.session()
        self.assertEqual(fourth.login(), b"* BYE " + USERIP + b"\r\n")
        fourth.proto.connectionLost()
        (line,) = self.log("user+IP")
        self.assertIn("dovecot: imap-login: ", line)
        self.assertTrue(line.endswith(USERIP.decode() + ": user=<boss>, method=PLAIN,"
                                      " rip=127.0.0.1, lip=127.0.0.1"), line)
        self.assertIn(b"L1 OK", self.session(STRANGER).login())
        self.assertIn(b"a OK", first.cmd(b"a NOOP"))  # the others go on
        first.cmd(b"z LOGOUT")
        first.proto.connectionLost()
        self.assertIn(b"L1 OK", self.session().login())
        self.assertIsNone(third.proto.user)  # refused: never in the authenticated state
        self.assertEqual(third.proto.state, "unauth")

    def test_default_userip_limit_is_ten(self) -> None:
        """Dovecot's default: 10 sessions per user+IP."""
        self.configure()
        replies = [self.session().login() for _ in range(11)]
        self.assertTrue(all(b"L1 OK" in r for r in replies[:10]))
        self.assertTrue(replies[10].startswith(b"* BYE Maximum number"))

    def test_bad_commands_before_login(self) -> None:
        """Dovecot imap-login: the third invalid command before login ends the connection."""
        self.configure()
        s = self.session()
        self.assertEqual(s.cmd(b"a FOO"), b"a BAD Unknown command.\r\n")
        self.assertEqual(s.cmd(b"b SELECT INBOX"), b"b BAD Log in first.\r\n")
        self.assertEqual(s.send(b"\r\n"), b"* BAD Missing tag or command.\r\n"
                                          b"* BYE Too many invalid IMAP commands.\r\n")
        self.assertTrue(s.transport.disconnecting)
        t = self.session()
        t.cmd(b"a FOO")
        t.cmd(b"b FOO")
        t.login()
        self.assertEqual(t.cmd(b"c FOO"), b"c BAD Unknown command.\r\n")
        self.assertEqual(t.cmd(b"d FOO"), b"d BAD Unknown command.\r\n")
        self.assertFalse(t.transport.disconnecting)

    def test_commands_before_login(self) -> None:
        """At most LOGIN_MAX_COMMANDS commands before login, then BYE."""
        self.configure()
        s = self.session()
        out = s.send(b"a NOOP\r\n" * LOGIN_MAX_COMMANDS)
        self.assertEqual(out.count(b"a OK"), LOGIN_MAX_COMMANDS)
        self.assertEqual(s.cmd(b"b NOOP"), b"* BYE Too many commands before login.\r\n")
        self.assertTrue(s.transport.disconnecting)

    def test_append_over_message_size_limit(self) -> None:
        """APPEND of a message over message_size_limit: NO [TOOBIG] before the literal is read
        (no continuation request); a non-synchronizing one: BAD [TOOBIG] and the connection
        ends without reading it; one within the limit is stored."""
        self.configure(mail={"message_size_limit": 100000})
        s = self.session()
        s.login()
        self.assertEqual(s.cmd(b"a APPEND INBOX {100001}"), b"a NO [TOOBIG] Literal too big.\r\n")
        message = b"Subject: x\r\n\r\n" + b"y" * 90000
        out = s.send(b"b APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
        self.assertIn(b"b OK [APPENDUID", out)
        out = s.send(b"c APPEND INBOX {200000+}\r\n" + b"z" * 1000)
        self.assertEqual(out, b"c BAD [TOOBIG] Literal too big.\r\n* BYE Literal too big.\r\n")
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(len(self.box().messages), 1)

    def test_logout_releases_at_once(self) -> None:
        """LOGOUT ends the session's place in the counts at once, before the connection is
        gone (a TLS close can wait for the client)."""
        self.configure(mail_max_userip_connections=1, process_limit=1)
        s = self.session()
        s.login()
        s.cmd(b"z LOGOUT")
        self.assertIn(b"L1 OK", self.session().login())
        s.proto.connectionLost()  # later: counted once only
        self.assertEqual(self.limits.sessions["imap"], 1)
