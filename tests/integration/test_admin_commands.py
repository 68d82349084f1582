"""``mailsuite queue`` and ``mailsuite config`` against the real daemon and a receiving SMTP
server (tests/fakemx.py on this test's reactor; the blocking parts run in threads): flush
makes a deferred message be retried at once, hold keeps one from flush, release sends it, show
prints it, and ``mailsuite config`` shows the running site's settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests import fakemx
from tests.integration.harness import ROOT
from tests.integration.test_commands import MTASite, wait_for

FAR = "far@remote.test"


def admin(site: MTASite, *args: str) -> subprocess.CompletedProcess:
    """(blocking) The ``mailsuite`` command with the site's mail.ini."""
    env = dict(os.environ, PYTHONPATH=ROOT, MAILSUITE_CONFIG=site.config)
    return subprocess.run([sys.executable, "-m", "mailsuite.admin", *args], env=env,
                          capture_output=True, check=False, timeout=60)


def ok(site: MTASite, *args: str) -> str:
    p = admin(site, *args)
    assert p.returncode == 0, (args, p.returncode, p.stderr)
    return (p.stdout + p.stderr).decode()


class QueueAgainstDaemonTests(unittest.TestCase):
    timeout = 180

    def setUp(self) -> None:
        """A receiving server on 127.0.0.1 that defers FAR (451) until a test says otherwise;
        the site relays everything to it, retrying only after an hour."""
        self.port = fakemx.free_port_on(["127.0.0.1"])
        self.behaviour = fakemx.Behaviour(rcpt={FAR: "451 4.3.0 try again later"})
        sinks, ports = fakemx.start_sinks({"127.0.0.1": self.behaviour}, self.port)
        self.mx = sinks["127.0.0.1"]
        for p in ports:
            self.addCleanup(p.stopListening)
        self.site = MTASite(self, "postmaster: boss\n", mail_extra=(
            f"relayhost = [127.0.0.1]:{self.port}\n"
            "minimal_backoff_time = 1h\nmaximal_backoff_time = 1h\n"))

    def deferred_message(self, subject: str) -> str:
        """(blocking) Start the site, send one message to FAR; its id once it is deferred."""
        if self.site.process is None:
            self.site.start()
        p = self.site.run("sendmail", "-i", FAR, stdin=f"Subject: {subject}\n\n{subject}\n"
                          .encode())
        assert p.returncode == 0, p.stderr
        pattern = rf"(\w+): to=<{FAR}>.*status=deferred"
        wait_for("the first attempt", lambda: re.search(pattern, self.site.maillog_text()))
        match = re.search(pattern, self.site.maillog_text())
        assert match is not None
        return match.group(1)

    def delivered(self, subject: str) -> Any:
        return threads.deferToThread(wait_for, f"{subject} at the MX", lambda: any(
            f"Subject: {subject}".encode() in r.data for r in self.mx.received))

    @defer.inlineCallbacks
    def test_flush_retries_deferred_mail_at_once(self) -> None:
        """A message deferred with an hour's backoff (the listing says why): ``mailsuite queue
        flush`` has the running daemon try it now (the MX, accepting now, gets it within
        seconds), and the queue is then empty."""
        qid = yield threads.deferToThread(self.deferred_message, "flushed")
        listing = yield threads.deferToThread(ok, self.site, "queue", "list")
        self.assertIn(qid, listing)
        self.assertNotIn(f"{qid}*", listing)  # tried once
        self.assertIn("try again later", listing)  # why, under its line
        self.behaviour.rcpt = {}
        yield threads.deferToThread(ok, self.site, "queue", "flush")
        yield self.delivered("flushed")
        yield threads.deferToThread(wait_for, "status=sent", lambda: re.search(
            rf"{qid}: to=<{FAR}>.*status=sent", self.site.maillog_text()))
        listing = yield threads.deferToThread(ok, self.site, "queue")
        self.assertIn("Mail queue is empty", listing)

    @defer.inlineCallbacks
    def test_hold_release_show_delete_while_running(self) -> None:
        """With the daemon running: hold puts deferred mail on hold (``ID!``; flush does not
        try it: no new connection to the MX); show prints its envelope and body; release
        sends it at once; delete deferred removes the other deferred message only."""
        qid = yield threads.deferToThread(self.deferred_message, "held")
        out = yield threads.deferToThread(ok, self.site, "queue", "hold", qid)
        self.assertIn("mailsuite queue: Placed on hold: 1 message", out)
        self.assertIn(f"{qid}!", (yield threads.deferToThread(ok, self.site, "queue", "list")))
        self.behaviour.rcpt = {}
        connections = self.mx.connections
        yield threads.deferToThread(ok, self.site, "queue", "flush")
        shown = yield threads.deferToThread(ok, self.site, "queue", "show", qid)
        self.assertIn(f"*** ENVELOPE RECORDS hold/{qid} ***", shown)
        self.assertIn("Subject: held\n", shown)
        self.assertIn(f"recipient: {FAR}", shown)
        self.assertEqual(self.mx.connections, connections)
        out = yield threads.deferToThread(ok, self.site, "queue", "release", qid)
        self.assertIn("Released from hold: 1 message", out)
        yield self.delivered("held")

        self.behaviour.rcpt = {FAR: "451 4.3.0 try again later"}
        other = yield threads.deferToThread(self.deferred_message, "dropped")
        out = yield threads.deferToThread(ok, self.site, "queue", "delete", "deferred")
        self.assertIn("mailsuite queue: Deleted: 1 message", out)
        listing = yield threads.deferToThread(ok, self.site, "queue", "list")
        self.assertNotIn(other, listing)
        self.assertIn(f"{other}: removed", self.site.maillog_text())


class ConfigOfASiteTests(unittest.TestCase):
    def test_config_shows_the_site(self) -> None:
        """``mailsuite config`` on a real site's file: its values expanded, exit 0; a key it
        does not know: 64 and postconf's warning; a broken file: 78 naming file and key."""
        site = MTASite(self, "postmaster: boss\n")
        out = ok(site, "config", "mydestination", "queue_directory", "listen.smtp")
        self.assertEqual(out.splitlines(), [
            "mydestination = mail.example.test, example.test, localhost",
            f"queue_directory = {site.dir}/queue", f"listen.smtp = {site.ports['smtp']}"])
        p = admin(site, "config", "mydestinaton")
        self.assertEqual(p.returncode, 64)
        self.assertIn(b"mailsuite config: warning: mydestinaton: unknown parameter", p.stderr)
        with open(site.config, "a") as f:
            f.write("[bogus]\n")
        p = admin(site, "config")
        self.assertEqual((p.returncode, p.stdout), (78, b""))
        self.assertIn(f"{site.config}: [bogus]: unknown section".encode(), p.stderr)
