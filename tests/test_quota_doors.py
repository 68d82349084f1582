"""Quotas at the doors (mailsuite/mta/quota.py): the SMTP RCPT and DATA checks over a store
that reports usage, and what the accept pipeline makes of a mailbox copy the store refused over
quota (SMTP: bounced with 5.2.2, or queued for a 4xx reply; LMTP: that recipient's reply)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.maillog import MailLog
from mailsuite.mta.delivery import DeliveryFailed, LocalDelivery

from mailsuite.accounts import Account
from mailsuite.mta.transaction import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    LMTP,
    PICKUP,
    QUEUED,
    REFUSED,
    Client,
    Envelope,
    Recipient,
)
from mailsuite.store.quota import Limits, QuotaExceeded, Usage
from tests.fakes import FakeAccounts
from tests.test_delivery import ALIASES, ALICE, BOSS, HeldStore, inbox, make_config, write_aliases
from tests.test_smtp_server import SessionCase
from tests.test_transaction import BODY, GroupStore, PipelineCase


class OverQuotaStore(GroupStore):
    """Refuses deliveries to ``full`` accounts as the mbox store does over quota."""

    def __init__(self) -> None:
        super().__init__()
        self.full: dict[str, tuple[int, str, str]] = {}

    def deliver_many(self, account: Account, items: list[tuple[bytes, str]]) -> Any:
        reply = self.full.get(account.name)
        if reply is not None:
            return defer.fail(QuotaExceeded("Quota exceeded (mailbox for user is full)", reply))
        return super().deliver_many(account, items)


class PipelineQuotaTests(PipelineCase):
    def setUp(self) -> None:
        super().setUp()
        self.store = self.delivery.store = OverQuotaStore()

    def test_one_of_several_over_quota_bounces(self) -> None:
        """SMTP: boss over quota (5xx), alice not: boss's copy bounces with 5.2.2 (a DSN to
        the sender), alice's is delivered; the message is taken."""
        self.store.full["boss"] = (552, "5.2.2", "Mailbox is full")
        env = self.smtp_envelope(
            Recipient("boss@mail.example.com", route=self.local("boss@mail.example.com")),
            Recipient("alice@mail.example.com", route=self.local("alice@mail.example.com")))
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual([r.status for r in results], [BOUNCED, DELIVERED])
        self.assertEqual(results[0].dsn, "5.2.2")
        [(sender, to, report)] = self.queue.submitted
        self.assertEqual((sender, to), ("", ["joe@far.example"]))
        self.assertIn(b"5.2.2", report)
        self.assertIn("to=<boss@mail.example.com>, relay=local, delay=0, delays=0/0/0/0,"
                      " dsn=5.2.2, status=bounced (cannot append message to mailbox: Quota"
                      " exceeded (mailbox for user is full))", self.log())

    def test_temporary_reply_is_queued(self) -> None:
        """A 4xx quota_status_overquota: the copy is queued and retried, not bounced."""
        self.store.full["boss"] = (452, "4.2.2", "Mailbox is full")
        env = self.smtp_envelope(
            Recipient("boss@mail.example.com", route=self.local("boss@mail.example.com")))
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual([r.status for r in results], [QUEUED])
        self.assertEqual(self.queue.submitted, [])
        self.flushLoggedErrors(QuotaExceeded)

    def test_lmtp_recipient_gets_the_reply(self) -> None:
        """LMTP: a copy refused over quota is that recipient's 552 5.2.2; the other is
        delivered."""
        self.store.full["boss"] = (552, "5.2.2", "Mailbox is full")
        client = Client(LMTP, "127.0.0.1", "localhost", "lhlo.example", protocol="LMTP")
        env = Envelope("Q2", "joe@far.example", [
            Recipient("boss@mail.example.com"), Recipient("alice@mail.example.com")], client)
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual([(r.status, r.code, r.dsn) for r in results],
                         [(REFUSED, 552, "5.2.2"), (DELIVERED, 250, "2.0.0")])


    def test_sendmail_to_a_full_mailbox_bounces(self) -> None:
        """The pickup (sendmail): a full mailbox is refused for good and bounced to the sender
        with 5.2.2 (a 4xx reply: deferred, the pickup tries again)."""
        self.store.full["boss"] = (552, "5.2.2", "Mailbox is full")
        env = Envelope("Q3", "alice@mail.example.com", [Recipient("boss@mail.example.com")],
                       Client(PICKUP, uid=1000), arrival=self.clock.seconds())
        [result] = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual((result.status, result.dsn), (BOUNCED, "5.2.2"))
        [(_, kind, entries)] = self.queue.notices
        self.assertEqual((kind, entries[0].dsn), ("failed", "5.2.2"))
        self.store.full["boss"] = (452, "4.2.2", "Mailbox is full")
        [result] = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual((result.status, result.code), (DEFERRED, 452))


class BatchTests(unittest.TestCase):
    def test_a_batch_over_quota_takes_what_fits(self) -> None:
        """Copies group-committed together and refused over quota as a whole are written one
        by one: those that fit are delivered, only the rest refused."""
        store = HeldStore()
        delivery = LocalDelivery(make_config(write_aliases(self, ALIASES)),
                                 FakeAccounts(BOSS, ALICE), store, MailLog(None, "h"),
                                 threads.inline)

        def deliver(n: int) -> defer.Deferred[None]:
            return delivery.deliver(b"Subject: %d\n\nx\n" % n, "s@x.test",
                                    [("boss@mail.example.com", BOSS)], f"Q{n}")

        first, second, third = deliver(1), deliver(2), deliver(3)
        store.pending[0][2].callback(None)
        self.successResultOf(first)
        store.pending[1][2].errback(QuotaExceeded())  # the batch of 2 and 3
        self.assertEqual([len(items) for _, items, _ in store.pending[2:]], [1])
        store.pending[2][2].callback(None)  # 2 alone fits
        store.pending[3][2].errback(QuotaExceeded())  # 3 alone does not
        self.successResultOf(second)
        failure = self.failureResultOf(third, DeliveryFailed)
        self.assertTrue(failure.value.failures[0].check(QuotaExceeded))


class SmtpQuotaTests(SessionCase):
    def set_usage(self, used: int, limit: int, messages: int = 0) -> None:
        def report(account: Account) -> defer.Deferred[Any]:
            return defer.succeed((Usage(used, 0), Limits(limit, messages)))

        self.store.quota_report = report  # type: ignore[attr-defined]

    def test_rcpt_with_size_over_quota(self) -> None:
        """RCPT for a full mailbox, or one the SIZE= would fill, is 552 5.2.2 with Postfix's
        policy reject text and log line; without SIZE= a mailbox with room is accepted."""
        self.set_usage(900, 1000)
        self.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example> SIZE=200\r\n")
        self.assertEqual(self.send(b"RCPT TO:<boss@mail.example.com>\r\n"), [
            "552 5.2.2 <boss@mail.example.com>: Recipient address rejected: Mailbox is full"])
        self.assertIn("NOQUEUE: reject: RCPT from client.example[192.0.2.7]: 552 5.2.2"
                      " <boss@mail.example.com>", "\n".join(self.log_text()))
        self.send(b"RSET\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<boss@mail.example.com>\r\n"), ["250 2.1.5 Ok"])

    def test_data_over_quota_refused(self) -> None:
        """No SIZE= given: RCPT passes, the real size at DATA is refused with 552 5.2.2 and
        nothing is delivered."""
        self.set_usage(900, 1000)
        self.transaction()
        lines = self.send(b"Subject: big\r\n\r\n" + b"x" * 300 + b"\r\n.\r\n")
        self.assertEqual(lines, ["552 5.2.2 Mailbox is full"])
        self.assertRegex(self.log_text()[-1], r"^\w+: reject: END-OF-MESSAGE from"
                         r" client.example\[192.0.2.7\]: 552 5.2.2 Mailbox is full;"
                         r" from=<a@b.example> to=<boss@mail.example.com> proto=ESMTP"
                         r" helo=<client.example>$")
        self.assertEqual(inbox(self.store, self.delivery.accounts.recipient("boss")), [])

    def test_no_quota_no_check(self) -> None:
        """A store without quota_report (or one that says None) is not asked."""
        self.store.quota_report = lambda account: None  # type: ignore[attr-defined]
        self.transaction()
        self.assertEqual(self.codes(b"Subject: x\r\n\r\nhi\r\n.\r\n"), ["250"])


class PrivsepWireTests(unittest.TestCase):
    def test_over_quota_crosses_the_agent_channel(self) -> None:
        """The agent answers a Deliver refused over quota with status ``overquota``; the
        network process raises QuotaExceeded again with its quota_status_overquota reply (so
        the doors answer 5.2.2, not a deferral)."""
        from twisted.python.failure import Failure

        from mailsuite.privsep import agent, netproc

        answer = agent._verdict(Failure(QuotaExceeded()))
        self.assertEqual(answer["status"], "overquota")
        with self.assertRaises(QuotaExceeded) as caught:
            netproc._delivered(answer, (452, "4.2.2", "Mailbox is full"))
        self.assertEqual(caught.exception.reply, (452, "4.2.2", "Mailbox is full"))
        self.assertEqual(agent._verdict(Failure(agent.StoreRefused("symlink")))["status"],
                         "refused")
