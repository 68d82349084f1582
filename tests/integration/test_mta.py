"""The real service as an MTA: mail to other domains through DNS MX (a twisted.names server on
127.0.0.1) to receiving SMTP servers on 127.0.0.2-3 that accept, defer and reject; bounces;
SIGKILL in the middle of deliveries; open-relay tricks with swaks.

The fake Internet runs on this process's reactor, so every client here runs in a thread or a
subprocess (the tests return Deferreds).
"""

from __future__ import annotations

import contextlib
import os
import smtplib
import time
from typing import Any

from twisted.internet import defer, reactor, task, threads, utils
from twisted.trial import unittest

from tests import fakemx
from tests.integration.harness import Site
from tests.integration.test_end_to_end import message

WAIT = 20.0


class MTACase(unittest.TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.port = fakemx.free_port_on(["127.0.0.2", "127.0.0.3"])
        records = fakemx.zone(
            {"remote.test": [(10, "mx1.remote.test"), (20, "mx2.remote.test")],
             "nomail.test": [(0, ".")]},
            {"mx1.remote.test": "127.0.0.2", "mx2.remote.test": "127.0.0.3"})
        dns_port, _, ports = fakemx.start_dns(records)
        for p in ports:
            self.addCleanup(p.stopListening)
        self.dns = f"127.0.0.1:{dns_port}"
        self.mx1 = fakemx.Behaviour(greeting="421 4.3.2 mx1 is busy")
        self.mx2 = fakemx.Behaviour(
            rcpt={"gone@remote.test": "550 5.1.1 <gone@remote.test>: no such user"})
        self.sinks: dict[str, fakemx.SinkFactory] = {}
        self.sink_ports: list[Any] = []

    def start_sinks(self) -> None:
        self.sinks, self.sink_ports = fakemx.start_sinks(
            {"127.0.0.2": self.mx1, "127.0.0.3": self.mx2}, self.port)
        for p in self.sink_ports:
            self.addCleanup(p.stopListening)

    def stop_sinks(self) -> defer.Deferred[Any]:
        ports, self.sink_ports = self.sink_ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def site(self, trusted: bool = True) -> Site:
        extra = (f"dns_resolver = {self.dns}\nsmtp_port = {self.port}\n"
                 "minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n")
        if trusted:
            extra += "mynetworks = 127.0.0.0/8\n"
        site = Site(self, mail_extra=extra)
        site.start()
        return site

    def send(self, site: Site, rcpts: list[str], subject: str,
             sender: str = "boss@example.test") -> defer.Deferred[Any]:
        def blocking() -> Any:
            with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=15) as s:
                return s.sendmail(sender, rcpts, message(subject, "hello\n.dot line\n",
                                                         sender=sender, to=rcpts[0]))
        return threads.deferToThread(blocking)

    @defer.inlineCallbacks
    def wait_for(self, predicate: Any, what: str) -> Any:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if predicate():
                return
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.fail(f"timed out waiting for {what}")

    def inbox(self, site: Site, user: str) -> bytes:
        try:
            with open(site.inbox(user), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def queue_files(self, site: Site) -> list[str]:
        path = os.path.join(site.dir, "queue", "active")
        return sorted(os.listdir(path)) if os.path.isdir(path) else []


class RelayTests(MTACase):
    @defer.inlineCallbacks
    def test_mx_delivery_bounce_and_maillog(self) -> None:
        """A client in mynetworks relays: mx1 (421) is skipped, mx2 takes ok@; gone@ gets 550
        and the sender (a local user) receives an RFC 3464 bounce; one queue id throughout."""
        self.start_sinks()
        site = self.site()
        yield self.send(site, ["ok@remote.test", "gone@remote.test"], "relay one")
        yield self.wait_for(lambda: self.sinks["127.0.0.3"].received, "delivery at mx2")
        got = self.sinks["127.0.0.3"].received[0]
        self.assertEqual(got.recipients, ["ok@remote.test"])
        self.assertIn(b"\n.dot line\n", got.data)
        self.assertIn(b"Subject: relay one", got.data)
        yield self.wait_for(lambda: b"Undelivered Mail Returned" in self.inbox(site, "boss"),
                            "the bounce")
        bounce = self.inbox(site, "boss")
        self.assertIn(b"multipart/report; report-type=delivery-status", bounce)
        self.assertIn(b"Final-Recipient: rfc822; gone@remote.test", bounce)
        self.assertIn(b"Status: 5.1.1", bounce)
        self.assertIn(b"Return-Path: <>", bounce)
        yield self.wait_for(lambda: not self.queue_files(site), "an empty queue")
        log = site.maillog_text()
        queue_id = got.data.split(b" id ", 1)[1].split()[0].decode()
        self.assertRegex(log, rf"smtpd\[\d+\]: {queue_id}: client=")
        self.assertRegex(log, rf"smtp\[\d+\]: {queue_id}: to=<ok@remote.test>, "
                         rf"relay=mx2.remote.test\[127.0.0.3\]:{self.port}, delay=[\d.]+, "
                         rf"delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn=2.0.0, status=sent")
        self.assertRegex(log, rf"{queue_id}: to=<gone@remote.test>, .*dsn=5.1.1, status=bounced")
        self.assertRegex(log, rf"bounce\[\d+\]: {queue_id}: sender non-delivery notification")
        self.assertRegex(log, rf"qmgr\[\d+\]: {queue_id}: removed")

    @defer.inlineCallbacks
    def test_deferred_then_delivered(self) -> None:
        """4xx: the message waits in the queue (status=deferred) and goes out on a retry."""
        self.mx2.rcpt["later@remote.test"] = "451 4.2.0 try again later"
        self.start_sinks()
        site = self.site()
        yield self.send(site, ["later@remote.test"], "deferred")
        yield self.wait_for(lambda: "status=deferred" in site.maillog_text(), "a deferral")
        self.assertEqual(len(self.queue_files(site)), 1)
        del self.mx2.rcpt["later@remote.test"]
        yield self.wait_for(lambda: self.sinks["127.0.0.3"].received, "the retry")
        yield self.wait_for(lambda: not self.queue_files(site), "an empty queue")
        self.assertEqual(len(self.sinks["127.0.0.3"].received), 1)

    @defer.inlineCallbacks
    def test_null_mx_bounces(self) -> None:
        """A domain with a null MX bounces at once (5.1.10); nothing is contacted."""
        self.start_sinks()
        site = self.site()
        yield self.send(site, ["x@nomail.test"], "null mx")
        yield self.wait_for(lambda: b"5.1.10" in self.inbox(site, "boss"), "the bounce")
        self.assertEqual(self.sinks["127.0.0.3"].connections, 0)


class CrashTests(MTACase):
    @defer.inlineCallbacks
    def test_kill9_loses_nothing_and_duplicates_nothing(self) -> None:
        """Five messages acknowledged while every MX is down, one caught mid-transfer (data
        sent, no reply): after SIGKILL and a restart each arrives exactly once, except the
        mid-transfer one, which may arrive twice (SMTP's own window), never zero times."""
        self.mx2 = fakemx.Behaviour(hang_after_data=True)
        self.start_sinks()
        site = self.site()
        yield self.send(site, ["inflight@remote.test"], "in flight")
        yield self.wait_for(lambda: self.sinks["127.0.0.3"].hung, "the hung transfer")
        yield self.stop_sinks()
        for i in range(5):
            yield self.send(site, [f"r{i}@remote.test"], f"queued {i}")
        self.assertEqual(len(self.queue_files(site)), 6)
        site.kill9()
        self.mx2 = fakemx.Behaviour()
        self.start_sinks()
        yield threads.deferToThread(site.start)
        yield self.wait_for(lambda: not self.queue_files(site), "an empty queue")
        received = [r.recipients[0] for r in self.sinks["127.0.0.3"].received]
        self.assertEqual(sorted(r for r in received if r != "inflight@remote.test"),
                         [f"r{i}@remote.test" for i in range(5)])
        self.assertEqual(received.count("inflight@remote.test"), 1)  # sent again after restart
        self.assertEqual(len(self.sinks["127.0.0.3"].hung), 0)  # the first copy died with mx2

    @defer.inlineCallbacks
    def test_kill9_during_local_burst(self) -> None:
        """Every message acknowledged with 250 before SIGKILL is in the mailbox after it."""
        self.start_sinks()
        site = self.site()
        acked = []

        def burst() -> None:
            with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=15) as s:
                for i in range(40):
                    s.sendmail("x@remote.test", ["carol@example.test"],
                               message(f"burst {i}", "b", to="carol@example.test"))
                    acked.append(i)
                    if i == 20:
                        site.kill9()
                        return

        with contextlib.suppress(smtplib.SMTPException, OSError):
            yield threads.deferToThread(burst)
        mbox = self.inbox(site, "carol")
        for i in acked:
            self.assertEqual(mbox.count(f"Subject: burst {i}\n".encode()), 1)


class OpenRelayTests(MTACase):
    TRICKS = (
        "user@remote.test",
        "user%remote.test@example.test",
        "@mx1.remote.test:user@remote.test",
        '"user@remote.test"@example.test',
        "user@remote.test@example.test",
        "user!remote.test@example.test",
        "@example.test:user@remote.test",
    )

    @defer.inlineCallbacks
    def test_swaks_tricks_never_relay(self) -> None:
        """From a client outside mynetworks, no routing trick gets mail to another domain:
        each RCPT is refused (554 5.7.1 Relay access denied, or a syntax/unknown-user error),
        nothing is queued and the receiving servers see no connection."""
        self.mx1 = fakemx.Behaviour()
        self.start_sinks()
        site = self.site(trusted=False)
        for trick in self.TRICKS:
            out, _err, code = yield utils.getProcessOutputAndValue(
                "swaks", ["--server", "127.0.0.1", "--port", str(site.ports["smtp"]),
                          "--from", "spammer@evil.test", "--to", trick, "--timeout", "15"])
            text = out.decode("utf-8", "replace")
            self.assertNotEqual(code, 0, f"{trick} was accepted:\n{text}")
            self.assertRegex(text, r"<\*\*\s+(554 5\.7\.1|501 5\.1\.3|550 5\.1\.1)", trick)
        self.assertEqual(self.queue_files(site), [])
        self.assertEqual([s.connections for s in self.sinks.values()], [0, 0])
        self.assertIn("Relay access denied", site.maillog_text())
