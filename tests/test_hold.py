"""The hold queue (issue 12 item 6): mailsuite.mta.queuefile's hold/ directory and records,
mailsuite.mta.queue's hold, put_on_hold, release, requeue and delete, mailsuite.queuecmd's
``mailq`` ``!``, postsuper verbs without a daemon and ``postcat -q``, and the control socket's
root-only commands."""

from __future__ import annotations

import io
import os
import struct
from typing import Any

from twisted.internet import defer
from twisted.test.proto_helpers import StringTransport
from twisted.trial import unittest

from mailsuite import queuecmd
from mailsuite.cmdbase import Fatal
from mailsuite.mta import control
from mailsuite.mta.accept import UnknownRecipient
from mailsuite.mta.queuefile import Envelope, QueueDirectory, QueuedRecipient
from mailsuite.mta.relay import Outcome
from tests.configs import real_config
from tests import test_queue
from tests.test_queue import MESSAGE, FakeLocal, envelope


def held(*addresses: str, qid: str = "HE1D000001", sender: str = "joe@remote.test") -> Envelope:
    """What Pipeline._hold gives Queue.hold: every envelope recipient, not looked up."""
    return Envelope(qid, sender, [QueuedRecipient(a) for a in addresses], 1000.0)


class HoldFileTests(unittest.TestCase):
    def setUp(self) -> None:
        self.q = QueueDirectory(self.mktemp())
        self.q.setup()

    def test_held_file_is_in_hold_with_its_reason(self) -> None:
        """write(hold=...) commits into hold/ (not active/), the reason and the recipients'
        resolved=False on disk; a queue id is unique across both directories."""
        env = held("a@x.test")
        env.recipients[0].resolved = False
        self.q.write(env, MESSAGE, hold="header Subject: win")
        self.assertEqual((self.q.ids(), self.q.ids(held=True)), ([], ["HE1D000001"]))
        loaded, body = self.q.load("HE1D000001", with_body=True, held=True)
        self.assertEqual((loaded.hold_reason, body), ("header Subject: win", MESSAGE))
        self.assertFalse(loaded.recipients[0].resolved)
        self.assertRaises(FileExistsError, self.q.write, held("b@x.test"), MESSAGE)

    def test_move_both_ways(self) -> None:
        """move(): the record first, then one rename; False when the file is not there."""
        self.q.write(envelope("a@x.test", "b@x.test", qid="AAAA000001"), MESSAGE)
        self.assertTrue(self.q.move("AAAA000001", {"hold": "admin"}, True))
        self.assertFalse(self.q.move("AAAA000001", {"hold": "again"}, True))
        self.assertEqual(self.q.load("AAAA000001", held=True)[0].hold_reason, "admin")
        self.assertTrue(self.q.move("AAAA000001", {"released": 5.0}, False))
        env, _ = self.q.load("AAAA000001")
        self.assertEqual((env.hold_reason, self.q.ids(held=True)), (None, []))

    def test_requeue_record(self) -> None:
        """requeue: pending recipients to be looked up again, tried now, lifetime from now;
        done ones stay done; out of hold/ too."""
        self.q.write(envelope("a@x.test", "b@x.test", qid="AAAA000002"), MESSAGE)
        self.q.mark("AAAA000002", {"done": [0]})
        self.q.mark("AAAA000002", {"attempts": 4, "next": 9999.0})
        self.q.move("AAAA000002", {"hold": "x"}, True)
        self.assertTrue(self.q.requeue("AAAA000002", 7000.0))
        env, _ = self.q.load("AAAA000002")
        self.assertEqual([(r.done, r.resolved) for r in env.recipients],
                         [(True, True), (False, False)])
        self.assertEqual((env.attempts, env.next_attempt, env.lifetime_start), (0, 0.0, 7000.0))
        self.assertFalse(self.q.requeue("NOSUCH0000", 1.0))

    def test_remove_covers_hold(self) -> None:
        self.q.write(held("a@x.test"), MESSAGE, hold="r")
        self.assertTrue(self.q.remove("HE1D000001"))
        self.assertFalse(self.q.remove("HE1D000001"))


class UnknownLocal(FakeLocal):
    """nobody@example.test has no account; lookup@example.test cannot be looked up now."""

    def classify(self, address: str) -> Any:
        if address.startswith("nobody@"):
            return defer.fail(UnknownRecipient(address))
        if address.startswith("lookup@"):
            return defer.fail(OSError("alias file unreadable"))
        return super().classify(address)


class HoldQueueTests(unittest.TestCase):
    """The queue manager and the hold queue (QueueManagerTests' fixtures, not its tests: a
    Clock, FakeRelay, FakeLocal, lifetime 3600 s)."""

    setUp = test_queue.QueueManagerTests.setUp
    make_queue = test_queue.QueueManagerTests.make_queue
    enqueue = test_queue.QueueManagerTests.enqueue
    log = test_queue.QueueManagerTests.log

    def hold(self, *addresses: str, **kw: Any) -> None:
        self.successResultOf(self.queue.hold(held(*addresses, **kw), MESSAGE, "test stage"))
        self.clock.advance(0)

    def test_held_not_delivered_nor_expired(self) -> None:
        """A held message is never tried, by time, flush or restart, and never expires."""
        self.hold("bob@example.test", "x@remote.test")
        self.assertIn("HE1D000001: hold: test stage; from=<joe@remote.test>", self.log())
        self.queue.flush()
        self.clock.advance(100000)
        self.queue.stop()
        self.queue = self.make_queue()
        self.successResultOf(self.queue.start())
        self.clock.advance(100000)
        self.assertEqual((self.relay.calls, self.local.delivered), ([], []))
        self.assertNotIn("expired", self.log())
        self.assertEqual(self.dir.ids(held=True), ["HE1D000001"])

    def test_release_resolves_and_delivers_at_once(self) -> None:
        """-H: looked up on release (local ones by the local transport, LocalTransport
        .classify), recorded, and delivered at once; the file goes."""
        self.hold("bob@example.test", "x@remote.test")
        self.assertTrue(self.successResultOf(self.queue.release("HE1D000001")))
        self.clock.advance(0)
        self.assertEqual([u for u, _, _ in self.local.delivered], ["bob"])
        self.assertEqual(self.relay.calls, [("remote.test", ["x@remote.test"])])
        self.assertEqual((self.dir.ids(), self.dir.ids(held=True)), ([], []))
        self.assertIn("HE1D000001: released from hold", self.log())
        self.assertFalse(self.successResultOf(self.queue.release("HE1D000001")))

    def test_released_late_expires_as_postfix(self) -> None:
        """Released after maximal_queue_lifetime, a 4xx bounces at once (Postfix: held mail
        becomes subject to expiry when released); -r instead gives it a new lifetime."""
        self.relay.script["x@remote.test"] = [451] * 5
        self.hold("x@remote.test", qid="HE1D000001")
        self.hold("x@remote.test", qid="HE1D000002")
        self.clock.advance(7200)
        self.successResultOf(self.queue.release("HE1D000001"))
        self.successResultOf(self.queue.release("HE1D000002", requeue=True))
        self.clock.advance(0)
        self.assertIn("HE1D000001: from=<joe@remote.test>, status=expired", self.log())
        self.assertNotIn("HE1D000002: from=<joe@remote.test>, status=expired", self.log())
        self.assertEqual(self.dir.ids(), ["HE1D000002"])

    def test_unknown_recipient_bounces_on_release(self) -> None:
        """A recipient that no longer exists bounces (5.1.1) on release; one that cannot be
        looked up now is retried, still to be looked up; the others are delivered."""
        self.local = UnknownLocal()
        self.queue = self.make_queue()
        self.successResultOf(self.queue.start())
        self.hold("nobody@example.test", "lookup@example.test", "bob@example.test")
        self.successResultOf(self.queue.release("HE1D000001"))
        self.clock.advance(0)
        self.assertEqual([u for u, _, _ in self.local.delivered], ["bob"])
        self.assertEqual(self.relay.calls, [("remote.test", ["joe@remote.test"])])  # the bounce
        self.assertIn("to=<nobody@example.test>, relay=none, dsn=5.1.1, status=bounced",
                      self.log())
        env, _ = self.dir.load("HE1D000001")
        self.assertEqual([(r.address, r.resolved) for _, r in env.pending()],
                         [("lookup@example.test", False)])
        self.flushLoggedErrors(OSError)

    def test_put_on_hold_waits_for_the_attempt(self) -> None:
        """-h on a message being delivered waits for the attempt (its progress is recorded
        where the file is), then holds it: not tried again by flush or time."""
        pending: defer.Deferred[list[Outcome]] = defer.Deferred()
        self.relay.deliver = lambda hop, env, rcpts, data: pending  # type: ignore[method-assign]
        self.enqueue(envelope("a@x.test", "b@x.test"))
        done = self.queue.put_on_hold("AB12CD34EF")
        self.assertNoResult(done)
        pending.callback([Outcome(250, "2.0.0", "ok", "mx"), Outcome(451, "4.4.1", "later", "mx")])
        self.assertTrue(self.successResultOf(done))
        env, _ = self.dir.load("AB12CD34EF", held=True)
        self.assertEqual([r.done for r in env.recipients], [True, False])
        self.relay.deliver = lambda *a: self.fail("held mail tried")  # type: ignore
        self.queue.flush()
        self.clock.advance(100000)
        self.assertIn("AB12CD34EF: placed on hold", self.log())

    def test_requeue_looks_up_again(self) -> None:
        """-r on queued mail: tried now, its recipients looked up again (bob's address was
        queued for relay; now it is a local account)."""
        self.relay.script["bob@example.test"] = [451]
        self.enqueue(envelope("bob@example.test"))
        self.assertEqual(len(self.relay.calls), 1)
        self.assertTrue(self.successResultOf(self.queue.release("AB12CD34EF", requeue=True)))
        self.clock.advance(0)
        self.assertEqual([u for u, _, _ in self.local.delivered], ["bob"])
        self.assertEqual(self.dir.ids(), [])

    def test_release_of_queued_mail_keeps_its_schedule(self) -> None:
        """-H on a message that is not held answers False and leaves it as it was."""
        self.relay.script["a@x.test"] = [451]
        self.enqueue(envelope("a@x.test"))
        self.assertFalse(self.successResultOf(self.queue.release("AB12CD34EF")))
        self.clock.advance(300)
        self.assertEqual(self.dir.ids(), [])

    def test_delete_held(self) -> None:
        """-d covers the hold queue."""
        self.hold("a@x.test")
        self.assertTrue(self.successResultOf(self.queue.delete("HE1D000001")))
        self.assertEqual(self.dir.ids(held=True), [])
        self.assertFalse(self.successResultOf(self.queue.delete("HE1D000001")))


class QueueCommandTests(unittest.TestCase):
    """mailsuite-queue with no daemon running: on the files."""

    def setUp(self) -> None:
        d = os.path.abspath(self.mktemp())
        self.cfg = real_config(mail={"queue_directory": d})
        self.q = QueueDirectory(d)
        self.q.setup()
        self.q.write(envelope("a@x.test", qid="AAAA000001"), MESSAGE)
        self.q.write(held("b@x.test"), MESSAGE, hold="header Subject: win")

    def mailq(self) -> str:
        out = io.StringIO()
        queuecmd.mailq_report(self.cfg, out)
        return out.getvalue()

    def postsuper(self, flag: str, which: str) -> str:
        err = io.StringIO()
        self.assertEqual(queuecmd.postsuper(self.cfg, flag, which, err), 0)
        return err.getvalue().strip()

    def test_mailq_marks_held_mail(self) -> None:
        """Postfix's ``!`` after a held message's id; the reason in parentheses."""
        lines = self.mailq().splitlines()
        self.assertTrue(lines[1].startswith("AAAA000001*"))
        at = next(i for i, line in enumerate(lines) if line.startswith("HE1D000001!"))
        self.assertEqual(lines[at + 1].strip(), "(held: header Subject: win)")
        self.assertEqual(lines[at + 2].strip(), "b@x.test")

    def test_verbs_on_files(self) -> None:
        """-h, -H, -r and -d (ALL too) change the files when no daemon answers."""
        self.assertEqual(self.postsuper("-h", "ALL"), "postsuper: Placed on hold: 1 message")
        self.assertEqual(sorted(self.q.ids(held=True)), ["AAAA000001", "HE1D000001"])
        self.assertEqual(self.postsuper("-H", "HE1D000001"),
                         "postsuper: Released from hold: 1 message")
        self.assertEqual(self.q.ids(), ["HE1D000001"])
        self.assertEqual(self.postsuper("-r", "ALL"), "postsuper: Requeued: 2 messages")
        self.assertEqual(self.q.ids(held=True), [])
        self.assertEqual(self.postsuper("-d", "ALL"), "postsuper: Deleted: 2 messages")
        self.assertEqual(self.mailq(), "Mail queue is empty\n")
        self.assertRaises(Fatal, queuecmd.postsuper, self.cfg, "-h", "../x", io.StringIO())

    def test_show_is_envelope_and_message(self) -> None:
        """-s ID (postcat -q): envelope records, then the whole message."""
        out = io.BytesIO()
        self.assertEqual(queuecmd.show(self.cfg, "HE1D000001", out), 0)
        text = out.getvalue().decode()
        self.assertTrue(text.startswith("*** ENVELOPE RECORDS hold/HE1D000001 ***\n"))
        self.assertIn("hold_reason: header Subject: win\n", text)
        self.assertIn("recipient: b@x.test [pending]\n", text)
        self.assertIn("*** MESSAGE CONTENTS hold/HE1D000001 ***\n" + MESSAGE.decode(), text)
        self.assertTrue(text.endswith("*** MESSAGE FILE END hold/HE1D000001 ***\n"))
        with self.assertRaises(Fatal) as caught:
            queuecmd.show(self.cfg, "NOSUCH0000", io.BytesIO())
        self.assertEqual(caught.exception.code, queuecmd.EX_NOINPUT)

    def test_parse(self) -> None:
        """-h ID holds; -h alone (and --help) is the usage."""
        self.assertEqual(queuecmd._parse(["-h", "ALL"]), (None, "-h", "ALL"))
        self.assertEqual(queuecmd._parse(["-C", "m.ini", "-s", "X1"]), ("m.ini", "-s", "X1"))
        self.assertEqual(queuecmd._parse([]), (None, "-p", None))
        self.assertRaises(queuecmd.Help, queuecmd._parse, ["-h"])
        self.assertRaises(Fatal, queuecmd._parse, ["-H"])


class FakeHandle:
    def __init__(self, uid: int) -> None:
        self.uid = uid

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        return struct.pack("3i", 1234, self.uid, self.uid)


class ControlTests(unittest.TestCase):
    def ask(self, line: bytes, uid: int) -> str:
        calls: list[str] = []
        factory = control.ControlFactory({"hold": lambda q: calls.append(q) or "held",
                                          "flush": lambda: "flushed"})
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        transport.getHandle = lambda: FakeHandle(uid)  # type: ignore[method-assign]
        proto.makeConnection(transport)
        proto.dataReceived(line + b"\r\n")
        return transport.value().decode().strip()

    def test_queue_changes_are_root_only(self) -> None:
        """hold/release/requeue/delete: root (or the daemon's own uid) only, as postsuper;
        flush stays open to everyone (postqueue -f)."""
        self.assertEqual(self.ask(b"hold AB12", 0), "ok held")
        self.assertEqual(self.ask(b"hold AB12", os.getuid()), "ok held")
        self.assertEqual(self.ask(b"hold AB12", 54321), "error permission denied")
        self.assertEqual(self.ask(b"flush", 54321), "ok flushed")

    def test_peer_uid_of_a_real_socket(self) -> None:
        import socket
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)

        class T:
            def getHandle(self) -> Any:
                return a

        self.assertEqual(control.peer_uid(T()), os.getuid())
        self.assertIsNone(control.peer_uid(StringTransport()))
