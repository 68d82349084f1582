"""Tests for mailsuite.mta.delivery: recipient resolution, local delivery, the SMTP avatar.

Also home of the small helpers the SMTP server tests share (config, controllable store).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.mail import smtp
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.accounts import Account
from mailsuite.config import Config
from mailsuite.maillog import MailLog
from mailsuite.mta.accept import (
    AliasLoop,
    LocalRecipient,
    RelayDenied,
    UnknownRecipient,
    UnsupportedRecipient,
    error_status,
    received_header,
)
from mailsuite.mta.delivery import DeliveryFailed, LocalDelivery, format_delay
from mailsuite.store.memory import MemoryStore
from tests.configs import real_config
from tests.fakes import FakeAccounts

BOSS = Account("boss", 1000, 1000, "/home/boss")
ALICE = Account("alice", 1001, 1001, "/home/alice")


class HeldStore:
    """A store whose writes (``deliver_many``, the one LocalDelivery makes) return Deferreds
    the test fires (or fails) by hand: ``pending`` holds (account, [(data, sender)], Deferred)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Account, list[tuple[bytes, str]], defer.Deferred[None]]] = []

    def deliver_many(
        self, account: Account, items: list[tuple[bytes, str]]
    ) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.pending.append((account, items, d))
        return d


def make_config(alias_path: str, size_limit: int = 10240000, ssl: str = "yes") -> Config:
    """mail.example.com (mydestination: it, localhost.example.com, localhost; mynetworks:
    loopback) with these aliases, message_size_limit and [tls] ssl."""
    return real_config(mail={"alias_maps": [alias_path], "message_size_limit": size_limit},
                       tls={"ssl": ssl})


def write_aliases(case: unittest.TestCase, text: str) -> str:
    path = case.mktemp()
    with open(path, "w") as f:
        f.write(text)
    return path


ALIASES = """\
team: boss, alice
Sales: boss
loop1: loop2
loop2: loop1
piped: "|/usr/bin/procmail"
faraway: friend@elsewhere.example
"""


def inbox(store: MemoryStore, account: Account) -> list[bytes]:
    box = store._box(account, "INBOX", create=True)
    return [box._bodies[m.uid] for m in box.messages]


class DeliveryCase(unittest.TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.accounts = FakeAccounts(BOSS, ALICE)
        self.maillog = MailLog(None, "mail.example.com", now=lambda: 0.0)
        self.clock = [1000.0]
        self.delivery = LocalDelivery(
            make_config(write_aliases(self, ALIASES)),
            self.accounts,
            self.store,
            self.maillog,
            threads.inline,
            now=lambda: self.clock[0],
        )

    def resolved(self, address: str) -> list[Account]:
        return self.successResultOf(self.delivery.resolve(address))

    def rejected(self, address: str, kind: type) -> Any:
        return self.failureResultOf(self.delivery.resolve(address), kind).value


class ErrorStatusTests(unittest.TestCase):
    def test_enhanced_code_of_the_text(self) -> None:
        e = UnknownRecipient("nobody@example.test")
        resp, dsn = error_status(e)
        self.assertEqual(dsn, "5.1.1")
        self.assertTrue(resp.startswith("5.1.1 <nobody@example.test>: "))

    def test_made_up_from_the_reply_code(self) -> None:
        """Text without a status: X.0.0; bytes are decoded, bad UTF-8 replaced."""
        self.assertEqual(error_status(smtp.SMTPServerError(451, b"no \xff way")),
                         ("no \ufffd way", "4.0.0"))
        self.assertEqual(error_status(smtp.SMTPServerError(550, "refused")), ("refused", "5.0.0"))


class ResolveTests(DeliveryCase):
    def test_local_user(self) -> None:
        """user@mydestination that is an account resolves to that account."""
        self.assertEqual(self.resolved("boss@mail.example.com"), [BOSS])

    def test_case_insensitive(self) -> None:
        """Domain and local part are case-insensitive (alias and account look-ups)."""
        self.assertEqual(self.resolved("BOSS@Mail.Example.COM"), [BOSS])
        self.assertEqual(self.resolved("SALES@localhost"), [BOSS])

    def test_bare_local_part(self) -> None:
        """A bare local part (no domain) is local."""
        self.assertEqual(self.resolved("boss"), [BOSS])

    def test_unknown_user(self) -> None:
        """Unknown local users: 550 5.1.1 with Postfix's text."""
        e = self.rejected("nobody@mail.example.com", UnknownRecipient)
        self.assertEqual(e.code, 550)
        self.assertEqual(
            e.resp,
            "5.1.1 <nobody@mail.example.com>: Recipient address rejected: "
            "User unknown in local recipient table",
        )

    def test_extension_not_stripped(self) -> None:
        """recipient_delimiter is empty by default: boss+ext is not boss."""
        self.rejected("boss+ext@mail.example.com", UnknownRecipient)

    def test_other_domain(self) -> None:
        """Domains outside mydestination: 554 5.7.1 Relay access denied, no account look-up."""
        e = self.rejected("boss@elsewhere.example", RelayDenied)
        self.assertEqual(
            (e.code, e.resp), (554, "5.7.1 <boss@elsewhere.example>: Relay access denied")
        )
        self.assertEqual(self.accounts.asked, [])

    def test_alias_fan_out(self) -> None:
        """An alias naming two users resolves to both accounts."""
        self.assertEqual(self.resolved("team@localhost"), [BOSS, ALICE])

    def test_alias_loop(self) -> None:
        """An alias loop with no account behind it is refused as a loop (5.4.6)."""
        e = self.rejected("loop1@localhost", AliasLoop)
        self.assertEqual(e.code, 554)
        self.assertIn("5.4.6", e.resp)

    def test_unsupported_alias_target(self) -> None:
        """An alias to a remote address is refused with 451 naming the target, not silently
        dropped (until the queue forwards it)."""
        e = self.rejected("faraway@localhost", UnsupportedRecipient)
        self.assertEqual(e.code, 451)
        self.assertIn('"friend@elsewhere.example" (remote) is not supported yet', e.resp)
        self.flushLoggedErrors()


class DeliverTests(DeliveryCase):
    def test_copies_with_postfix_headers(self) -> None:
        """Each account gets one copy with Return-Path, X-Original-To and Delivered-To on top."""
        d = self.delivery.deliver(
            b"Subject: hi\n\nbody\n",
            "a@b.example",
            [
                ("team@mail.example.com", BOSS),
                ("team@mail.example.com", ALICE),
                ("boss@mail.example.com", BOSS),
            ],
            "ABCDEF0123",
        )
        self.assertIsNone(self.successResultOf(d))
        (boss_copy,) = inbox(self.store, BOSS)
        self.assertEqual(
            boss_copy,
            b"Return-Path: <a@b.example>\nX-Original-To: team@mail.example.com\n"
            b"Delivered-To: boss@example.com\nSubject: hi\n\nbody\n",
        )
        self.assertEqual(len(inbox(self.store, ALICE)), 1)

    def test_maillog_lines(self) -> None:
        """One Postfix-shaped local line per recipient, with orig_to for aliases, and qmgr lines."""
        self.clock[0] = 1000.5
        d = self.delivery.deliver(
            b"\n", "", [("team@localhost", BOSS), ("Boss@Localhost", BOSS)], "Q1", arrival=1000.0
        )
        self.successResultOf(d)
        text = [line.split(": ", 1)[1] for line in self.maillog.lines]
        self.assertEqual(
            text,
            [
                "Q1: from=<>, size=1, nrcpt=2 (queue active)",
                (
                    "Q1: to=<boss@example.com>, orig_to=<team@localhost>, relay=local, delay=0.5,"
                    " delays=0.5/0/0/0, dsn=2.0.0, status=sent (delivered to mailbox)"
                ),
                (
                    "Q1: to=<boss@localhost>, relay=local, delay=0.5,"
                    " delays=0.5/0/0/0, dsn=2.0.0, status=sent (delivered to mailbox)"
                ),
                "Q1: removed",
            ],
        )
        self.assertIn("postfix/local[", self.maillog.lines[1])

    def test_fires_only_when_all_written(self) -> None:
        """deliver() fires only after every copy's store Deferred fired (fsync done)."""
        held = HeldStore()
        self.delivery.store = held
        d = self.delivery.deliver(
            b"x\n", "", [("team@localhost", BOSS), ("team@localhost", ALICE)], "Q2"
        )
        self.assertNoResult(d)
        held.pending[0][2].callback(None)
        self.assertNoResult(d)
        held.pending[1][2].callback(None)
        self.successResultOf(d)

    def test_store_failure(self) -> None:
        """A failed copy fails the whole delivery (no ack) and logs status=deferred."""
        held = HeldStore()
        self.delivery.store = held
        d = self.delivery.deliver(
            b"x\n", "", [("team@localhost", BOSS), ("team@localhost", ALICE)], "Q3"
        )
        held.pending[0][2].errback(OSError(28, "No space left on device"))
        self.assertNoResult(d)
        held.pending[1][2].callback(None)
        self.failureResultOf(d, DeliveryFailed)
        self.assertTrue(
            any("status=deferred" in line and "dsn=4.3.0" in line for line in self.maillog.lines)
        )
        self.assertFalse(any("removed" in line for line in self.maillog.lines))
        self.flushLoggedErrors(OSError)


class AvatarTests(DeliveryCase):
    def test_avatar_validates_through_resolve(self) -> None:
        """The IMessageDelivery avatar accepts local recipients and refuses others."""
        avatar = self.delivery.avatar(None)
        self.assertTrue(smtp.IMessageDelivery.providedBy(avatar))
        origin = smtp.Address(b"a@b.example")
        self.assertIs(avatar.validateFrom((b"helo", b"1.2.3.4"), origin), origin)
        user = smtp.User(b"team@localhost", (b"helo", b"1.2.3.4"), None, origin)
        recipient = self.successResultOf(avatar.validateTo(user))
        self.assertIsInstance(recipient, LocalRecipient)
        self.assertEqual(recipient.accounts, [BOSS, ALICE])
        far = smtp.User(b"x@far.example", (b"helo", b"1.2.3.4"), None, origin)
        self.failureResultOf(avatar.validateTo(far), RelayDenied)

    def test_recipient_now(self) -> None:
        """recipient_now answers from the look-up cache without a thread hop: None before the
        first look-up, the LocalRecipient after it (until the cache entry expires); remote and
        routed addresses are decided at once (RelayDenied raised)."""
        avatar = self.delivery.avatar(None)
        origin = smtp.Address(b"a@b.example")
        user = smtp.User(b"team@localhost", (b"helo", b"1.2.3.4"), None, origin)
        self.assertIsNone(avatar.recipient_now(user))
        self.successResultOf(avatar.validateTo(user))
        asked = len(self.accounts.asked)
        recipient = avatar.recipient_now(user)
        self.assertIsInstance(recipient, LocalRecipient)
        self.assertEqual(recipient.accounts, [BOSS, ALICE])
        self.assertEqual(recipient.sender, "a@b.example")
        self.assertEqual(len(self.accounts.asked), asked)
        self.clock[0] += 60
        self.assertIsNone(avatar.recipient_now(user))
        for address in (b"x@far.example", b"boss%far.example@localhost"):
            far = smtp.User(address, (b"helo", b"1.2.3.4"), None, origin)
            self.assertRaises(RelayDenied, avatar.recipient_now, far)
            self.failureResultOf(avatar.validateTo(far), RelayDenied)

    def test_stock_imessage_path(self) -> None:
        """The IMessage the recipient builds (stock Twisted path) delivers on eomReceived."""
        recipient = LocalRecipient("boss@localhost", [BOSS], self.delivery, "a@b.example")
        message = recipient()
        message.lineReceived(b"Subject: x")
        message.lineReceived(b"")
        message.lineReceived(b"hello")
        self.successResultOf(message.eomReceived())
        self.assertTrue(inbox(self.store, BOSS)[0].endswith(b"Subject: x\n\nhello\n"))


class HelperTests(unittest.TestCase):
    def test_format_delay(self) -> None:
        """Delays print like Postfix: 0 under 10 ms, two significant digits, whole seconds >= 10."""
        self.assertEqual(
            [format_delay(x) for x in (0, 0.004, 0.02, 1.34, 42.4)], ["0", "0", "0.02", "1.3", "42"]
        )

    def test_received_date_per_second(self) -> None:
        """The Received: date is formatdate(when, localtime=True) of that second, also when
        it comes from the per-second cache (same second, later fraction; then a new second)."""
        import email.utils

        for when in (1700000000.25, 1700000000.75, 1700000001.5, 1700000000.0):
            header = received_header("h", "n", "192.0.2.1", "mx", "ESMTP", "Q", ["a@b"], when)
            self.assertTrue(header.endswith(
                b"; " + email.utils.formatdate(int(when), localtime=True).encode()))
        header = received_header(None, "n", "192.0.2.1", "mx", "SMTP", None, ["a@b", "c@d"], 5.0)
        self.assertEqual(header.split(b"\n")[:2], [b"Received: from unknown (n [192.0.2.1])",
                                                    b"\tby mx (mailsuite) with SMTP"])
        self.assertEqual(header.split(b"\n")[2],
                         b"\t" + email.utils.formatdate(5, localtime=True).encode())

    def test_received_header(self) -> None:
        """Received: has from helo (rdns [ip]), by host (mailsuite) with ESMTP id Q, for <r>;
        date."""
        header = received_header(
            "client.example",
            "localhost",
            "127.0.0.1",
            "mail.example.com",
            "ESMTP",
            "Q1",
            ["boss@localhost"],
            0.0,
        )
        lines = header.split(b"\n")
        self.assertEqual(lines[0], b"Received: from client.example (localhost [127.0.0.1])")
        self.assertEqual(lines[1], b"\tby mail.example.com (mailsuite) with ESMTP id Q1")
        self.assertRegex(
            lines[2],
            rb"^\tfor <boss@localhost>; \w{3}, \d\d \w{3} \d{4} "
            rb"\d\d:\d\d:\d\d [+-]\d{4}$",
        )
