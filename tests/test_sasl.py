"""mailsuite.auth.sasl: the PLAIN and LOGIN exchanges every protocol shares, and the plaintext
rule."""

from __future__ import annotations

import base64
import ipaddress
from types import SimpleNamespace

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailsuite.auth import sasl
from mailsuite.config import AuthConfig


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


def config(
    disable: bool = True, ssl: str = "yes", trusted: tuple[str, ...] = ()
) -> SimpleNamespace:
    auth = AuthConfig("shadow", "/etc/passwd", "/etc/shadow", 1000, disable,
                      [ipaddress.ip_network(n) for n in trusted])
    return SimpleNamespace(auth=auth, tls=SimpleNamespace(ssl=ssl))


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
