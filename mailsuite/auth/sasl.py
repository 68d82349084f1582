"""SASL PLAIN and LOGIN for IMAP AUTHENTICATE, POP3 AUTH and SMTP AUTH, and the one plaintext rule.

The three protocols differ only in how a challenge is written (``+ x``, ``+ x``, ``334 x``) and how
the result is answered; the exchange itself is here, once:

    exchange = Exchange.start(b"LOGIN", initial)   # UnknownMechanism for anything else
    step = exchange.step()                         # Challenge(b"Username:") or an Attempt
    step = exchange.respond(client_line)           # base64 text, "*" = cancel

and so is the driving of it: ``Driver(exchange, session).begin()`` runs the steps and hands each
outcome to the session, the exchange's ``Framing`` (``sasl_challenge``: write the challenge;
``sasl_cancelled`` / ``sasl_malformed``: the replies to ``*`` and to a bad response;
``sasl_attempt``: the one login method); ``driver.respond(line)`` takes the client's answer while
``driver.waiting``; ``Conversation`` keeps them for a session. A protocol keeps nothing but
its wire framing and its reply codes.
``login(portal, attempt, interface)`` is the portal call all three make.

``initial`` is the initial response (SASL-IR, RFC 4959 / RFC 5034 / RFC 4954) as sent: base64,
``=`` for an empty one, None when absent. Bad base64 (``BadBase64``) and malformed PLAIN
messages raise ``Malformed``; ``*`` raises ``Cancelled``. The outcome is an ``Attempt``
(mechanism, user, password, authzid) that the protocol hands to its single login method, where
the portal (and any login policy) is consulted. A PLAIN authorization identity other than the
user itself is refused there, as Dovecot refuses it without master users.

``plaintext_ok(config, transport, secure)`` is the rule every protocol uses to decide whether
LOGIN/USER/PASS and the PLAIN/LOGIN mechanisms are offered and accepted (Dovecot's
``disable_plaintext_auth`` / ``ssl = required``, see ``AuthConfig.plaintext_allowed``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.cred import credentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer

from mailsuite.config import Config
from mailsuite.net import host_of

MECHANISMS = (b"PLAIN", b"LOGIN")


class SaslError(Exception):
    """The exchange ended without an attempt."""


class Cancelled(SaslError):
    """The client sent ``*``."""


class Malformed(SaslError):
    """Not base64, or not a PLAIN message; ``str()`` says which."""


class BadBase64(Malformed):
    """The response is not base64 (``str()``: "Invalid base64 data")."""


class UnknownMechanism(SaslError):
    """A mechanism other than PLAIN and LOGIN."""


@dataclass(frozen=True)
class Challenge:
    """Send ``data`` (raw, the protocol base64-encodes it) and wait for the client's line."""

    data: bytes


@dataclass(frozen=True)
class Attempt:
    """Credentials to check. ``authzid`` is PLAIN's authorization identity (b"" if none)."""

    mechanism: str
    username: bytes
    password: bytes
    authzid: bytes = b""

    @property
    def proxy(self) -> bool:
        """Asks to act as someone else: refused (no master users)."""
        return bool(self.authzid) and self.authzid != self.username


def decode(text: bytes) -> bytes:
    """A client's base64 response; ``=`` is empty (SASL-IR); Malformed on bad base64."""
    text = text.strip()
    if text == b"=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadBase64("Invalid base64 data") from None


def encode(data: bytes) -> bytes:
    return base64.b64encode(data)


class Exchange:
    """One PLAIN or LOGIN exchange; see the module docstring."""

    def __init__(self, mechanism: bytes, initial: bytes | None) -> None:
        self.mechanism = mechanism.decode("ascii")
        self._initial = initial
        self._username: bytes | None = None

    @classmethod
    def start(cls, mechanism: bytes, initial: bytes | None = None) -> Exchange:
        name = mechanism.upper()
        if name not in MECHANISMS:
            raise UnknownMechanism(mechanism.decode("ascii", "replace"))
        return cls(name, initial)

    def step(self) -> Challenge | Attempt:
        """The first step: uses the initial response if there was one."""
        if self._initial is not None:
            if self._initial.strip() == b"*":
                raise Cancelled()
            return self._take(decode(self._initial))
        return Challenge(b"" if self.mechanism == "PLAIN" else b"Username:")

    def respond(self, line: bytes) -> Challenge | Attempt:
        """The client's answer to the last challenge."""
        if line.strip() == b"*":
            raise Cancelled()
        return self._take(decode(line))

    def _take(self, data: bytes) -> Challenge | Attempt:
        if self.mechanism == "PLAIN":
            parts = data.split(b"\0")
            if len(parts) != 3 or not parts[1]:
                raise Malformed("Invalid PLAIN message")
            return Attempt("PLAIN", parts[1], parts[2], parts[0])
        if self._username is None:
            self._username = data
            return Challenge(b"Password:")
        return Attempt("LOGIN", self._username, data)


class Framing(Protocol):
    """What a protocol tells the ``Driver``: its wire framing and its replies."""

    def sasl_challenge(self, encoded: bytes) -> Any:
        """Write the base64 challenge ``encoded``; the client's answer goes to ``respond``."""

    def sasl_cancelled(self) -> Any:
        """Answer the client's ``*``."""

    def sasl_malformed(self, error: Malformed) -> Any:
        """Answer a response that is not base64 (``BadBase64``) or not a PLAIN message."""

    def sasl_attempt(self, attempt: Attempt) -> Any:
        """The exchange is complete: check ``attempt`` (the protocol's one login method)."""


class Driver:
    """Runs one exchange step by step; ``waiting`` while a challenge waits for the client."""

    def __init__(self, exchange: Exchange, framing: Framing) -> None:
        self.exchange, self.framing = exchange, framing
        self.waiting = False

    def begin(self) -> Any:
        """The first step (the initial response, if the command carried one)."""
        return self._run(self.exchange.step)

    def respond(self, line: bytes) -> Any:
        """The client's line in answer to the challenge written last."""
        assert self.waiting, "no challenge is waiting for an answer"
        return self._run(lambda: self.exchange.respond(line))

    def _run(self, step: Callable[[], Challenge | Attempt]) -> Any:
        self.waiting = False
        try:
            result = step()
        except Cancelled:
            return self.framing.sasl_cancelled()
        except Malformed as e:
            return self.framing.sasl_malformed(e)
        if isinstance(result, Challenge):
            self.waiting = True
            return self.framing.sasl_challenge(encode(result.data))
        return self.framing.sasl_attempt(result)


class Conversation:
    """A mixin for a protocol's login mixin, which is its own ``Framing`` (it overrides the
    four ``sasl_*`` methods): the exchange of its last AUTH and its driver."""

    _driver: Driver | None = None

    def sasl_begin(self, exchange: Exchange) -> Any:
        """Start ``exchange`` (the mechanism and initial response of the command)."""
        self._driver = Driver(exchange, self)
        return self._driver.begin()

    @property
    def _sasl(self) -> Driver | None:
        """The exchange waiting for the client's next line, if one is (the reader routes it
        to ``sasl_response`` then)."""
        driver = self._driver
        return driver if driver is not None and driver.waiting else None

    def sasl_response(self, line: bytes) -> Any:
        """The client's line while an exchange waits for one."""
        driver = self._sasl
        assert driver is not None
        return driver.respond(line)

    def sasl_challenge(self, encoded: bytes) -> Any:
        raise NotImplementedError

    def sasl_cancelled(self) -> Any:
        raise NotImplementedError

    def sasl_malformed(self, error: Malformed) -> Any:
        raise NotImplementedError

    def sasl_attempt(self, attempt: Attempt) -> Any:
        raise NotImplementedError


def login(portal: Any, attempt: Attempt, interface: Any,
          handoff: dict[str, Any] | None = None) -> defer.Deferred[Any]:
    """Check ``attempt`` through ``portal`` for an avatar of ``interface``; a PLAIN
    authorization identity other than the user fails (no master users). The mechanism rides
    on the credentials as ``sasl_mechanism`` (the login policy logs it); ``handoff``, the
    fields an IMAP or POP3 session continues with (tag, method, secure, rip, lip), as
    ``handoff``: a privilege-separated server opens the session with the password check."""
    if attempt.proxy:
        return defer.fail(UnauthorizedLogin("no master users"))
    creds = credentials.UsernamePassword(attempt.username, attempt.password)
    creds.sasl_mechanism = attempt.mechanism  # type: ignore[attr-defined]
    if handoff is not None:
        creds.handoff = handoff  # type: ignore[attr-defined]
    return defer.maybeDeferred(portal.login, creds, None, interface)


def plaintext_ok(config: Config, transport: Any, secure: bool) -> bool:
    """Whether plaintext logins are offered and accepted on this connection.

    ``secure``: the session runs over TLS (STARTTLS done, or an implicit-TLS port).
    """
    return bool(config.auth.plaintext_allowed(
        host_of(transport.getPeer()), secure, local_ip=host_of(transport.getHost()),
        ssl_required=config.tls.ssl == "required",
    ))


def printable(name: bytes, limit: int = 100) -> str:
    """A login name as logs may show it (no control characters, no ``<>``)."""
    text = name.decode("utf-8", "replace")
    return "".join(c if c.isprintable() and c not in "<>" else "?" for c in text)[:limit]
