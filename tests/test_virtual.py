"""virtual_alias_maps and virtual_alias_domains (mailsuite/mta/virtual.py, through
mailsuite.mta.delivery.LocalDelivery): virtual(5)'s table, search order and result rewriting,
the own name space of a virtual alias domain (550 5.1.1 for an address not in the table),
recursion and its limits, re-reading, and the start-up errors."""

from __future__ import annotations

import os
import time

from twisted.trial import unittest

from mailsuite import threads
from mailsuite.config import parse_config
from mailsuite.tablefile import TableError
from mailsuite.maillog import MailLog
from mailsuite.mta import virtual
from mailsuite.mta.accept import LookupFailed, RelayDenied, UnknownRecipient
from mailsuite.mta.delivery import LocalDelivery
from mailsuite.mta.forward import Remote
from mailsuite.mta.virtual import UnknownVirtualRecipient, VirtualAliases, parse_table
from mailsuite.startup import StartupError
from mailsuite.store.memory import MemoryStore
from tests.configs import real_config
from tests.fakes import FakeAccounts
from tests.test_delivery import ALICE, BOSS
from tests.test_delivery import write_aliases as write_file


def write_aliases(case: unittest.TestCase, text: str) -> str:
    """The table file at an absolute path (as mail.ini's are)."""
    return os.path.abspath(write_file(case, text))

TABLE = """\
# a virtual alias domain, and its addresses
example.net             anything
info@example.net        boss
sales@example.net       boss,
    carol@far.example
chain@example.net       info@example.net
self@example.net        self@example.net, alice
moved@example.net       @example.org
short@example.net       alice
# a catch-all domain
catch.example           x
@catch.example          alice
# the bare form: only the addresses of mydestination and myorigin
postmaster              alice
"""


class TableTests(unittest.TestCase):
    def test_parse(self) -> None:
        """``pattern address, address`` per logical line, keys in lower case; a line with no
        value, a bad address or a repeated key is refused naming file and line."""
        table = parse_table("Info@Example.NET  boss, carol@x.example\n  alice\n", "v")
        self.assertEqual(table, {"info@example.net": ["boss", "carol@x.example", "alice"]})
        with self.assertRaises(TableError) as caught:
            parse_table("a@x.example\nb@x.example <c>\nd  e\nd  f\n", "v")
        self.assertEqual(caught.exception.errors, [
            "v:1: 'a@x.example' has no value (expected: pattern address, ...)",
            "v:2: '<c>' is not an address", "v:4: 'd' is repeated (first on line 3)"])

    def test_config_keys(self) -> None:
        """virtual_alias_maps: files (hash: accepted); virtual_alias_domains defaults to
        $virtual_alias_maps (the domains are the table's keys) and takes domain names."""
        mail = parse_config("[mail]\nvirtual_alias_maps = hash:/etc/mailsuite/virtual\n",
                            "m.ini", hostname=lambda: "mx.example.com").mail
        self.assertEqual((mail.virtual_alias_maps, mail.virtual_alias_domains),
                         (["/etc/mailsuite/virtual"], ["/etc/mailsuite/virtual"]))
        mail = parse_config("[mail]\nvirtual_alias_domains = Example.NET, b.example\n",
                            "m.ini", hostname=lambda: "mx.example.com").mail
        self.assertEqual(mail.virtual_alias_domains, ["example.net", "b.example"])


class VirtualDeliveryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.table = write_aliases(self, TABLE)
        self.maillog = MailLog(None, "mail.example.com", now=lambda: 0.0)
        self.delivery = self.make()

    def make(self, **mail: object) -> LocalDelivery:
        keys = {"alias_maps": [write_aliases(self, "team: boss, alice\n")],
                "virtual_alias_maps": [self.table], "virtual_alias_domains": [self.table],
                "recipient_delimiter": "+", **mail}
        config = real_config(mail=keys)
        delivery = LocalDelivery(config, FakeAccounts(BOSS, ALICE), MemoryStore(), self.maillog,
                                 threads.inline, now=lambda: 1000.0)
        delivery.virtual = VirtualAliases.from_config(config.mail, self.maillog)
        delivery.queue = object()  # remote destinations are forwarded (not here: resolved only)
        return delivery

    def resolved(self, address: str) -> list[object]:
        return self.successResultOf(self.delivery.resolve(address))

    def refused(self, address: str, kind: type) -> str:
        return self.failureResultOf(self.delivery.resolve(address), kind).value.resp

    def test_virtual_alias_domain(self) -> None:
        """Its addresses go where the table says (recursively; a local result by local(8)'s
        rules, a remote one through the queue); it is one of our domains (no relay denied);
        ``+ext`` is looked up without it too."""
        self.assertTrue(self.delivery.is_local_domain("Example.NET"))
        self.assertFalse(self.delivery.is_local_domain("other.example"))
        self.assertEqual(self.resolved("info@example.net"), [BOSS])
        self.assertEqual(self.resolved("Info+News@Example.net"), [BOSS])
        self.assertEqual(self.resolved("sales@example.net"),
                         [BOSS, Remote("carol@far.example", "virtual_alias_maps")])
        self.assertEqual(self.resolved("chain@example.net"), [BOSS])
        self.assertEqual(self.resolved("short@example.net"), [ALICE])  # a bare local name
        self.assertEqual(self.resolved("moved@example.net"),
                         [Remote("moved@example.org", "virtual_alias_maps")])
        self.failureResultOf(self.delivery.resolve("x@other.example"), RelayDenied)

    def test_unknown_in_a_virtual_domain(self) -> None:
        """An address the table does not have is 550 5.1.1 in Postfix's words, even when a
        local account or alias has its local part (the domain has its own name space)."""
        for address in ("nobody@example.net", "boss@example.net", "team@example.net"):
            self.assertEqual(self.refused(address, UnknownVirtualRecipient),
                             f"5.1.1 <{address}>: Recipient address rejected: User unknown in"
                             " virtual alias table")

    def test_self_map_ends_the_recursion(self) -> None:
        """An address mapped to itself is final (here: remote, as it is no local domain's)."""
        self.assertEqual(self.resolved("self@example.net"),
                         [Remote("self@example.net", "virtual_alias_maps"), ALICE])

    def test_catch_all_and_bare_keys(self) -> None:
        """``@domain`` takes every address of its domain; a bare ``user`` key matches the
        addresses of mydestination and myorigin only; a local address the table does not
        have is delivered as before (aliases, accounts)."""
        self.assertEqual(self.resolved("anyone@catch.example"), [ALICE])
        self.assertEqual(self.resolved("postmaster@mail.example.com"), [ALICE])
        self.assertEqual(self.resolved("team@localhost"), [BOSS, ALICE])
        self.failureResultOf(self.delivery.resolve("nobody@localhost"), UnknownRecipient)

    def test_explicit_domain_list(self) -> None:
        """virtual_alias_domains naming a domain: it is virtual without a domain line."""
        self.table = write_aliases(self, "a@b.example  boss\n")
        self.delivery = self.make(virtual_alias_domains=["b.example"])
        self.assertEqual(self.resolved("a@b.example"), [BOSS])
        self.refused("c@b.example", UnknownVirtualRecipient)

    def test_limits_are_a_temporary_failure(self) -> None:
        """A chain deeper than virtual_alias_recursion_limit: 451 4.3.0, not a loop forever."""
        self.patch(virtual, "RECURSION_LIMIT", 20)
        lines = "".join(f"a{n}@example.net a{n + 1}@example.net\n" for n in range(30))
        self.table = write_aliases(self, "example.net x\n" + lines)
        self.delivery = self.make()
        self.assertIn("4.3.0", self.refused("a0@example.net", LookupFailed))
        self.flushLoggedErrors()

    def test_changed_file_is_read_again(self) -> None:
        """A changed table counts at the next look-up (a new address, a new domain); a
        broken change keeps the previous table and says so in the maillog."""
        with open(self.table, "a") as f:
            f.write("new@example.net  alice\nnew.example  x\nme@new.example  boss\n")
        later = time.time() + 5
        os.utime(self.table, (later, later))
        self.assertEqual(self.resolved("new@example.net"), [ALICE])
        self.assertTrue(self.delivery.is_local_domain("new.example"))
        self.assertEqual(self.resolved("me@new.example"), [BOSS])
        with open(self.table, "a") as f:
            f.write("broken@example.net\n")
        os.utime(self.table, (later + 5, later + 5))
        self.assertEqual(self.resolved("short@example.net"), [ALICE])
        self.assertIn("has no value", "\n".join(self.maillog.lines))

    def test_start_refused(self) -> None:
        """A missing or broken table refuses the start, naming key, file and line."""
        with self.assertRaises(StartupError) as caught:
            self.make(virtual_alias_maps=["/nonexistent/virtual"], virtual_alias_domains=[])
        self.assertIn("[mail] virtual_alias_maps: /nonexistent/virtual:", str(caught.exception))
        self.table = write_aliases(self, "lonely@example.net\n")
        with self.assertRaises(StartupError) as caught:
            self.make()
        self.assertIn(f"{self.table}:1: 'lonely@example.net' has no value", str(caught.exception))
