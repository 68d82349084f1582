"""mailsuite.auth.sasl: the PLAIN and LOGIN exchanges every protocol shares, and the plaintext
rule."""

from __future__ import annotations

import base64
import ipaddress

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailsuite.auth import sasl
from mailsuite.config import Config
from tests.configs import real_config


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class ExchangeTests(unittest.TestCase):
    def test_plain_with_initial_response(self) -> None:
        """AUTH PLAIN <b64>: one step gives the attempt (empty authzid allowed)."""
        step = sasl.Exchange.start(b"plain", b64(b"\0boss\0secret")).step()
        self.assertEqual(step, sasl.Attempt("PLAIN", b"boss", b"secret", b""))
        self.assertFalse(step.proxy)

    def test_plain_without_initial_response(self) -> None:
        """AUTH PLAIN: an empty challenge, then the answer."""
        exchange = sasl.Exchange.start(b"PLAIN")
        self.assertEqual(exchange.step(), sasl.Challenge(b""))
        self.assertEqual(exchange.respond(b64(b"boss\0boss\0secret")),
                         sasl.Attempt("PLAIN", b"boss", b"secret", b"boss"))

    def test_plain_proxy(self) -> None:
        """An authzid naming someone else marks the attempt as a proxy login (refused later)."""
        self.assertTrue(sasl.Exchange.start(b"PLAIN", b64(b"root\0boss\0secret")).step().proxy)

    def test_login_two_prompts(self) -> None:
        """AUTH LOGIN: Username:, then Password:, then the attempt."""
        exchange = sasl.Exchange.start(b"LOGIN")
        self.assertEqual(exchange.step(), sasl.Challenge(b"Username:"))
        self.assertEqual(exchange.respond(b64(b"boss")), sasl.Challenge(b"Password:"))
        self.assertEqual(exchange.respond(b64(b"secret")),
                         sasl.Attempt("LOGIN", b"boss", b"secret"))

    def test_login_with_initial_response(self) -> None:
        """AUTH LOGIN <b64 user>: straight to Password:."""
        exchange = sasl.Exchange.start(b"LOGIN", b64(b"boss"))
        self.assertEqual(exchange.step(), sasl.Challenge(b"Password:"))
        self.assertEqual(exchange.respond(b64(b"secret")).password, b"secret")

    def test_empty_initial_response(self) -> None:
        """'=' is an empty initial response: for PLAIN that is malformed, for LOGIN an empty
        user."""
        self.assertRaises(sasl.Malformed, sasl.Exchange.start(b"PLAIN", b"=").step)
        self.assertEqual(sasl.Exchange.start(b"LOGIN", b"=").step(), sasl.Challenge(b"Password:"))

    def test_cancel(self) -> None:
        """'*' cancels, as an initial response or as an answer."""
        self.assertRaises(sasl.Cancelled, sasl.Exchange.start(b"PLAIN", b"*").step)
        exchange = sasl.Exchange.start(b"LOGIN")
        exchange.step()
        self.assertRaises(sasl.Cancelled, exchange.respond, b"*")

    def test_malformed(self) -> None:
        """Bad base64, a PLAIN message without two NULs or without a user: Malformed."""
        for bad in [b"!!!", b"Ym9z\0", b64(b"boss secret"), b64(b"\0\0secret")]:
            self.assertRaises(sasl.Malformed, sasl.Exchange.start(b"PLAIN", bad).step)

    def test_unknown_mechanism(self) -> None:
        """Only PLAIN and LOGIN."""
        for name in [b"CRAM-MD5", b"XOAUTH2", b""]:
            self.assertRaises(sasl.UnknownMechanism, sasl.Exchange.start, name)


def transport(peer: str, host: str = "192.0.2.1") -> StringTransport:
    return StringTransport(hostAddress=IPv4Address("TCP", host, 143),
                           peerAddress=IPv4Address("TCP", peer, 40000))


def config(disable: bool = True, ssl: str = "yes", trusted: tuple[str, ...] = ()) -> Config:
    networks = [ipaddress.ip_network(n) for n in trusted]
    return real_config(auth={"disable_plaintext_auth": disable,
                             "login_trusted_networks": networks}, tls={"ssl": ssl})


class PlaintextRuleTests(unittest.TestCase):
    def test_rule(self) -> None:
        """disable_plaintext_auth = yes: only over TLS, from loopback, from the server's own
        address or from login_trusted_networks; no: everywhere; ssl = required: as yes."""
        cfg = config(trusted=("10.0.0.0/8",))
        self.assertFalse(sasl.plaintext_ok(cfg, transport("198.51.100.7"), secure=False))
        self.assertTrue(sasl.plaintext_ok(cfg, transport("198.51.100.7"), secure=True))
        self.assertTrue(sasl.plaintext_ok(cfg, transport("127.0.0.1"), secure=False))
        self.assertTrue(sasl.plaintext_ok(cfg, transport("192.0.2.1"), secure=False))
        self.assertTrue(sasl.plaintext_ok(cfg, transport("10.9.9.9"), secure=False))
        self.assertTrue(sasl.plaintext_ok(config(disable=False), transport("198.51.100.7"), False))
        required = config(disable=False, ssl="required")
        self.assertFalse(sasl.plaintext_ok(required, transport("198.51.100.7"), secure=False))
        self.assertTrue(sasl.plaintext_ok(required, transport("198.51.100.7"), secure=True))


class Recorder:
    """A sasl.Framing that records what the driver hands it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def sasl_challenge(self, encoded: bytes) -> str:
        self.events.append(("challenge", encoded))
        return "challenged"

    def sasl_cancelled(self) -> str:
        self.events.append(("cancelled", None))
        return "cancelled"

    def sasl_malformed(self, error: sasl.Malformed) -> str:
        self.events.append(("malformed", error))
        return "malformed"

    def sasl_attempt(self, attempt: sasl.Attempt) -> str:
        self.events.append(("attempt", attempt))
        return "attempted"


class DriverTests(unittest.TestCase):
    def test_login_steps(self) -> None:
        """LOGIN without initial response: two base64 challenges, then the attempt; ``waiting``
        exactly while a challenge waits for the client; the framing's results are returned."""
        framing = Recorder()
        driver = sasl.Driver(sasl.Exchange.start(b"LOGIN"), framing)
        self.assertFalse(driver.waiting)
        self.assertEqual(driver.begin(), "challenged")
        self.assertTrue(driver.waiting)
        self.assertEqual(driver.respond(b64(b"boss")), "challenged")
        self.assertEqual(driver.respond(b64(b"secret") + b"\r\n"), "attempted")
        self.assertFalse(driver.waiting)
        self.assertEqual(framing.events, [
            ("challenge", b64(b"Username:")), ("challenge", b64(b"Password:")),
            ("attempt", sasl.Attempt("LOGIN", b"boss", b"secret")),
        ])

    def test_plain_initial_response(self) -> None:
        framing = Recorder()
        driver = sasl.Driver(sasl.Exchange.start(b"PLAIN", b64(b"\0boss\0pw")), framing)
        self.assertEqual(driver.begin(), "attempted")
        self.assertEqual(framing.events, [("attempt", sasl.Attempt("PLAIN", b"boss", b"pw"))])

    def test_plain_empty_challenge(self) -> None:
        framing = Recorder()
        sasl.Driver(sasl.Exchange.start(b"PLAIN"), framing).begin()
        self.assertEqual(framing.events, [("challenge", b"")])

    def test_cancel(self) -> None:
        """``*`` as initial response or as an answer: cancelled, nothing waits any more."""
        framing = Recorder()
        driver = sasl.Driver(sasl.Exchange.start(b"LOGIN"), framing)
        driver.begin()
        self.assertEqual(driver.respond(b"*"), "cancelled")
        self.assertFalse(driver.waiting)
        self.assertEqual(sasl.Driver(sasl.Exchange.start(b"PLAIN", b"*"), framing).begin(),
                         "cancelled")

    def test_malformed(self) -> None:
        """Bad base64 is a BadBase64 (a Malformed); a bad PLAIN message a plain Malformed."""
        framing = Recorder()
        driver = sasl.Driver(sasl.Exchange.start(b"LOGIN"), framing)
        driver.begin()
        self.assertEqual(driver.respond(b"!!!"), "malformed")
        self.assertFalse(driver.waiting)
        sasl.Driver(sasl.Exchange.start(b"PLAIN", b64(b"no nul")), framing).begin()
        (_, bad64), (_, bad_plain) = framing.events[1:]
        self.assertIsInstance(bad64, sasl.BadBase64)
        self.assertEqual(str(bad64), "Invalid base64 data")
        self.assertNotIsInstance(bad_plain, sasl.BadBase64)
        self.assertEqual(str(bad_plain), "Invalid PLAIN message")


class LoginTests(unittest.TestCase):
    class Portal:
        def __init__(self, raises: bool = False) -> None:
            self.calls: list[tuple[object, object]] = []
            self.raises = raises

        def login(self, creds: object, mind: object, interface: object) -> object:
            if self.raises:
                raise RuntimeError("broken portal")
            self.calls.append((creds, interface))
            return "avatar"

    def test_credentials_carry_the_mechanism(self) -> None:
        portal = self.Portal()
        d = sasl.login(portal, sasl.Attempt("LOGIN", b"boss", b"pw"), "IFace")
        self.assertEqual(self.successResultOf(d), "avatar")
        [(creds, iface)] = portal.calls
        self.assertEqual((creds.username, creds.password, creds.sasl_mechanism, iface),
                         (b"boss", b"pw", "LOGIN", "IFace"))

    def test_proxy_refused_without_asking_the_portal(self) -> None:
        portal = self.Portal()
        d = sasl.login(portal, sasl.Attempt("PLAIN", b"boss", b"pw", b"root"), "IFace")
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(portal.calls, [])

    def test_portal_error_is_a_failure(self) -> None:
        d = sasl.login(self.Portal(raises=True), sasl.Attempt("PLAIN", b"boss", b"pw"), "IFace")
        self.failureResultOf(d, RuntimeError)


class ConversationTests(unittest.TestCase):
    class Session(Recorder, sasl.Conversation):
        pass

    def test_waiting_exchange_only(self) -> None:
        """``_sasl`` is the driver only while it waits for the client's line."""
        session = self.Session()
        session.events = []
        self.assertIsNone(session._sasl)
        self.assertEqual(session.sasl_begin(sasl.Exchange.start(b"LOGIN")), "challenged")
        self.assertIsNotNone(session._sasl)
        session.sasl_response(b64(b"boss"))
        self.assertEqual(session.sasl_response(b64(b"pw")), "attempted")
        self.assertIsNone(session._sasl)
        self.assertEqual(session.events[-1], ("attempt", sasl.Attempt("LOGIN", b"boss", b"pw")))

    def test_framing_must_be_given(self) -> None:
        self.assertRaises(NotImplementedError, sasl.Conversation().sasl_begin,
                          sasl.Exchange.start(b"PLAIN"))
