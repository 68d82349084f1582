"""|command, /file and remote alias targets with the queue (NOTE-mta-aliases-to-queue items 5
and 7): over SMTP a failed command never makes the whole DATA 451 (no duplicate mailbox copies),
a permanent failure bounces and a temporary one is queued; queued targets are resolved again
and run at delivery; remote alias targets are forwarded through the queue."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from mailsuite.mta import forward
from mailsuite.mta.queuefile import Envelope, QueuedRecipient
from tests.fakes import FakeQueue
from tests.test_delivery import BOSS, inbox
from tests.test_smtp_server import SessionCase


class AliasTargetCase(SessionCase):
    """Client 192.0.2.7 (a stranger: no relaying); the aliases below; a fake queue."""

    def setUp(self) -> None:
        super().setUp()
        self.queue = FakeQueue()
        self.delivery.queue = self.queue
        # a flag file any user (commands run as nobody under root) can see
        self.flags = tempfile.mkdtemp(prefix="ms-flag-", dir="/tmp")
        os.chmod(self.flags, 0o755)
        self.addCleanup(shutil.rmtree, self.flags, True)
        self.flag = os.path.join(self.flags, "ready")
        self.set_aliases(
            "postmaster: boss\n"
            'badcmd: boss, "|exit 3"\n'
            'busycmd: boss, "|exit 75"\n'
            f'later: boss, "|test -e {self.flag} || exit 75"\n'
            'okcmd: boss, "|cat >/dev/null"\n'
            "badlist: \"|exit 3\"\n"
            "owner-badlist: boss\n"
            "fwd: boss, friend@elsewhere.example\n"
            "owned: friend@elsewhere.example\n"
            "owner-owned: boss\n"
        )

    def set_aliases(self, text: str) -> None:
        with open(self.delivery.aliases.paths[0], "w") as f:
            f.write(text)
        self.delivery.forget_lookups()

    def message_to(self, *rcpts: str, sender: str = "a@b.example") -> list[str]:
        """One SMTP transaction; the replies to RCPTs and to the final dot."""
        self.send(b"EHLO client.example\r\nMAIL FROM:<" + sender.encode() + b">\r\n")
        out = []
        for rcpt in rcpts:
            out += self.codes(b"RCPT TO:<" + rcpt.encode() + b">\r\n")
        self.assertEqual(self.codes(b"DATA\r\n"), ["354"])
        return out + self.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")

    def deliver_queued(self, env: Envelope, data: bytes) -> list[Any]:
        pending = [r for _, r in env.pending()]
        return self.successResultOf(self.delivery.deliver_users(data, env, pending))


class CommandFailureTests(AliasTargetCase):
    def test_permanent_failure_bounces_instead_of_451(self) -> None:
        """A |command exiting 3 (5.3.0): the message is still accepted (250) and the mailbox
        copy written once; an RFC 3464 bounce for that target goes to the sender; nothing is
        queued for the command."""
        replies = self.message_to("badcmd@mail.example.com")
        self.assertEqual(replies[0], "250")
        self.assertRegex(replies[1], r"^250 2\.0\.0 Ok: queued as \w+$")
        self.assertEqual(len(inbox(self.store, BOSS)), 1)
        self.assertEqual(self.queue.enqueued, [])
        [(sender, to, notice)] = self.queue.submitted
        self.assertEqual((sender, to), ("", ["a@b.example"]))
        self.assertIn(b"Action: failed", notice)
        self.assertIn(b"Status: 5.3.0", notice)
        self.assertIn(b"badcmd@mail.example.com", notice)
        self.assertTrue(any("status=bounced" in line for line in self.log_text()))

    def test_permanent_failure_bounces_to_owner(self) -> None:
        """With an owner-NAME alias the bounce of NAME's failed command goes to the owner."""
        replies = self.message_to("badlist@mail.example.com")
        self.assertRegex(replies[-1], r"^250 ")
        [(sender, to, _)] = self.queue.submitted
        self.assertEqual((sender, to), ("", ["owner-badlist@example.com"]))

    def test_null_sender_gets_no_bounce(self) -> None:
        """A failed command of a message from <> is not bounced (no loops)."""
        replies = self.message_to("badcmd@mail.example.com", sender="")
        self.assertRegex(replies[-1], r"^250 ")
        self.assertEqual(self.queue.submitted, [])

    def test_temporary_failure_is_queued_not_451(self) -> None:
        """A |command exiting 75: 250, the mailbox copy written once, and the command queued
        as a local recipient naming that target; a queue retry while it still fails is 4.3.0
        and writes no second mailbox copy."""
        replies = self.message_to("busycmd@mail.example.com")
        self.assertRegex(replies[-1], r"^250 ")
        self.assertEqual(len(inbox(self.store, BOSS)), 1)
        [(env, data)] = self.queue.enqueued
        self.assertEqual([(r.address, r.user) for r in env.recipients],
                         [("busycmd@mail.example.com", "|exit 75")])
        [outcome] = self.deliver_queued(env, data)
        self.assertEqual((outcome.code, outcome.dsn), (451, "4.3.0"))
        self.assertEqual(len(inbox(self.store, BOSS)), 1)

    def test_queued_command_runs_again_at_delivery(self) -> None:
        """The queued target is found again by resolving the address at delivery time and run;
        once it succeeds the recipient is done (250), still one mailbox copy."""
        self.message_to("later@mail.example.com")
        [(env, data)] = self.queue.enqueued
        open(self.flag, "w").close()
        [outcome] = self.deliver_queued(env, data)
        self.assertEqual(outcome.code, 250)
        self.assertEqual(len(inbox(self.store, BOSS)), 1)

    def test_target_gone_from_alias_bounces(self) -> None:
        """A queued command that the alias no longer lists bounces (5.1.1), naming it."""
        self.message_to("busycmd@mail.example.com")
        [(env, data)] = self.queue.enqueued
        self.set_aliases("postmaster: boss\nbusycmd: boss\n")
        [outcome] = self.deliver_queued(env, data)
        self.assertEqual((outcome.code, outcome.dsn), (550, "5.1.1"))
        self.assertIn("|exit 75", outcome.text)


class ClassifyTests(AliasTargetCase):
    def test_notifications_keep_every_destination(self) -> None:
        """classify() (the queue's routing of a new notification) keeps mailboxes, commands
        and remote alias targets instead of only the accounts."""
        found = self.successResultOf(self.delivery.classify("okcmd@mail.example.com"))
        self.assertEqual([(r.address, r.user) for r in found],
                         [("okcmd@mail.example.com", "boss"),
                          ("okcmd@mail.example.com", "|cat >/dev/null")])
        found = self.successResultOf(self.delivery.classify("fwd@mail.example.com"))
        self.assertEqual([(r.address, r.user, r.orcpt) for r in found],
                         [("fwd@mail.example.com", "boss", None),
                          ("friend@elsewhere.example", None, "rfc822;fwd@mail.example.com")])

    def test_queued_command_from_classify_is_delivered(self) -> None:
        """A command recipient made by classify() is run by deliver_users (250)."""
        found = self.successResultOf(self.delivery.classify("okcmd@mail.example.com"))
        env = Envelope("Q1", "", found, 0.0)
        outcomes = self.deliver_queued(env, b"Subject: n\n\nx\n")
        self.assertEqual([o.code for o in outcomes], [250, 250])
        self.assertEqual(len(inbox(self.store, BOSS)), 1)


class RemoteTargetTests(AliasTargetCase):
    def test_remote_alias_target_goes_to_the_queue(self) -> None:
        """An alias with a remote member, from a stranger: accepted (aliases forward, that is no
        relaying), the local copy written and the remote address queued with ORCPT = the alias,
        in the same queue file (same queue id)."""
        replies = self.message_to("fwd@mail.example.com")
        self.assertEqual(replies[0], "250")
        self.assertRegex(replies[1], r"^250 ")
        self.assertEqual(len(inbox(self.store, BOSS)), 1)
        [(env, _)] = self.queue.enqueued
        self.assertEqual(env.queue_id, replies[1].rsplit(" ", 1)[1])
        self.assertEqual(env.sender, "a@b.example")
        self.assertEqual([(r.address, r.user, r.orcpt) for r in env.recipients],
                         [("friend@elsewhere.example", None, "rfc822;fwd@mail.example.com")])

    def test_owner_alias_forwards_with_owner_sender(self) -> None:
        """A remote target of an alias with an owner- alias is forwarded as a new queue file
        whose envelope sender is the owner (errors go there), logged as local(8) does."""
        replies = self.message_to("owned@mail.example.com")
        self.assertRegex(replies[-1], r"^250 ")
        [(env, _)] = self.queue.enqueued
        self.assertEqual(env.sender, "owner-owned@example.com")
        self.assertEqual([r.address for r in env.recipients], ["friend@elsewhere.example"])
        self.assertNotEqual(env.queue_id, replies[-1].rsplit(" ", 1)[1])
        self.assertTrue(any(
            "to=<friend@elsewhere.example>, orig_to=<owned@mail.example.com>, relay=local" in line
            and f"status=sent (forwarded as {env.queue_id})" in line for line in self.log_text()))

    def test_deliver_forwards_remote_targets(self) -> None:
        """LocalDelivery.deliver (LMTP, sendmail pickup, queue retries) forwards a
        forward.Remote destination into the queue and fires once it is there."""
        dest = forward.Remote("friend@elsewhere.example", "aliases, line 1")
        self.successResultOf(self.delivery.deliver(
            b"Subject: x\n\ny\n", "a@b.example", [("fwd@mail.example.com", dest)], "Q2"))
        [(env, _)] = self.queue.enqueued
        self.assertEqual((env.sender, [r.address for r in env.recipients]),
                         ("a@b.example", ["friend@elsewhere.example"]))

    def test_without_queue_remote_target_is_refused(self) -> None:
        """Local delivery only (no queue): a remote alias target is still refused with 451 at
        RCPT, never dropped."""
        self.delivery.queue = None
        self.send(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(self.codes(b"RCPT TO:<fwd@mail.example.com>\r\n"), ["451"])

    def test_queued_recipient_json_unchanged(self) -> None:
        """A command recipient is an ordinary queue-file recipient (``user`` names the target),
        so queue files stay readable by mailq and earlier versions' loader."""
        r = QueuedRecipient("busycmd@mail.example.com", user="|exit 75")
        env = Envelope("Q3", "a@b.example", [r], 1.0)
        self.assertEqual(Envelope.from_json(env.to_json()).recipients, [r])
