"""``mailsuite queue`` (mailsuite/queueadmin.py) with no daemon running, on a queue directory of
real queue files: each verb (list, hold, release, requeue, delete, show, flush), ``ALL``,
``deferred``, several ids and ``-`` (ids from stdin), the count lines, usage errors, and the
reason of deferred mail in the listing."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import textwrap

from twisted.trial import unittest

from mailsuite import admin, queuecmd
from mailsuite.mta import maildrop
from mailsuite.mta.queuefile import QueueDirectory
from tests import test_queue
from tests.configs import real_config
from tests.test_hold import held
from tests.test_queue import MESSAGE, envelope


class QueueVerbTests(unittest.TestCase):
    """Three queued messages (one tried and deferred), one held, one in maildrop/."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.q = QueueDirectory(self.dir)
        self.q.setup()
        self.q.write(envelope("new@x.test", qid="AAAA000001"), MESSAGE)
        self.q.write(envelope("late@x.test", qid="DEFE000001"), MESSAGE)
        self.q.mark("DEFE000001", {"attempts": 2, "next": 5000.0})
        self.q.write(envelope("late2@x.test", qid="DEFE000002"), MESSAGE)
        self.q.mark("DEFE000002", {"attempts": 1, "next": 5000.0})
        self.q.write(held("b@x.test"), MESSAGE, hold="header Subject: win")
        os.makedirs(maildrop.maildrop_dir(self.dir), exist_ok=True)
        self.dropped = maildrop.drop(self.dir, "joe@example.test", ["c@x.test"], MESSAGE)
        self.ini = os.path.join(self.dir, "mail.ini")
        with open(self.ini, "w") as f:
            f.write(f"[mail]\nmyhostname = mail.example.com\nqueue_directory = {self.dir}\n")

    def queue(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", io.StringIO(stdin))
        with contextlib.redirect_stderr(err):
            code = admin.main(["queue", *argv, "-C", self.ini], out)
        return code, out.getvalue(), err.getvalue()

    def counted(self, *argv: str, stdin: str = "") -> str:
        code, out, err = self.queue(*argv, stdin=stdin)
        self.assertEqual((code, out), (0, ""), err)
        return err.strip()

    def ids(self) -> tuple[list[str], list[str]]:
        return sorted(self.q.ids()), sorted(self.q.ids(held=True))

    def test_list_is_mailq(self) -> None:
        """``list`` (and no verb) print mailq's listing: ``*`` not tried, ``!`` held."""
        code, out, _ = self.queue("list")
        mailq = io.StringIO()
        queuecmd.mailq_report(real_config(mail={"queue_directory": self.dir}), mailq)
        self.assertEqual((code, out), (0, mailq.getvalue()))
        self.assertIn("AAAA000001*", out)
        self.assertIn("HE1D000001!", out)
        self.assertIn(self.dropped, out)
        self.assertTrue(out.endswith("in 5 Requests.\n"), out)
        code, bare, _ = self.queue()
        self.assertEqual((code, bare), (0, out))

    def test_list_json_is_postqueue_j(self) -> None:
        """list --json: one JSON object a message with postqueue -j's fields; the queue
        name says active (not tried), deferred, hold or maildrop; a held message's reason
        is its recipients' delay_reason."""
        code, out, _ = self.queue("list", "--json")
        self.assertEqual(code, 0)
        objects = {o["queue_id"]: o for o in map(json.loads, out.splitlines())}
        self.assertEqual({i: o["queue_name"] for i, o in objects.items()}, {
            "AAAA000001": "active", "DEFE000001": "deferred", "DEFE000002": "deferred",
            "HE1D000001": "hold", self.dropped: "maildrop"})
        self.assertEqual(objects["HE1D000001"]["recipients"],
                         [{"address": "b@x.test", "delay_reason": "held: header Subject: win"}])
        first = objects["AAAA000001"]
        self.assertEqual((first["sender"], first["message_size"], first["arrival_time"]),
                         ("alice@remote.test", len(MESSAGE), 1000))
        self.assertEqual(first["recipients"], [{"address": "new@x.test"}])

    def test_hold_and_release(self) -> None:
        """hold ALL holds every queued message; release ID lets one out; release ALL the rest."""
        self.assertEqual(self.counted("hold", "ALL"), "mailsuite queue: Placed on hold: 3 messages")
        self.assertEqual(self.ids(), ([], ["AAAA000001", "DEFE000001", "DEFE000002",
                                           "HE1D000001"]))
        self.assertEqual(self.counted("release", "DEFE000001"),
                         "mailsuite queue: Released from hold: 1 message")
        self.assertEqual(self.ids()[0], ["DEFE000001"])
        self.assertEqual(self.counted("release", "ALL"),
                         "mailsuite queue: Released from hold: 3 messages")
        self.assertEqual(self.ids()[1], [])

    def test_deferred_is_the_tried_mail(self) -> None:
        """``deferred`` takes the queued messages tried and not delivered (Postfix's deferred
        queue): not the new one, not the held one, not maildrop/."""
        self.assertEqual(self.counted("delete", "deferred"), "mailsuite queue: Deleted: 2 messages")
        self.assertEqual(self.ids(), (["AAAA000001"], ["HE1D000001"]))
        self.assertEqual(maildrop.ids(self.dir), [self.dropped])

    def test_requeue(self) -> None:
        """requeue: the recipients to be looked up again and tried now, held mail out of hold."""
        self.assertEqual(self.counted("requeue", "DEFE000001", "HE1D000001"),
                         "mailsuite queue: Requeued: 2 messages")
        env, _ = self.q.load("DEFE000001")
        self.assertEqual((env.attempts, env.next_attempt, env.recipients[0].resolved),
                         (0, 0.0, False))
        self.assertEqual(self.ids()[1], [])

    def test_delete_several_and_from_stdin(self) -> None:
        """delete takes several ids, ``-`` the ids on stdin (each once), held and dropped mail
        too; an id not in the queue counts nothing."""
        stdin = textwrap.dedent(f"""\
            HE1D000001
            {self.dropped} AAAA000001
            """)
        self.assertEqual(self.counted("delete", "-", "NOSUCH0001", "AAAA000001", stdin=stdin),
                         "mailsuite queue: Deleted: 3 messages")
        self.assertEqual(self.ids(), (["DEFE000001", "DEFE000002"], []))
        self.assertEqual(maildrop.ids(self.dir), [])
        self.assertEqual(self.counted("delete", "ALL"), "mailsuite queue: Deleted: 2 messages")
        self.assertEqual(self.queue("list")[1], "Mail queue is empty\n")

    def test_bad_id_changes_nothing(self) -> None:
        """A queue id that is not one (a path) is a usage error before anything changes."""
        code, _, err = self.queue("delete", "AAAA000001", "../../etc/passwd")
        self.assertEqual(code, 64)
        self.assertIn("bad queue id '../../etc/passwd'", err)
        self.assertIn("AAAA000001", self.ids()[0])

    def test_show(self) -> None:
        """show ID: postcat -q's envelope records, then header and body, for queued, held and
        dropped mail; a missing one is status 66."""
        code, out, _ = self.queue("show", "DEFE000001")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("*** ENVELOPE RECORDS active/DEFE000001 ***\n"), out)
        self.assertIn("delivery_attempts: 2", out)
        self.assertIn("recipient: late@x.test [pending]\n", out)
        self.assertIn("*** MESSAGE CONTENTS active/DEFE000001 ***\n" + MESSAGE.decode(), out)
        self.assertIn("hold_reason: header Subject: win", self.queue("show", "HE1D000001")[1])
        self.assertIn("recipient: c@x.test", self.queue("show", self.dropped)[1])
        code, out, err = self.queue("show", "NOSUCH0001")
        self.assertEqual((code, out), (66, ""))
        self.assertIn("NOSUCH0001: no such message in the queue", err)

    def test_flush_without_daemon(self) -> None:
        """flush with no daemon: postqueue's "mail system is down", status 75 (try later)."""
        code, _, err = self.queue("flush")
        self.assertEqual(code, 75)
        self.assertIn("Cannot flush mail queue - mail system is down", err)

    def test_usage(self) -> None:
        """An unknown verb or a verb without its id: 64 and the usage; --help: 0, to stdout;
        -C before or after the verb."""
        self.assertEqual(self.queue("purge")[0], 64)
        code, _, err = self.queue("hold")
        self.assertEqual(code, 64)
        self.assertIn("usage: mailsuite queue hold", err)
        code, out, _ = self.queue("--help")
        self.assertEqual(code, 0)
        self.assertIn("requeue", out)
        out_ = io.StringIO()
        self.assertEqual(admin.main(["queue", "-C", self.ini, "list"], out_), 0)
        self.assertIn("AAAA000001*", out_.getvalue())


class DeferralReasonTests(unittest.TestCase):
    """Why a message waits, as Postfix's mailq shows it (QueueManagerTests' fixtures)."""

    setUp = test_queue.QueueManagerTests.setUp
    make_queue = test_queue.QueueManagerTests.make_queue
    enqueue = test_queue.QueueManagerTests.enqueue

    def test_deferred_mail_says_why(self) -> None:
        """A 4xx is recorded with the message; mailq shows it in parentheses under its line
        and show prints it; it survives a restart; requeue forgets it."""
        self.relay.script["a@x.test"] = [451, 451]
        self.enqueue(envelope("a@x.test"))
        cfg = real_config(mail={"queue_directory": self.dir.directory})
        out = io.StringIO()
        queuecmd.mailq_report(cfg, out)
        lines = out.getvalue().splitlines()
        self.assertTrue(lines[1].startswith("AB12CD34EF "), lines)
        self.assertEqual(lines[2].strip(), "(451 4.4.1 scripted)")
        shown = io.BytesIO()
        queuecmd.show(cfg, "AB12CD34EF", shown)
        self.assertIn(b"\ndeferred: 451 4.4.1 scripted\n", shown.getvalue())
        self.queue.stop()
        self.assertEqual(self.dir.load("AB12CD34EF")[0].last_reason, "451 4.4.1 scripted")
        self.assertTrue(self.dir.requeue("AB12CD34EF", 2000.0))
        self.assertEqual(self.dir.load("AB12CD34EF")[0].last_reason, "")
