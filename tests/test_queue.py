"""Tests for mailsuite.mta.queuefile (durable queue files) and mailsuite.mta.queue (qmgr)."""

from __future__ import annotations

import email
import json
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from mailsuite.maillog import MailLog
from mailsuite.mta.queue import Queue, QueueSettings
from mailsuite.mta.queuefile import Envelope, QueueDirectory, QueuedRecipient, submit
from mailsuite.mta.relay import Outcome

MESSAGE = b"Subject: hello\nMessage-ID: <m1@remote.test>\n\nbody\n"


def envelope(*addresses: str, sender: str = "alice@remote.test", qid: str = "AB12CD34EF",
             **kw: Any) -> Envelope:
    return Envelope(qid, sender, [QueuedRecipient(a) for a in addresses], 1000.0, **kw)


def sync(f: Any, *a: Any, **kw: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *a, **kw)


class QueueFileTests(unittest.TestCase):
    def setUp(self) -> None:
        self.q = QueueDirectory(self.mktemp())
        self.q.setup()

    def test_write_is_json_and_message(self) -> None:
        """A queue file is one JSON line (never a pickle) followed by the message bytes."""
        self.q.write(envelope("a@x.test"), MESSAGE)
        with open(self.q.path("AB12CD34EF"), "rb") as f:
            head, rest = f.read().split(b"\n", 1)
        self.assertEqual(json.loads(head)["recipients"][0]["address"], "a@x.test")
        self.assertEqual(rest, MESSAGE)
        self.assertEqual(os.listdir(self.q.tmp), [])

    def test_progress_replayed(self) -> None:
        """Progress records are replayed at load: done recipients, attempts, next attempt."""
        self.q.write(envelope("a@x.test", "b@y.test", "c@z.test"), MESSAGE)
        self.q.mark("AB12CD34EF", {"done": [0, 2]})
        self.q.mark("AB12CD34EF", {"attempts": 2, "next": 1600.0})
        env, body = self.q.load("AB12CD34EF", with_body=True)
        self.assertEqual([r.done for r in env.recipients], [True, False, True])
        self.assertEqual((env.attempts, env.next_attempt), (2, 1600.0))
        self.assertEqual(body, MESSAGE)

    def test_torn_record_ignored(self) -> None:
        """A record cut short by a crash (no newline, bad JSON) counts as never written."""
        self.q.write(envelope("a@x.test", "b@y.test"), MESSAGE)
        with open(self.q.path("AB12CD34EF"), "ab") as f:
            f.write(b'{"done": [0, 1')
        env, _ = self.q.load("AB12CD34EF")
        self.assertEqual([r.done for r in env.recipients], [False, False])

    def test_half_written_files_dropped_at_setup(self) -> None:
        """Files left in tmp/ (never acknowledged) are removed at start-up."""
        with open(os.path.join(self.q.tmp, "DEADBEEF00"), "wb") as f:
            f.write(b"partial")
        self.q.setup()
        self.assertEqual(os.listdir(self.q.tmp), [])

    def test_submit_for_commands(self) -> None:
        """submit() (for sendmail and friends) writes a complete queue file in one call."""
        env = submit(self.q.directory, "boss@example.test", [QueuedRecipient("a@x.test")],
                     MESSAGE, now=5.0)
        self.assertEqual(self.q.ids(), [env.queue_id])
        self.assertEqual(self.q.load(env.queue_id)[0].arrival, 5.0)

    def test_duplicate_id_refused(self) -> None:
        """A queue id is never reused while its file exists."""
        self.q.write(envelope("a@x.test"), MESSAGE)
        self.assertRaises(FileExistsError, self.q.write, envelope("b@x.test"), MESSAGE)


class FakeRelay:
    """Answers every delivery with the next scripted code for that address."""

    def __init__(self) -> None:
        self.script: dict[str, list[int]] = {}
        self.calls: list[tuple[str, list[str]]] = []
        self.remote_dsn = False

    def next_hop(self, address: str) -> str:
        return address.rpartition("@")[2]

    def deliver(self, hop: str, env: Envelope, rcpts: list[QueuedRecipient], data: bytes) -> Any:
        self.calls.append((hop, [r.address for r in rcpts]))
        out = []
        for r in rcpts:
            code = self.script.get(r.address, [250]).pop(0) if self.script.get(r.address) else 250
            dsn = {2: "2.0.0", 4: "4.4.1", 5: "5.1.1"}[code // 100]
            out.append(Outcome(code, dsn, f"{code} {dsn} scripted", f"mx.{hop}[192.0.2.1]:25",
                               remote_dsn=self.remote_dsn))
        return defer.succeed(out)


class FakeLocal:
    """Local transport: records deliveries; bob@example.test is a local account."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, bytes, str]] = []

    def deliver_users(self, data: bytes, env: Envelope, rcpts: list[QueuedRecipient]) -> Any:
        for r in rcpts:
            self.delivered.append((r.user or "", data, env.sender))
        return defer.succeed([Outcome(250, "2.0.0", "delivered to mailbox", "local")] * len(rcpts))

    def classify(self, address: str) -> Any:
        if address.endswith("@example.test"):
            return defer.succeed([QueuedRecipient(address, user=address.split("@")[0])])
        return defer.succeed([QueuedRecipient(address)])


class QueueManagerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.dir = QueueDirectory(self.mktemp())
        self.relay = FakeRelay()
        self.local = FakeLocal()
        self.maillog = MailLog(None, "mail.example.test", now=self.clock.seconds)
        self.settings = QueueSettings("mail.example.test", lifetime=3600.0)
        self.queue = self.make_queue()
        self.successResultOf(self.queue.start())

    def make_queue(self) -> Queue:
        return Queue(self.dir, self.local, self.relay, self.maillog, self.clock, self.settings,
                     sync)

    def enqueue(self, env: Envelope) -> None:
        self.successResultOf(self.queue.enqueue(env, MESSAGE))
        self.clock.advance(0)

    def log(self) -> str:
        return "\n".join(self.maillog.lines)

    def test_sent_and_removed(self) -> None:
        """A 250 marks the recipient done; the file goes; maillog has sent and removed lines."""
        self.enqueue(envelope("a@x.test", "b@x.test"))
        self.assertEqual(self.relay.calls, [("x.test", ["a@x.test", "b@x.test"])])
        self.assertEqual(self.dir.ids(), [])
        self.assertRegex(self.log(), r"smtp\[\d+\]: AB12CD34EF: to=<a@x.test>, "
                         r"relay=mx.x.test\[192.0.2.1\]:25, delay=0, delays=0/0/0/0, "
                         r"dsn=2.0.0, status=sent \(250 2.0.0 scripted\)")
        self.assertIn("qmgr[", self.log())
        self.assertTrue(self.maillog.lines[-1].endswith("AB12CD34EF: removed"))

    def test_deferred_backoff(self) -> None:
        """4xx: retried after 300 s, then 600 s, then 1200 s (Postfix back-off), durably."""
        self.relay.script["a@x.test"] = [451, 451, 451, 250]
        self.enqueue(envelope("a@x.test"))
        self.assertIn("status=deferred", self.log())
        self.assertEqual(self.dir.load("AB12CD34EF")[0].attempts, 1)
        for wait in (299, 1, 599, 1, 1199, 1):
            before = len(self.relay.calls)
            self.clock.advance(wait)
            self.assertEqual(len(self.relay.calls), before + (wait == 1))
        self.assertEqual(len(self.relay.calls), 4)
        self.assertEqual(self.dir.ids(), [])

    def test_bounce_to_sender(self) -> None:
        """5xx: an RFC 3464 report from MAILER-DAEMON with the null sender goes to the envelope
        sender, with ORCPT, ENVID and the original message; the recipient is done."""
        env = envelope("a@x.test", "ok@x.test", sender="bob@example.test", envid="E1")
        env.recipients[0].orcpt = "rfc822;A@x.test"
        self.relay.script["a@x.test"] = [550]
        self.enqueue(env)
        self.assertEqual(len(self.local.delivered), 1)
        user, report, sender = self.local.delivered[0]
        self.assertEqual((user, sender), ("bob", ""))
        msg = email.message_from_bytes(report)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertIn("MAILER-DAEMON@mail.example.test", msg["From"])
        parts = msg.get_payload()
        status = parts[1].as_string()
        self.assertIn("Final-Recipient: rfc822; a@x.test", status)
        self.assertIn("Original-Recipient: rfc822; A@x.test", status)
        self.assertIn("Action: failed", status)
        self.assertIn("Status: 5.1.1", status)
        self.assertIn("Original-Envelope-Id: E1", status)
        self.assertNotIn("ok@x.test", status)
        self.assertIn(b"body", report)
        self.assertRegex(self.log(), r"bounce\[\d+\]: AB12CD34EF: sender non-delivery "
                         r"notification: \w+")
        self.assertEqual(self.dir.ids(), [])

    def test_no_bounce_for_null_sender(self) -> None:
        """A message from <> that bounces makes no notification (no loops)."""
        self.relay.script["a@x.test"] = [550]
        self.enqueue(envelope("a@x.test", sender=""))
        self.assertEqual(self.local.delivered, [])
        self.assertEqual(self.dir.ids(), [])

    def test_notify_never_and_ret_hdrs(self) -> None:
        """NOTIFY=NEVER: no bounce; RET=HDRS: only the headers are returned."""
        env = envelope("a@x.test", "b@x.test", sender="bob@example.test", ret="HDRS")
        env.recipients[0].notify = ["NEVER"]
        self.relay.script["a@x.test"] = [550]
        self.relay.script["b@x.test"] = [550]
        self.enqueue(env)
        self.assertEqual(len(self.local.delivered), 1)
        report = self.local.delivered[0][1]
        self.assertNotIn(b"a@x.test>:", report)
        self.assertIn(b"text/rfc822-headers", report)
        self.assertNotIn(b"\nbody\n", report)

    def test_success_notice_when_relayed_without_dsn(self) -> None:
        """NOTIFY=SUCCESS to a server without DSN: a "relayed" notice; with DSN: none."""
        env = envelope("a@x.test", sender="bob@example.test")
        env.recipients[0].notify = ["SUCCESS"]
        self.enqueue(env)
        self.assertIn(b"Action: relayed", self.local.delivered[0][1])
        self.relay.remote_dsn = True
        env = envelope("a@x.test", sender="bob@example.test", qid="FF00FF00FF")
        env.recipients[0].notify = ["SUCCESS"]
        self.enqueue(env)
        self.assertEqual(len(self.local.delivered), 1)

    def test_expired_bounces(self) -> None:
        """Still deferred after maximal_queue_lifetime: status=expired and a bounce."""
        self.relay.script["a@x.test"] = [451] * 20
        self.enqueue(envelope("a@x.test", sender="bob@example.test"))
        self.clock.pump([600] * 12)
        self.assertIn("status=expired, returned to sender", self.log())
        self.assertEqual(len(self.local.delivered), 1)
        self.assertEqual(self.dir.ids(), [])

    def test_delay_warning(self) -> None:
        """delay_warning_time: one "delayed" notice once the message waited that long."""
        self.settings.delay_warning = 250.0
        self.relay.script["a@x.test"] = [451] * 5
        self.enqueue(envelope("a@x.test", sender="bob@example.test"))
        self.assertEqual(self.local.delivered, [])
        self.clock.advance(300)
        self.clock.advance(600)
        self.assertEqual(len(self.local.delivered), 1)
        self.assertIn(b"Action: delayed", self.local.delivered[0][1])

    def test_restart_resumes_without_duplicates(self) -> None:
        """After a restart only recipients not marked done are tried again."""
        self.relay.script["b@x.test"] = [451]
        self.enqueue(envelope("a@x.test", "b@x.test"))
        self.queue.stop()
        self.relay.calls.clear()
        self.clock.advance(10)
        queue = self.make_queue()
        self.successResultOf(queue.start())
        self.clock.advance(300)
        self.assertEqual(self.relay.calls, [("x.test", ["b@x.test"])])
        self.assertEqual(self.dir.ids(), [])

    def test_local_recipients_go_to_local_transport(self) -> None:
        """Recipients with an account name are delivered by the local transport."""
        env = envelope("x@y.test")
        env.recipients[0] = QueuedRecipient("boss@example.test", user="boss")
        self.enqueue(env)
        self.assertEqual(self.local.delivered[0][0], "boss")
        self.assertEqual(self.relay.calls, [])

    def test_flush(self) -> None:
        """flush() retries deferred mail at once (postqueue -f)."""
        self.relay.script["a@x.test"] = [451]
        self.enqueue(envelope("a@x.test"))
        self.queue.flush()
        self.clock.advance(0)
        self.assertEqual(self.dir.ids(), [])
