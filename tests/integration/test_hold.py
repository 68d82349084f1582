"""The hold queue against the real daemon (issue 12 item 6): a message a filter holds (a tiny
test Stage, holdstage/sitecustomize.py) is taken (250) but not delivered, ``mailq`` shows it
with ``!``, it stays held across a restart and a kill -9, and ``mailsuite-queue -H`` delivers it
to the mbox; -h, -r, -f and -d on queued mail, with the daemon running and without."""

from __future__ import annotations

import os
import re
import smtplib
import threading
import time

from twisted.trial import unittest

from tests.integration.harness import free_port
from tests.integration.test_commands import MTASite, read, wait_for

HOLDSTAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "holdstage")


def hold_site(case: unittest.TestCase, mail_extra: str = "") -> MTASite:
    """A server (not started) whose every process has the test stage."""
    site = MTASite(case, "postmaster: boss\n", mail_extra=mail_extra)
    site.python_path = [HOLDSTAGE]
    return site


def send(site: MTASite, subject: str, to: str = "carol@example.test") -> str:
    """One message over SMTP; the queue id of its 250."""
    with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=30) as s:
        s.mail("joe@remote.test")
        s.rcpt(to)
        code, text = s.data(f"Subject: {subject}\n\nbody of {subject}\n".encode())
    assert code == 250, (code, text)
    return re.search(rb"queued as (\w+)", text).group(1).decode()  # type: ignore[union-attr]


def mailq(site: MTASite) -> str:
    return site.run("mailq").stdout.decode()


def queue(site: MTASite, *args: str) -> str:
    p = site.run("mailsuite-queue", *args)
    assert p.returncode == 0, (args, p.returncode, p.stderr)
    return (p.stdout + p.stderr).decode()


class HoldQueueTests(unittest.TestCase):
    def test_held_until_released(self) -> None:
        """A held message: 250, not delivered (a later one is), ``ID!`` in mailq with the
        reason, whole in ``-s``; still held after a restart; -H delivers it to the mbox."""
        site = hold_site(self)
        site.start()
        qid = send(site, "HOLD-ME one")
        send(site, "plain one")
        wait_for("the plain message", lambda: "body of plain one" in read(site.inbox("carol")))
        listing = mailq(site)
        self.assertIn(f"{qid}!", listing)
        self.assertIn("(held: test stage: HOLD-ME)", listing)
        shown = queue(site, "-s", qid)
        self.assertIn(f"*** ENVELOPE RECORDS hold/{qid} ***", shown)
        self.assertIn("body of HOLD-ME one", shown)
        self.assertIn(f"{qid}: hold: test stage: HOLD-ME", site.maillog_text())
        queue(site, "-f")  # flush: held mail stays held
        site.restart()
        time.sleep(1)
        self.assertIn(f"{qid}!", mailq(site))
        self.assertNotIn("HOLD-ME", read(site.inbox("carol")))
        self.assertIn("Released from hold: 1 message", queue(site, "-H", qid))
        wait_for("the released message", lambda: "body of HOLD-ME one" in read(site.inbox("carol")))
        wait_for("an empty queue", lambda: "Mail queue is empty" in mailq(site))
        self.assertEqual(read(site.inbox("carol")).count("body of HOLD-ME one"), 1)

    def test_release_without_daemon(self) -> None:
        """-H with the daemon down changes the files; the message goes at the next start."""
        site = hold_site(self)
        site.start()
        qid = send(site, "HOLD-ME two")
        site.stop()
        self.assertIn("Released from hold: 1 message", queue(site, "-H", "ALL"))
        self.assertIn(qid, mailq(site))
        self.assertNotIn(f"{qid}!", mailq(site))
        site.start()
        wait_for("the released message", lambda: "body of HOLD-ME two" in read(site.inbox("carol")))

    def test_hold_requeue_delete_queued_mail(self) -> None:
        """With the daemon running: -h holds deferred mail (flush leaves it), -r brings it back
        (tried at once: deferred again, not held), -d ALL removes it."""
        site = hold_site(self, f"relayhost = [127.0.0.1]:{free_port()}\n"
                               "minimal_backoff_time = 1h\nmaximal_backoff_time = 1h\n")
        site.start()
        p = site.run("sendmail", "-i", "far@remote.test", stdin=b"Subject: far\n\nfar away\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        wait_for("the first attempt", lambda: "status=deferred" in site.maillog_text())
        qid = re.search(r"(\w+): to=<far@remote.test>.*status=deferred",
                        site.maillog_text()).group(1)  # type: ignore[union-attr]
        self.assertIn("Placed on hold: 1 message", queue(site, "-h", qid))
        queue(site, "-f")
        self.assertIn(f"{qid}!", mailq(site))
        self.assertIn("Requeued: 1 message", queue(site, "-r", qid))
        wait_for("a second attempt", lambda: site.maillog_text().count(
            f"{qid}: to=<far@remote.test>") == 2)
        self.assertNotIn(f"{qid}!", mailq(site))
        self.assertIn("Deleted: 1 message", queue(site, "-d", "ALL"))
        self.assertIn("Mail queue is empty", mailq(site))

    def test_kill9_while_holding(self) -> None:
        """kill -9 while messages are being held: each acknowledged one is on hold after the
        restart, none delivered, none twice; released, each reaches the mbox once."""
        site = hold_site(self)
        site.start()
        acked: list[str] = []
        stop = threading.Event()

        def sender() -> None:
            for n in range(40):
                if stop.is_set():
                    return
                try:
                    acked.append(send(site, f"HOLD-ME k{n}"))
                except (OSError, smtplib.SMTPException, AssertionError):
                    return

        t = threading.Thread(target=sender)
        t.start()
        wait_for("a first hold", lambda: len(acked) >= 3)
        site.kill9()
        stop.set()
        t.join(60)
        site.start()
        listing = mailq(site)
        held = re.findall(r"^(\w+)!", listing, re.M)
        self.assertEqual(len(held), len(set(held)))
        self.assertLessEqual(set(acked), set(held))
        self.assertNotIn("HOLD-ME", read(site.inbox("carol")))
        queue(site, "-H", "ALL")
        wait_for("every release", lambda: "Mail queue is empty" in mailq(site))
        box = read(site.inbox("carol"))
        for n in range(40):
            self.assertLessEqual(box.count(f"body of HOLD-ME k{n}\n"), 1)
        self.assertEqual(box.count("body of HOLD-ME k"), len(held))
