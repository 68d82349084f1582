"""Tests for mailsuite.mta.transaction: the one accept pipeline behind SMTP, LMTP and the pickup,
over LocalDelivery with the memory store and a fake queue."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.accounts import Account
from mailsuite.maillog import MailLog
from mailsuite.mta import address as addr
from mailsuite.mta.accept import LocalRecipient, RemoteRecipient
from mailsuite.mta.delivery import LocalDelivery
from mailsuite.mta.transaction import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    DISCARDED,
    LMTP,
    PICKUP,
    QUEUED,
    REFUSED,
    SMTP,
    Client,
    Envelope,
    Message,
    Pipeline,
    Recipient,
    Result,
    Verdict,
)
from mailsuite.store.memory import MemoryStore
from tests.fakes import FakeAccounts, FakeQueue
from tests.test_delivery import ALIASES, ALICE, BOSS, inbox, make_config
from tests.test_smtp_server import SessionCase

BODY = b"Subject: hi\n\nhello\n"


class GroupStore(MemoryStore):
    """The memory store, recording each group commit (``deliver_many``); ``broken`` names
    accounts whose mailbox cannot be written."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[str, int]] = []
        self.broken: set[str] = set()

    def deliver_many(self, account: Account, items: list[tuple[bytes, str]]) -> Any:
        self.batches.append((account.name, len(items)))
        if account.name in self.broken:
            return defer.fail(OSError(28, "No space left on device"))
        return super().deliver_many(account, items)


class PipelineCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.store = GroupStore()
        self.maillog = MailLog(None, "mail.example.com", now=self.clock.seconds)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(ALIASES)
        self.delivery = LocalDelivery(make_config(path), FakeAccounts(BOSS, ALICE), self.store,
                                      self.maillog, threads.inline, now=self.clock.seconds)
        self.queue = FakeQueue()
        self.delivery.queue = self.queue
        self.pipeline = Pipeline(self.delivery, self.maillog, "mail.example.com",
                                 self.clock.seconds)

    def local(self, address: str, sender: str = "joe@far.example") -> LocalRecipient:
        found = self.successResultOf(self.delivery.resolve(address))
        return LocalRecipient(address, found, self.delivery, sender)

    def smtp_envelope(self, *recipients: Recipient, sender: str = "joe@far.example") -> Envelope:
        client = Client(SMTP, "192.0.2.7", "client.example", "helo.example", protocol="ESMTP")
        return Envelope("Q1", sender, list(recipients), client, arrival=self.clock.seconds())

    def log(self) -> str:
        return "\n".join(self.maillog.lines)


class SmtpDoorTests(PipelineCase):
    def test_one_copy_per_mailbox_group_committed(self) -> None:
        """SMTP: boss@ and team@ (boss, alice) give boss one copy, through deliver_many; the
        Received: header names client, HELO and queue id; every recipient is delivered."""
        env = self.smtp_envelope(Recipient("boss@mail.example.com", route=self.local(
            "boss@mail.example.com")), Recipient("team@mail.example.com", route=self.local(
                "team@mail.example.com")))
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual([r.status for r in results], [DELIVERED, DELIVERED])
        self.assertEqual(sorted(self.store.batches), [("alice", 1), ("boss", 1)])
        (stored,) = inbox(self.store, BOSS)
        self.assertIn(b"Received: from helo.example (client.example [192.0.2.7])\n\tby "
                      b"mail.example.com (mailsuite) with ESMTP id Q1\n", stored)
        self.assertTrue(stored.endswith(BODY))
        self.assertIn("Q1: from=<joe@far.example>, size=", self.log())
        self.assertIn("Q1: removed", self.log())

    def test_remote_and_unwritable_copies_are_queued(self) -> None:
        """A remote recipient and a mailbox that cannot be written now go into one queue file
        (with the client and the mailbox's user); their results say queued."""
        self.store.broken.add("alice")
        env = self.smtp_envelope(
            Recipient("friend@far.example", addr.RcptParams(notify=("FAILURE",)),
                      RemoteRecipient("friend@far.example")),
            Recipient("alice@mail.example.com", route=self.local("alice@mail.example.com")),
            Recipient("boss@mail.example.com", route=self.local("boss@mail.example.com")))
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual([r.status for r in results], [QUEUED, QUEUED, DELIVERED])
        [(queued, data)] = self.queue.enqueued
        self.assertEqual([(r.address, r.user, r.notify) for r in queued.recipients],
                         [("friend@far.example", None, ["FAILURE"]),
                          ("alice@mail.example.com", "alice", None)])
        self.assertEqual(queued.client, "client.example[192.0.2.7]")
        self.assertTrue(data.startswith(b"Received: "))
        self.flushLoggedErrors(OSError)

    def test_no_queue_fails_the_message(self) -> None:
        """Without a queue a copy that cannot be written fails the whole message (the SMTP
        door says 451 and the client sends it again)."""
        self.delivery.queue = None
        self.store.broken.add("boss")
        env = self.smtp_envelope(Recipient("boss@mail.example.com",
                                           route=self.local("boss@mail.example.com")))
        self.failureResultOf(self.pipeline.receive(env, BODY))
        self.flushLoggedErrors(OSError)

    def test_success_notice(self) -> None:
        """NOTIFY=SUCCESS: a "delivered" DSN to the sender, logged under the message's id."""
        env = self.smtp_envelope(Recipient("boss@mail.example.com",
                                           addr.RcptParams(notify=("SUCCESS",)),
                                           self.local("boss@mail.example.com")))
        self.successResultOf(self.pipeline.receive(env, BODY))
        [(sender, to, report)] = self.queue.submitted
        self.assertEqual((sender, to), ("", ["joe@far.example"]))
        self.assertIn(b"delivered", report)
        self.assertIn("Q1: sender delivery status notification: NOTICE1", self.log())


class LmtpDoorTests(PipelineCase):
    def test_each_recipient_its_own_result_and_header(self) -> None:
        """LMTP: each recipient delivered on its own (standalone qmgr lines), its copy's
        Received: naming it; a mailbox that cannot be written defers only that recipient."""
        self.store.broken.add("alice")
        client = Client(LMTP, "127.0.0.1", "localhost", "mx.example", protocol="LMTP")
        env = Envelope("L1", "joe@far.example", [
            Recipient(a, route=self.successResultOf(self.delivery.resolve(a)))
            for a in ("boss@mail.example.com", "alice@mail.example.com")], client)
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual(results[0], Result(DELIVERED))
        self.assertEqual(results[1], Result(DEFERRED, 451, "4.3.0",
                                            "Error: cannot write the message"))
        (stored,) = inbox(self.store, BOSS)
        self.assertIn(b"with LMTP id L1\n\tfor <boss@mail.example.com>; ", stored)
        self.assertEqual(self.queue.enqueued, [])
        self.assertEqual(self.log().count("L1: from=<joe@far.example>"), 2)
        self.flushLoggedErrors()


class PickupDoorTests(PipelineCase):
    def envelope(self, *addresses: str) -> Envelope:
        return Envelope("P1", "joe@example.com", [Recipient(a) for a in addresses],
                        Client(PICKUP, uid=1000), arrival=self.clock.seconds())

    def test_looked_up_here_queued_and_bounced(self) -> None:
        """The pickup's recipients are looked up by the pipeline: local delivered (under
        pickup's Received: by), remote submitted to the queue, unknown bounced in one report."""
        env = self.envelope("boss@mail.example.com", "x@far.example",
                            "ghost@mail.example.com")
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual([r.status for r in results], [DELIVERED, QUEUED, BOUNCED])
        self.assertEqual((results[2].code, results[2].dsn), (550, "5.1.1"))
        (stored,) = inbox(self.store, BOSS)
        self.assertIn(b"Received: by mail.example.com (mailsuite, from userid 1000)\n\tid P1;",
                      stored)
        [(sender, to, _)] = self.queue.submitted
        self.assertEqual((sender, to), ("joe@example.com", ["x@far.example"]))
        [(report, kind, entries)] = self.queue.notices
        self.assertEqual((report.sender, kind), ("joe@example.com", "failed"))
        self.assertEqual([e.recipient.address for e in entries], ["ghost@mail.example.com"])
        self.assertIn("P1: to=<ghost@mail.example.com>, relay=none", self.log())

    def test_unwritten_bounce_defers(self) -> None:
        """A refusal whose bounce cannot be queued stays deferred (tried again next scan)."""
        self.delivery.queue = FakeQueue(fail=True)
        results = self.successResultOf(self.pipeline.receive(
            self.envelope("ghost@mail.example.com"), BODY))
        self.assertEqual([r.status for r in results], [DEFERRED])
        self.flushLoggedErrors(OSError)


class StageTests(PipelineCase):
    def test_stages_run_in_order_and_change_the_message(self) -> None:
        """Stages run in order; one adds a header and an audit recipient without a route,
        which the pipeline looks up like any other; all copies carry the header."""
        seen: list[str] = []

        def first(message: Message) -> None:
            seen.append("first")
            message.add_header("X-Checked", "yes")

        def audit(message: Message) -> defer.Deferred[Verdict | None]:
            seen.append("audit")
            message.envelope.recipients.append(Recipient("alice@mail.example.com"))
            return defer.succeed(None)

        self.pipeline.stages = [first, audit]
        env = self.smtp_envelope(Recipient("boss@mail.example.com",
                                           route=self.local("boss@mail.example.com")))
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual(seen, ["first", "audit"])
        self.assertEqual([r.status for r in results], [DELIVERED, DELIVERED])
        for account in (BOSS, ALICE):
            (stored,) = inbox(self.store, account)
            self.assertIn(b"X-Checked: yes\nReceived: from helo.example", stored)

    def test_added_unknown_recipient_is_refused_alone(self) -> None:
        """A stage's recipient that the look-up refuses is refused; the others still go."""
        def add(message: Message) -> None:
            message.envelope.recipients.append(Recipient("ghost@mail.example.com"))

        self.pipeline.stages = [add]
        env = self.smtp_envelope(Recipient("boss@mail.example.com",
                                           route=self.local("boss@mail.example.com")))
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual([(r.status, r.dsn) for r in results],
                         [(DELIVERED, "2.0.0"), (REFUSED, "5.1.1")])

    def test_results_follow_the_doors_recipients(self) -> None:
        """When a stage removes and adds recipients, the results still come in the door's
        order (a removed one discarded, not delivered), the added ones after them."""

        def reroute(message: Message) -> None:
            rcpts = message.envelope.recipients
            rcpts.insert(0, Recipient("alice@mail.example.com"))
            del rcpts[1]

        self.pipeline.stages = [reroute]
        env = self.smtp_envelope(
            Recipient("boss@mail.example.com", route=self.local("boss@mail.example.com")),
            Recipient("x@far.example", route=RemoteRecipient("x@far.example")))
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual([r.status for r in results], [DISCARDED, QUEUED, DELIVERED])
        self.assertEqual(inbox(self.store, BOSS), [])
        self.assertEqual(len(inbox(self.store, ALICE)), 1)

    def test_verdict_ends_the_pipeline(self) -> None:
        """A Verdict (here after a stage that waits) refuses every recipient; later stages
        and the routing do not run: nothing stored, nothing queued."""
        held: defer.Deferred[Verdict | None] = defer.Deferred()
        later: list[Message] = []
        self.pipeline.stages = [lambda m: held, later.append]
        env = self.smtp_envelope(Recipient("boss@mail.example.com",
                                           route=self.local("boss@mail.example.com")),
                                 Recipient("x@far.example", route=RemoteRecipient("x@far.example")))
        d = self.pipeline.receive(env, BODY)
        self.assertNoResult(d)
        held.callback(Verdict(554, "5.7.1", "Rejected by policy"))
        results = self.successResultOf(d)
        self.assertEqual(results, [Result(REFUSED, 554, "5.7.1", "Rejected by policy")] * 2)
        self.assertEqual((later, inbox(self.store, BOSS), self.queue.enqueued), ([], [], []))

    def test_pickup_verdict_is_bounced(self) -> None:
        """At the pickup a 5xx verdict is returned to the sender; a 4xx one keeps the
        recipients for the next scan."""
        self.pipeline.stages = [lambda m: Verdict(550, "5.7.1", "no")]
        env = Envelope("P2", "joe@example.com", [Recipient("boss@mail.example.com")],
                       Client(PICKUP, uid=0), arrival=self.clock.seconds())
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual([r.status for r in results], [BOUNCED])
        self.assertEqual(len(self.queue.notices), 1)
        self.pipeline.stages = [lambda m: Verdict(451, "4.7.1", "later")]
        results = self.successResultOf(self.pipeline.receive(env, BODY))
        self.assertEqual([r.status for r in results], [DEFERRED])


class DoorWiringTests(SessionCase):
    """The SMTP session hands DATA to its factory's pipeline and answers from its results."""

    def test_smtp_replies_a_verdict(self) -> None:
        """A stage's verdict is the reply to the final dot; the stage saw the session's
        envelope (client, HELO) and the stamped message; nothing is stored."""
        seen: list[Message] = []

        def refuse(message: Message) -> Verdict:
            seen.append(message)
            return Verdict(554, "5.7.1", "Rejected by policy")

        self.factory.pipeline.stages = [refuse]
        self.transaction()
        self.assertEqual(self.send(b"Subject: x\r\n\r\nbody\r\n.\r\n"),
                         ["554 5.7.1 Rejected by policy"])
        [message] = seen
        client = message.envelope.client
        self.assertEqual((client.door, client.address, client.name, client.helo),
                         (SMTP, "192.0.2.7", "client.example", "client.example"))
        self.assertEqual([r.address for r in message.envelope.recipients],
                         ["boss@mail.example.com"])
        self.assertTrue(message.data.startswith(b"Received: from client.example"))
        self.assertEqual(inbox(self.store, BOSS), [])


class HeldKeepsBccTests(unittest.TestCase):
    """A held message keeps the copies a BCC stage adds (Postfix's cleanup adds them before
    the message goes to the hold queue); the other stages after the Hold do not run."""

    def test_bcc_after_a_hold(self) -> None:
        from mailsuite.mta.transaction import Hold

        seen: list[str] = []

        def hold(message: Any) -> Any:
            seen.append("hold")
            return defer.succeed(Hold("policy"))

        def other(message: Any) -> None:
            seen.append("other")

        class Bcc:
            runs_when_held = True

            def __call__(self, message: Any) -> None:
                seen.append("bcc")
                message.envelope.recipients.append(Recipient("audit@example.test"))

        held: list[Any] = []

        class Queue:
            def hold(self, envelope: Any, data: bytes, reason: str) -> Any:
                held.append((envelope, reason))
                return defer.succeed(None)

        delivery = type("D", (), {"queue": Queue()})()
        p = Pipeline(delivery, None, "mail.example.test", lambda: 0.0, [hold, other, Bcc()])
        env = Envelope("Q1", "a@remote.test", [Recipient("boss@example.test")],
                       Client("smtp"))
        results = []
        p.deliver(env, b"Subject: x\n\nbody\n").addCallback(results.append)
        self.assertEqual(seen, ["hold", "bcc"])
        (queued, reason), = held
        self.assertEqual([r.address for r in queued.recipients],
                         ["boss@example.test", "audit@example.test"])
        self.assertEqual(reason, "policy")
        self.assertTrue(all(r.accepted for r in results[0]))
