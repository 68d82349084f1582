"""Tests for mailsuite.mta.maildrop: the sendmail drop files and the daemon's pickup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.maillog import MailLog
from mailsuite.mta import maildrop
from mailsuite.mta.delivery import DeliveryFailed
from mailsuite.mta.forward import TargetFailed
from tests.fakes import FakeDelivery, FakeQueue


class DropTests(unittest.TestCase):
    def setUp(self) -> None:
        self.queue = os.path.abspath(self.mktemp())
        os.makedirs(self.queue)
        maildrop.ensure_maildrop(self.queue)

    def test_directory_mode(self) -> None:
        """maildrop/ is 1733: anyone may drop, nobody but root may list (as Postfix's)."""
        mode = os.stat(maildrop.maildrop_dir(self.queue)).st_mode & 0o7777
        self.assertEqual(mode, 0o1733)

    def test_round_trip(self) -> None:
        """drop() then read() gives sender, recipients, uid and the exact bytes; ids() lists it;
        no temporary file is left behind."""
        queue_id = maildrop.drop(self.queue, "joe", ["a", "b@x"], b"Subject: s\n\nbody\n")
        d = maildrop.read(self.queue, queue_id)
        self.assertEqual((d.sender, d.recipients, d.data), ("joe", ["a", "b@x"],
                                                            b"Subject: s\n\nbody\n"))
        self.assertEqual(d.uid, os.getuid())
        self.assertEqual(maildrop.ids(self.queue), [queue_id])
        self.assertEqual(os.listdir(maildrop.maildrop_dir(self.queue)), [queue_id])

    def test_hard_link_refused(self) -> None:
        """A dropped file with a second link (a user's hard link to a file of someone else's,
        which would pass as that owner's submission) is not read; nor is a symlink."""
        queue_id = maildrop.drop(self.queue, "joe", ["a"], b"x\n")
        path = os.path.join(maildrop.maildrop_dir(self.queue), queue_id)
        os.link(path, os.path.join(self.queue, "elsewhere"))
        e = self.assertRaises(ValueError, maildrop.read, self.queue, queue_id)
        self.assertIn("2 hard links", str(e))
        os.symlink(os.path.join(self.queue, "elsewhere"),
                   os.path.join(maildrop.maildrop_dir(self.queue), "LINK"))
        self.assertRaises(OSError, maildrop.read, self.queue, "LINK")

    def test_stale_tmp_removed(self) -> None:
        """A half-written .tmp file of a killed sendmail is skipped, and removed when old."""
        path = os.path.join(maildrop.maildrop_dir(self.queue), ".tmp.X")
        open(path, "w").close()
        self.assertEqual(maildrop.ids(self.queue), [])
        self.assertTrue(os.path.exists(path))
        maildrop.ids(self.queue, now=lambda: os.stat(path).st_mtime + maildrop.STALE_TMP + 1)
        self.assertFalse(os.path.exists(path))

    def test_qualify(self) -> None:
        """Bare names get @myorigin (append_at_myorigin); the null sender stays null."""
        self.assertEqual(maildrop.qualify("joe", "ex.test"), "joe@ex.test")
        self.assertEqual(maildrop.qualify("a@b", "ex.test"), "a@b")
        self.assertEqual(maildrop.qualify("", "ex.test"), "")


class PickupTestCase(unittest.TestCase):
    delivery_class: type[FakeDelivery] = FakeDelivery

    def setUp(self) -> None:
        self.queue = os.path.abspath(self.mktemp())
        os.makedirs(self.queue)
        maildrop.ensure_maildrop(self.queue)
        self.delivery = self.delivery_class()
        self.maillog = MailLog(None, "mail.ex.test", now=lambda: 0.0)
        submit = maildrop.local_submitter(self.delivery, self.maillog, "mail.ex.test", "ex.test",
                                          now=lambda: 0.0)
        self.pickup = maildrop.Pickup(self.queue, submit, self.maillog, threads.inline)


class PickupTests(PickupTestCase):
    def test_delivers_bounces_and_keeps_temporary(self) -> None:
        """Each recipient is resolved like SMTP RCPT: delivered (with a pickup Received: line and
        @myorigin added), 5xx logged as bounced and dropped, 4xx kept in the file for later."""
        queue_id = maildrop.drop(self.queue, "joe", ["boss", "ghost", "later"], b"S: x\n\nb\n")
        self.successResultOf(self.pickup.scan())
        [(data, sender, pairs)] = self.delivery.delivered
        self.assertEqual((sender, pairs), ("joe@ex.test", [("boss@ex.test", "boss")]))
        self.assertTrue(data.startswith(b"Received: by mail.ex.test (mailsuite, from userid "))
        log = "\n".join(self.maillog.lines)
        self.assertIn(f"{queue_id}: uid={os.getuid()} from=<joe>", log)
        self.assertIn("to=<ghost@ex.test>, relay=none", log)
        self.assertIn("status=bounced", log)
        self.assertEqual(maildrop.read(self.queue, queue_id).recipients, ["later"])
        self.assertEqual(maildrop.ids(self.queue), [queue_id])

    def test_opened_elsewhere_skips_what_cannot_be_opened(self) -> None:
        """With ``open_dropped`` (the master opens the files of a privilege-separated
        server): a file gone meanwhile is skipped, one refused is left in place, and the scan
        goes on to the next."""
        gone = maildrop.drop(self.queue, "joe", ["boss"], b"gone\n")
        refused = maildrop.drop(self.queue, "joe", ["boss"], b"linked\n")
        good = maildrop.drop(self.queue, "joe", ["boss"], b"fine\n")

        def open_dropped(queue_id: str) -> defer.Deferred[int]:
            if queue_id == gone:
                return defer.fail(FileNotFoundError(queue_id))
            if queue_id == refused:
                return defer.fail(ValueError("two links"))
            return defer.succeed(os.open(os.path.join(self.queue, "maildrop", queue_id),
                                         os.O_RDONLY))

        self.pickup.open_dropped = open_dropped
        self.successResultOf(self.pickup.scan())
        self.assertEqual([data.split(b"\n")[-2] for data, _, _ in self.delivery.delivered],
                         [b"fine"])
        self.assertEqual(sorted(maildrop.ids(self.queue)), sorted([gone, refused]))
        self.assertNotIn(good, maildrop.ids(self.queue))

    def test_done_file_removed(self) -> None:
        """A message whose recipients are all handled leaves maildrop/."""
        maildrop.drop(self.queue, "joe", ["boss"], b"x\n")
        self.successResultOf(self.pickup.scan())
        self.assertEqual(maildrop.ids(self.queue), [])



class BouncingDelivery(FakeDelivery):
    """Local delivery where ``prog`` is a |command that exits 1 (a permanent failure)."""

    def deliver(self, data: bytes, sender: str, pairs: list[Any], queue_id: str,
                arrival: float) -> defer.Deferred[None]:
        if pairs[0][1] == "prog":
            error = DeliveryFailed("1 of 1 copies not written")
            error.failures = [Failure(TargetFailed(True, "5.3.0", "Command died with status 1"))]
            return defer.fail(error)
        return super().deliver(data, sender, pairs, queue_id, arrival)


class PickupBounceTests(PickupTestCase):
    delivery_class = BouncingDelivery

    def test_one_bounce_to_the_sender(self) -> None:
        """An unknown user and a failing |command are reported in one bounce to the qualified
        sender (bounce(8)), and leave the maildrop; the good recipient is delivered."""
        self.delivery.queue = FakeQueue()
        queue_id = maildrop.drop(self.queue, "joe", ["ghost", "boss", "prog"], b"S: x\n\nb\n")
        self.successResultOf(self.pickup.scan())
        [(env, kind, entries)] = self.delivery.queue.notices
        self.assertEqual((env.queue_id, env.sender, kind), (queue_id, "joe@ex.test", "failed"))
        self.assertEqual([(e.recipient.address, e.dsn) for e in entries],
                         [("ghost@ex.test", "5.1.1"), ("prog@ex.test", "5.3.0")])
        self.assertEqual(len(self.delivery.delivered), 1)
        self.assertEqual(maildrop.ids(self.queue), [])

    def test_unwritten_bounce_keeps_the_recipient(self) -> None:
        """A bounce that cannot be queued keeps its recipients in maildrop/ for the next scan."""
        self.delivery.queue = FakeQueue(fail=True)
        queue_id = maildrop.drop(self.queue, "joe", ["ghost", "boss"], b"S: x\n\nb\n")
        self.successResultOf(self.pickup.scan())
        self.assertEqual(maildrop.read(self.queue, queue_id).recipients, ["ghost"])
        self.flushLoggedErrors(OSError)


ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UnprivilegedDropTests(unittest.TestCase):
    """drop() as a normal user, who may create files in the 1733 maildrop/ but not read it."""

    if os.geteuid() != 0:
        skip = "needs root to run the dropping child as nobody"

    def setUp(self) -> None:
        self.top = tempfile.mkdtemp(prefix="ms-drop-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.top, True)
        os.chmod(self.top, 0o755)
        self.queue = os.path.join(self.top, "queue")
        maildrop.ensure_maildrop(self.queue)

    def drop_as_nobody(self, data: bytes) -> subprocess.CompletedProcess[bytes]:
        code = ("import sys; from mailsuite.mta import maildrop;"
                " print(maildrop.drop(sys.argv[1], 'nobody', ['boss'], sys.stdin.buffer.read()))")
        return subprocess.run(
            [sys.executable, "-c", code, self.queue], input=data, capture_output=True,
            timeout=60, check=False, user=65534, group=65534, extra_groups=[],
            env={"PYTHONPATH": ROOT_DIR, "PATH": "/usr/bin:/bin"}, cwd="/")

    def test_drop_succeeds_and_is_the_users(self) -> None:
        """The message is written, made durable and reported as queued (the fsync of maildrop/
        itself is refused to a user who may not read it: EACCES), with the user's uid."""
        p = self.drop_as_nobody(b"Subject: s\n\nfrom nobody\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        queue_id = p.stdout.decode().strip()
        self.assertEqual(maildrop.ids(self.queue), [queue_id])
        dropped = maildrop.read(self.queue, queue_id)
        self.assertEqual((dropped.uid, dropped.data), (65534, b"Subject: s\n\nfrom nobody\n"))

    def test_failure_leaves_nothing(self) -> None:
        """Where the user may not write maildrop/, drop() fails and leaves no file behind (the
        command then exits non-zero: never a message both refused and delivered)."""
        os.chmod(maildrop.maildrop_dir(self.queue), 0o1730)
        p = self.drop_as_nobody(b"x\n")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"PermissionError", p.stderr)
        self.assertEqual(os.listdir(maildrop.maildrop_dir(self.queue)), [])
