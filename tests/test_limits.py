"""mailsuite.limits: anvil's counts and rates, session counters, the once-a-minute log, Slot."""

from __future__ import annotations

from ipaddress import ip_network

from twisted.internet.task import Clock
from twisted.trial import unittest

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
        self.assertIn("mailsuite/master[", self.maillog.lines[0])
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
