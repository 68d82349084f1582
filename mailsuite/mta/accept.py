"""What the SMTP side accepts and refuses before a message is delivered: the RCPT / MAIL FROM
refusals (Postfix's wording and codes), ``DeliveryAvatar`` (what the realm hands the SMTP
server, an ``smtp.IMessageDelivery``: sender ownership, relay control, the recipient look-up),
the accepted ``LocalRecipient`` / ``RemoteRecipient``, and the Received: line.

The look-ups and the writing are mailsuite.mta.delivery's ``LocalDelivery``; this module knows
it only as the ``Routing`` it asks (so delivery.py can hand out avatars without a cycle).
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.mail import smtp
from zope.interface import implementer

from mailsuite.accounts import Account
from mailsuite.maillog import new_queue_id
from mailsuite.mta.address import has_routing


class Routing(Protocol):
    """What the avatar and its recipients ask of mailsuite.mta.delivery.LocalDelivery."""

    myhostname: str
    now: Callable[[], float]
    #: the mailsuite.mta.queue.Queue for remote recipients (None: local delivery only)
    queue: Any

    def is_local_domain(self, domain: str) -> bool: ...

    def is_relay_domain(self, domain: str) -> bool: ...

    def in_mynetworks(self, ip: str) -> bool: ...

    def sender_owned(self, address: str, user: str) -> defer.Deferred[bool]: ...

    def resolve(self, address: str) -> defer.Deferred[list[Account]]: ...

    def resolve_cached(self, address: str) -> list[Any] | None: ...

    def deliver(self, data: bytes, sender: str, recipients: list[tuple[str, Account]],
                queue_id: str) -> defer.Deferred[None]: ...



def error_status(e: smtp.SMTPServerError) -> tuple[str, str]:
    """(reply text, DSN status) of a refusal met on local delivery: the status is the enhanced
    code the text starts with, else ``X.0.0`` of the reply code (for the maillog's ``dsn=`` and
    the bounce)."""
    resp = e.resp if isinstance(e.resp, str) else e.resp.decode("utf-8", "replace")
    return resp, resp.split()[0] if resp[:1].isdigit() else f"{e.code // 100}.0.0"


class RecipientRejected(smtp.SMTPServerError):
    """A recipient the server must refuse; ``code`` and ``resp`` are the SMTP reply."""

    code = 550
    template = "<{address}>: Recipient address rejected"

    def __init__(self, address: str, **details: str) -> None:
        self.address = address
        super().__init__(self.code, self.template.format(address=address, **details))


class UnknownRecipient(RecipientRejected):
    code = 550
    template = (
        "5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table"
    )


class RelayDenied(RecipientRejected):
    code = 554
    template = "5.7.1 <{address}>: Relay access denied"


class UnsupportedRecipient(RecipientRejected):
    """An alias expands to a program, file, :include: or remote address: not deliverable yet.

    4xx: the sending server keeps the mail and retries, so nothing is lost while the alias is
    fixed or the feature lands.
    """

    code = 451
    template = (
        "4.3.0 <{address}>: Recipient address rejected: alias target {target} is not supported yet"
    )


class SenderNotOwned(smtp.SMTPServerError):
    """An authenticated user gave an envelope sender that is not theirs (Postfix's
    reject_sender_login_mismatch)."""

    def __init__(self, address: str, user: str) -> None:
        self.address = address
        super().__init__(
            553, f"5.7.1 <{address}>: Sender address rejected: not owned by user {user}"
        )


class AliasLoop(RecipientRejected):
    code = 554
    template = "5.4.6 <{address}>: Recipient address rejected: mail forwarding loop"


class LookupFailed(RecipientRejected):
    code = 451
    template = "4.3.0 <{address}>: Temporary lookup failure"


def split_address(address: str) -> tuple[str, str | None]:
    """``local@domain`` -> (local, domain); a bare local part -> (local, None). Quotes removed."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        local = local[1:-1]
    return local, (domain if at else None)


def received_header(
    helo: str | None,
    client_name: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    queue_id: str | None,
    recipients: Sequence[str],
    when: float,
) -> bytes:
    """The Received: line Postfix writes (folded, LF ends, no trailing newline)::

    Received: from helo (rdns [ip])
    \tby myhostname (mailsuite) with ESMTP id QUEUEID
    \tfor <rcpt>; Tue, 28 Nov 2023 06:01:02 +0100
    """
    date = _received_date(when)
    tail = f"for <{recipients[0]}>; {date}" if len(recipients) == 1 else date
    text = (f"Received: from {helo or 'unknown'} ({client_name} [{client_ip}])\n"
            f"\tby {hostname} (mailsuite) with {protocol}{f' id {queue_id}' if queue_id else ''}"
            f"\n\t{tail}")
    return text.encode("utf-8", "replace")


_date_cache: tuple[int, str] = (-1, "")


def _received_date(when: float) -> str:
    """``formatdate(when, localtime=True)``, computed once per second (a busy MX stamps
    hundreds of messages a second; formatdate costs as much as the rest of the header)."""
    global _date_cache
    second = int(when)
    cached = _date_cache
    if cached[0] != second or when < 0:
        cached = _date_cache = (second, email.utils.formatdate(when, localtime=True))
    return cached[1]


@dataclass
class LocalRecipient:
    """An accepted recipient: the address as given and the accounts it goes to.

    Calling it gives an ``smtp.IMessage`` (the stock Twisted path: one message per recipient).
    """

    address: str
    accounts: list[Account]
    delivery: Routing
    sender: str

    def __call__(self) -> _LocalMessage:
        return _LocalMessage(self)


@implementer(smtp.IMessage)
class _LocalMessage:
    def __init__(self, recipient: LocalRecipient) -> None:
        self.recipient = recipient
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred[None]:
        r = self.recipient
        data, self.lines = b"\n".join(self.lines) + b"\n", []
        pairs = [(r.address, account) for account in r.accounts]
        return r.delivery.deliver(data, r.sender, pairs, new_queue_id())

    def connectionLost(self) -> None:
        self.lines = []


@dataclass
class RemoteRecipient:
    """An accepted recipient in another domain: the message goes to the queue for it."""

    address: str


@implementer(smtp.IMessageDelivery)
class DeliveryAvatar:
    """What one SMTP session may do, by Postfix's default relay rules.

    ``user`` is the authenticated login name or None (anonymous MX traffic). Anyone may send to
    the local domains; other domains are accepted (and queued) for authenticated users, clients
    in ``mynetworks``, and for ``relay_domains``; everything else is ``554 5.7.1 Relay access
    denied``. Sender-specified routing (``user%host@``, ``"user@host"@``, ``user!host@``) from
    an untrusted client is refused the same way, wherever it points. An authenticated user may
    only use their own envelope senders (``validateFrom``, Postfix's
    reject_sender_login_mismatch).
    """

    def __init__(self, delivery: Routing, user: str | None) -> None:
        self.delivery = delivery
        self.user = user

    def receivedHeader(
        self, helo: tuple[bytes, bytes], origin: Any, recipients: list[Any]
    ) -> bytes:
        name = helo[0].decode("ascii", "replace") if helo[0] else None
        ip = helo[1].decode("ascii", "replace") if isinstance(helo[1], bytes) else str(helo[1])
        return received_header(
            name,
            "unknown",
            ip,
            self.delivery.myhostname,
            "ESMTP",
            None,
            [str(r) for r in recipients],
            self.delivery.now(),
        )

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        if self.user is None:
            return origin
        address = str(origin)
        d = self.delivery.sender_owned(address, self.user)

        def check(owned: bool) -> Any:
            if not owned:
                raise SenderNotOwned(address, self.user or "")
            return origin

        return d.addCallback(check)

    def validateTo(self, user: Any) -> defer.Deferred[Any]:
        try:
            found = self.recipient_now(user)
        except Exception:  # validateTo reports every error as its Deferred's
            return defer.fail()
        if found is not None:
            return defer.succeed(found)
        address = str(user.dest)
        sender = str(user.orig) if user.orig is not None else ""
        return self.delivery.resolve(address).addCallback(
            lambda accounts: LocalRecipient(address, accounts, self.delivery, sender)
        )

    def recipient_now(self, user: Any) -> Any:
        """``validateTo``'s answer when it needs no look-up in the thread pool: the recipient
        (a RemoteRecipient, or a LocalRecipient from the look-up cache), or a RecipientRejected
        raised; None when the address must be looked up (``validateTo`` does that). The SMTP
        server calls this first, so that a busy MX answers most RCPTs without a Deferred."""
        address = str(user.dest)
        helo = getattr(user, "helo", None) or (b"", b"")
        ip = helo[1].decode("ascii", "replace") if isinstance(helo[1], bytes) else str(helo[1])
        trusted = self.user is not None or self.delivery.in_mynetworks(ip) or getattr(
            user, "relay_permitted", False)  # smtpd_relay_restrictions permitted
        _, domain = split_address(address)
        if not trusted and has_routing(address):
            raise RelayDenied(address)
        if domain is not None and not self.delivery.is_local_domain(domain):
            if self.delivery.queue is not None and (
                trusted or self.delivery.is_relay_domain(domain)
            ):
                return RemoteRecipient(address)
            raise RelayDenied(address)
        accounts = self.delivery.resolve_cached(address)
        if accounts is None:
            return None
        sender = str(user.orig) if user.orig is not None else ""
        return LocalRecipient(address, accounts, self.delivery, sender)
