"""``recipient_delimiter`` (mailsuite/mta/rewrite.py, forward.Expander, delivery.LocalDelivery):
Postfix's address extensions: ``boss+news@`` is boss's, an alias or account of the whole name
first, the extension kept in ``Delivered-To:``; the config value; BCC maps' look-ups."""

from __future__ import annotations

from dataclasses import replace

from twisted.trial import unittest

from mailsuite import threads
from mailsuite.accounts import Account
from mailsuite.config import ConfigError, parse_config
from mailsuite.filter.bcc import find
from mailsuite.maillog import MailLog
from mailsuite.mta.accept import UnknownRecipient
from mailsuite.mta.delivery import LocalDelivery
from mailsuite.mta.rewrite import parse_recipient_delimiter, split_extension
from mailsuite.store.memory import MemoryStore
from tests.fakes import FakeAccounts
from tests.test_delivery import ALICE, BOSS, inbox, make_config, write_aliases

MARY_ANN = Account("mary-ann", 1002, 1002, "/home/mary-ann")

ALIASES = """\
team: boss, alice
boss+lists: alice
"""


class SplitTests(unittest.TestCase):
    def test_split_at_the_first_delimiter(self) -> None:
        """The local part splits at the first of the delimiter characters; none, or one at
        the start, is no extension; an empty delimiter never splits."""
        self.assertEqual(split_extension("boss+news", "+"), ("boss", "news"))
        self.assertEqual(split_extension("boss-a+b", "+-"), ("boss", "a+b"))
        self.assertEqual(split_extension("boss+", "+"), ("boss", ""))
        self.assertEqual(split_extension("+news", "+"), ("+news", None))
        self.assertEqual(split_extension("boss", "+"), ("boss", None))
        self.assertEqual(split_extension("boss+news", ""), ("boss+news", None))

    def test_config_value(self) -> None:
        """recipient_delimiter: empty by default (Postfix's), ``+`` or ``+-``; letters, spaces
        and address syntax are refused naming the key."""
        self.assertEqual(parse_config("", "m.ini", hostname=lambda: "mx.example.com")
                         .mail.recipient_delimiter, "")
        self.assertEqual(parse_recipient_delimiter(" +- "), "+-")
        for bad in ("a", "+ -", "@", "."):
            self.assertRaises(ValueError, parse_recipient_delimiter, bad)
        with self.assertRaises(ConfigError) as caught:
            parse_config("[mail]\nrecipient_delimiter = x\n", "m.ini",
                         hostname=lambda: "mx.example.com")
        self.assertIn("m.ini: [mail] recipient_delimiter: 'x': a delimiter cannot be 'x'",
                      str(caught.exception))


class ExtensionDeliveryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.accounts = FakeAccounts(BOSS, ALICE, MARY_ANN)
        self.maillog = MailLog(None, "mail.example.com", now=lambda: 0.0)
        self.delivery = self.make("+-")

    def make(self, delimiter: str) -> LocalDelivery:
        config = make_config(write_aliases(self, ALIASES))
        config = replace(config, mail=replace(config.mail, recipient_delimiter=delimiter))
        return LocalDelivery(config, self.accounts, self.store, self.maillog, threads.inline,
                             now=lambda: 1000.0)

    def resolved(self, address: str) -> list[Account]:
        return self.successResultOf(self.delivery.resolve(address))

    def test_extension_is_the_user(self) -> None:
        """boss+news@ is boss; an alias of the whole name wins (boss+lists is alice's); an
        alias with an extension is the alias (team+x); an account whose name has the
        delimiter (mary-ann) is itself; an unknown user is still unknown."""
        self.assertEqual(self.resolved("boss+news@mail.example.com"), [BOSS])
        self.assertEqual(self.resolved("Boss+News@localhost"), [BOSS])
        self.assertEqual(self.resolved("boss+lists@localhost"), [ALICE])
        self.assertEqual(self.resolved("team+x@localhost"), [BOSS, ALICE])
        self.assertEqual(self.resolved("mary-ann@localhost"), [MARY_ANN])
        self.assertEqual(self.resolved("boss-ann@localhost"), [BOSS])
        self.failureResultOf(self.delivery.resolve("nobody+x@localhost"), UnknownRecipient)
        self.failureResultOf(self.delivery.resolve("+news@localhost"), UnknownRecipient)

    def test_user_may_send_as_an_extension(self) -> None:
        """An authenticated boss may use boss+news@ as envelope sender (its mail comes back to
        boss), not alice+news@."""
        self.assertTrue(self.successResultOf(
            self.delivery.sender_owned("boss+news@mail.example.com", "boss")))
        self.assertFalse(self.successResultOf(
            self.delivery.sender_owned("alice+news@mail.example.com", "boss")))

    def test_off_by_default(self) -> None:
        """With no recipient_delimiter, boss+news is an unknown user (Postfix's default)."""
        self.delivery = self.make("")
        self.failureResultOf(self.delivery.resolve("boss+news@localhost"), UnknownRecipient)

    def test_delivered_to_keeps_the_extension(self) -> None:
        """The copy in boss's INBOX says ``Delivered-To: boss+news@domain`` (as written, the
        domain in lower case) and X-Original-To the address given; an account whose name has
        the delimiter is not doubled."""
        d = self.delivery.deliver(b"Subject: hi\n\nbody\n", "a@b.example",
                                  [("boss+News@Mail.Example.com", BOSS),
                                   ("mary-ann@localhost", MARY_ANN)], "ABCDEF0123")
        self.successResultOf(d)
        (copy,) = inbox(self.store, BOSS)
        self.assertTrue(copy.startswith(
            b"Return-Path: <a@b.example>\nX-Original-To: boss+News@Mail.Example.com\n"
            b"Delivered-To: boss+News@mail.example.com\n"), copy)
        (theirs,) = inbox(self.store, MARY_ANN)
        self.assertIn(b"\nDelivered-To: mary-ann@localhost\n", theirs)


class BccExtensionTests(unittest.TestCase):
    def test_bcc_maps_look_up_without_the_extension(self) -> None:
        """A BCC map's key boss@ also takes boss+news@ once recipient_delimiter is set, the
        whole address first (Postfix's table search order); without it, not at all."""
        tables = [{"boss@example.com": "archive@example.com",
                   "boss+private@example.com": "secret@example.com"}]
        self.assertEqual(find(tables, "boss+news@example.com", [], "+"), "archive@example.com")
        self.assertEqual(find(tables, "boss+private@example.com", [], "+"), "secret@example.com")
        self.assertIsNone(find(tables, "boss+news@example.com", []))
