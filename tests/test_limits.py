"""mailsuite.limits: anvil's counts and rates, session counters, the once-a-minute log, Slot."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite.config import ConfigError, parse_config
from mailsuite.limits import Anvil, Counter, Limits, OncePer, Slot
from mailsuite.maillog import MailLog
from tests.configs import real_config


class AnvilTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.anvil = Anvil(self.clock, 60.0)

    def test_count_and_rate_per_service_and_client(self) -> None:
        """connect gives (open now, connections in the window), per service and address."""
        self.assertEqual(self.anvil.connect("smtp", "198.51.100.2"), (1, 1))
        self.assertEqual(self.anvil.connect("smtp", "198.51.100.2"), (2, 2))
        self.anvil.disconnect("smtp", "198.51.100.2")
        self.assertEqual(self.anvil.connect("smtp", "198.51.100.2"), (2, 3))
        self.assertEqual(self.anvil.connect("submission", "198.51.100.2"), (1, 1))
        self.assertEqual(self.anvil.connect("smtp", "198.51.100.3"), (1, 1))

    def test_window_starts_again_after_time_unit(self) -> None:
        """Rates count within anvil_rate_time_unit from the client's first event; after it
        they start from zero, open connections stay counted."""
        for _ in range(5):
            self.anvil.connect("smtp", "a")
            self.anvil.event("message", "smtp", "a")
        self.clock.advance(59)
        self.assertEqual(self.anvil.event("message", "smtp", "a"), 6)
        self.clock.advance(1)
        self.assertEqual(self.anvil.event("message", "smtp", "a"), 1)
        self.assertEqual(self.anvil.connect("smtp", "a"), (6, 1))

    def test_idle_clients_are_forgotten(self) -> None:
        """A client with no connection whose window ran out is dropped (memory bounded by one
        window of clients); one with a connection open stays."""
        for n in range(100):
            self.anvil.connect("smtp", f"10.0.0.{n}")
            if n:
                self.anvil.disconnect("smtp", f"10.0.0.{n}")
        self.assertEqual(len(self.anvil), 100)
        self.clock.advance(61)
        self.anvil.event("message", "smtp", "other")
        self.assertEqual(len(self.anvil), 2)  # 10.0.0.0 (still connected) and "other"

    def test_disconnect_of_unknown_is_harmless(self) -> None:
        """disconnect never goes below zero nor fails for a client it does not know."""
        self.anvil.disconnect("smtp", "nobody")
        self.anvil.connect("smtp", "a")
        self.anvil.disconnect("smtp", "a")
        self.anvil.disconnect("smtp", "a")
        self.assertEqual(self.anvil.connect("smtp", "a"), (1, 2))


class CounterAndOnceTests(unittest.TestCase):
    def test_counter(self) -> None:
        """add/remove per key; a key at zero is dropped."""
        c = Counter()
        self.assertEqual((c.add("x"), c.add("x"), c.add("y")), (1, 2, 1))
        c.remove("x")
        c.remove("y")
        c.remove("y")
        self.assertEqual((c["x"], c["y"], len(c)), (1, 0, 1))

    def test_once_per_minute(self) -> None:
        """allow is True once per key per period."""
        clock = Clock()
        once = OncePer(clock, 60)
        self.assertEqual([once.allow("a"), once.allow("a"), once.allow("b")], [True, False, True])
        clock.advance(59.9)
        self.assertFalse(once.allow("a"))
        clock.advance(0.1)
        self.assertTrue(once.allow("a"))

    def test_once_forgets_old_keys(self) -> None:
        """Keys older than a period are dropped (memory of one period of refusals)."""
        clock = Clock()
        once = OncePer(clock, 60)
        for n in range(5000):
            once.allow(n)
        clock.advance(61)
        once.allow("new")
        self.assertEqual(len(once), 1)


class LimitsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.maillog = MailLog(None, "mail.example.com", now=self.clock.seconds)
        cfg = real_config(mail={"mynetworks": [ip_network("192.0.2.0/24")],
                                "smtpd_client_event_limit_exceptions": [
                                    ip_network("192.0.2.0/24")]})
        self.limits = Limits(cfg.mail, self.maillog, self.clock)

    def test_exempt(self) -> None:
        """smtpd_client_event_limit_exceptions decides; loopback is not exempt by itself."""
        self.assertTrue(self.limits.exempt("192.0.2.9"))
        self.assertTrue(self.limits.exempt("::ffff:192.0.2.9"))
        self.assertFalse(self.limits.exempt("127.0.0.1"))
        self.assertFalse(self.limits.exempt("198.51.100.2"))

    def test_default_exceptions_are_mynetworks(self) -> None:
        """The default of smtpd_client_event_limit_exceptions is $mynetworks (loopback)."""
        limits = Limits(real_config().mail, self.maillog, self.clock)
        self.assertTrue(limits.exempt("127.0.0.1"))
        self.assertTrue(limits.exempt("::1"))
        self.assertFalse(limits.exempt("198.51.100.2"))

    def test_slot_process_limit_and_userip(self) -> None:
        """Slot: a session of the service while there is room (the refusal logged once a
        minute, Dovecot's words); user+IP counted per service until release."""
        slots = [Slot(self.limits, "imap", "198.51.100.2") for _ in range(4)]
        self.assertEqual([s.enter(3) for s in slots], [True, True, True, False])
        self.assertFalse(Slot(self.limits, "imap", "198.51.100.3").enter(3))
        self.assertEqual(len(self.maillog.lines), 1)
        self.assertIn("postfix/master[", self.maillog.lines[0])
        self.assertIn("Warning: service(imap): process_limit (3) reached, client connections are"
                      " being dropped", self.maillog.lines[0])
        self.assertTrue(Slot(self.limits, "pop3", "198.51.100.2").enter(3))  # its own count
        self.assertEqual([s.login("boss", 2) for s in slots[:3]], [True, True, False])
        self.assertTrue(slots[2].login("carol", 2))
        slots[0].release()
        slots[0].release()  # twice: counted once
        self.assertTrue(slots[3].enter(3))
        self.assertTrue(slots[3].login("boss", 2))
        self.assertEqual(self.limits.userip[("imap", "boss", "198.51.100.2")], 2)
        for s in slots:
            s.release()
        self.assertEqual((len(self.limits.userip), self.limits.sessions["imap"]), (0, 0))

    def test_zero_means_no_user_limit(self) -> None:
        """mail_max_userip_connections = 0: no limit (as Dovecot)."""
        slots = [Slot(self.limits, "pop3", "198.51.100.2") for _ in range(20)]
        self.assertTrue(all(s.login("boss", 0) for s in slots))


class ConfigTests(unittest.TestCase):
    def parse(self, text: str) -> Any:
        return parse_config(text, "mail.ini", hostname=lambda: "mx.example.com")

    def test_defaults(self) -> None:
        """Postfix's and Dovecot's defaults; the exceptions follow mynetworks ($mynetworks)."""
        cfg = self.parse("[mail]\nmynetworks = 192.0.2.0/24\n")
        m = cfg.mail
        self.assertEqual(
            (m.smtpd_client_connection_count_limit, m.smtpd_client_connection_rate_limit,
             m.smtpd_client_message_rate_limit, m.smtpd_client_recipient_rate_limit,
             m.smtpd_client_new_tls_session_rate_limit, m.anvil_rate_time_unit,
             m.default_process_limit, m.smtpd_recipient_limit, m.smtpd_soft_error_limit,
             m.smtpd_hard_error_limit, m.smtpd_error_sleep_time, m.smtpd_junk_command_limit,
             m.line_length_limit),
            (50, 0, 0, 0, 0, 60.0, 100, 1000, 10, 20, 1.0, 100, 2048))
        self.assertEqual(m.smtpd_client_event_limit_exceptions, [ip_network("192.0.2.0/24")])
        self.assertEqual((cfg.imap.mail_max_userip_connections, cfg.imap.process_limit,
                          cfg.pop3.mail_max_userip_connections, cfg.pop3.process_limit),
                         (10, 1024, 10, 1024))

    def test_values(self) -> None:
        """Set values are read; [pop3] is its own section."""
        cfg = self.parse("[mail]\nsmtpd_client_connection_rate_limit = 30\n"
                         "anvil_rate_time_unit = 2m\nsmtpd_client_event_limit_exceptions =\n"
                         "[imap]\nmail_max_userip_connections = 0\n"
                         "[pop3]\nmail_max_userip_connections = 3\nprocess_limit = 7\n")
        self.assertEqual((cfg.mail.smtpd_client_connection_rate_limit,
                          cfg.mail.anvil_rate_time_unit,
                          cfg.mail.smtpd_client_event_limit_exceptions), (30, 120.0, []))
        self.assertEqual((cfg.imap.mail_max_userip_connections, cfg.pop3.process_limit,
                          cfg.pop3.mail_max_userip_connections), (0, 7, 3))

    def test_bad_values_all_reported(self) -> None:
        """Bad limit values are errors naming their keys, all at once."""
        with self.assertRaises(ConfigError) as e:
            self.parse("[mail]\nanvil_rate_time_unit = 0s\nline_length_limit = 100\n"
                       "default_process_limit = 0\nsmtpd_client_event_limit_exceptions = x\n"
                       "smtpd_client_connection_count_limit = -1\n"
                       "[imap]\nprocess_limit = 0\n[pop3]\nmail_max_userip_connections = ten\n")
        text = str(e.exception)
        for key in ("[mail] anvil_rate_time_unit: '0s' is not a time of at least 1s",
                    "[mail] line_length_limit: '100' is too small: at least 512",
                    "[mail] default_process_limit: '0' is not at least 1",
                    "[mail] smtpd_client_event_limit_exceptions: 'x' is not an IP network",
                    "[mail] smtpd_client_connection_count_limit: '-1' is not a whole number",
                    "[imap] process_limit: '0' is not at least 1",
                    "[pop3] mail_max_userip_connections: 'ten' is not a whole number"):
            self.assertIn(key, text)
