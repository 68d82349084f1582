"""Metrics for Prometheus and a health check: ``[listen] metrics = 127.0.0.1:9154`` (off by
default) serves ``/metrics`` (prometheus_client's text format) and ``/health``.

The counters come from the maillog's lines, as the exporters of Postfix and Dovecot read
them (kumina's postfix_exporter, for one): every event worth counting is already one line of
a known shape (``NOQUEUE: reject: RCPT from ...``, ``status=sent``, ``Aborted login``), so one
observer of ``MailLog.write`` counts what the log says, and the figures cannot disagree with
it. The gauges (sessions open, messages queued) are read from the running parts at each scrape.

Under privilege separation the network process serves them: it runs every listener, the
logins before the hand-over, the pipeline and the queue, and writes those lines.
"""

from __future__ import annotations

import os
import re
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from twisted.web import resource, server

#: delivery delays (seconds from arrival to the delivery's outcome)
DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
                 3600.0, 14400.0, 86400.0)

_REJECT = re.compile(r"^(?:\w+|NOQUEUE): reject: (\S+) from \S+: (\d{3})(?: (\d\.\d+\.\d+))?"
                     r" ?(.*)$")
#: a delivery line of ours: QUEUEID: to=<...>, ..., delay=N[, delays=...], dsn=X, status=WORD
#: (the address before it may hold anything a sender wrote: the first match after the last
#: ``to=<...>`` is ours)
_STATUS = re.compile(r", delay=([\d.]+)(?:, delays=[\d./]+)?, dsn=\d\.\d{1,3}\.\d{1,3},"
                     r" status=(sent|deferred|bounced|expired)\b")
#: the programs whose lines are deliveries (Postfix's transports)
_TRANSPORTS = frozenset({"local", "smtp", "lmtp", "virtual", "pipe", "error", "discard"})
_MILTER = re.compile(r"^\w+: milter-(reject|discard|hold): ")
_CLEANUP = re.compile(r"^\w+: (reject|hold|discard|warning|redirect|filter): ")
#: what a reject line's text says, first match wins: its ``reason`` label
_REASONS = (
    ("relay_denied", "Relay access denied"),
    ("unknown_recipient", "User unknown"),
    ("dnsbl", "blocked using"),
    ("greylisted", "reylist"),
    ("pregreet", "Protocol error"),
    ("size", "message size"),
    ("client", "Client host rejected"),
    ("helo", "Helo command rejected"),
    ("sender", "Sender address rejected"),
    ("recipient", "Recipient address rejected"),
    ("limit", "Too many"),
)


def reason_of(text: str) -> str:
    for reason, needle in _REASONS:
        if needle in text:
            return reason
    return "other"


class Metrics:
    """The counters of one process, in a registry of their own (not prometheus_client's
    global one: a test, or a second server in a process, starts from zero)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        self.started = now()
        self.now = now
        r = self.registry
        self.connects = Counter("mailsuite_smtpd_connects", "SMTP connections taken, by service",
                                ["service"], registry=r)
        self.rejects = Counter("mailsuite_smtpd_rejects",
                               "SMTP commands rejected, by stage, reply code and reason",
                               ["stage", "code", "reason"], registry=r)
        self.deliveries = Counter("mailsuite_deliveries",
                                  "Delivery outcomes per recipient, by transport and status",
                                  ["transport", "status"], registry=r)
        self.delay = Histogram("mailsuite_delivery_delay_seconds",
                               "Seconds from a message's arrival to a delivery's outcome",
                               ["transport"], buckets=DELAY_BUCKETS, registry=r)
        self.logins = Counter("mailsuite_logins", "Password logins, by protocol and result",
                              ["protocol", "result"], registry=r)
        self.verdicts = Counter("mailsuite_filter_verdicts",
                                "Decisions of the filters (milters, content checks, signing)",
                                ["filter", "verdict"], registry=r)
        self.sources: list[Callable[[], Iterator[GaugeMetricFamily]]] = []
        r.register(_Gauges(self))

    # -- the maillog's lines --
    def observe(self, program: str, text: str) -> None:
        """One maillog line (``MailLog.write``'s program and text): counted if it says so."""
        if program.endswith("smtpd") or program == "postscreen":
            self._smtpd(program, text)
        elif program in ("imap-login", "pop3-login"):
            protocol = program[:4]
            if text.startswith("Login: "):
                self.logins.labels(protocol, "ok").inc()
            elif text.startswith("Aborted login (auth failed"):
                self.logins.labels(protocol, "failed").inc()
        elif program == "cleanup":
            m = _MILTER.match(text) or _CLEANUP.match(text)
            if m is not None:
                kind = "milter" if text.split(": ", 2)[1].startswith("milter-") else "checks"
                self.verdicts.labels(kind, m.group(1)).inc()
        elif program == "dkim" and "DKIM-Signature field added" in text:
            self.verdicts.labels("dkim", "signed").inc()
        transport = program.rsplit("/", 1)[-1]
        if transport in _TRANSPORTS and ", status=" in text:
            m = _STATUS.search(text, text.rfind(">, ") + 1)
            if m is not None:  # (labels from fixed sets only: no series a client can make)
                self.deliveries.labels(transport, m.group(2)).inc()
                self.delay.labels(transport).observe(float(m.group(1)))

    def _smtpd(self, program: str, text: str) -> None:
        if text.startswith("connect from "):
            self.connects.labels(program.split("/")[0] if "/" in program else "smtp").inc()
            return
        m = _REJECT.match(text)
        if m is not None:
            self.rejects.labels(m.group(1), m.group(2), reason_of(m.group(4))).inc()
            return
        m = _MILTER.match(text)
        if m is not None:
            self.verdicts.labels("milter", m.group(1)).inc()
            return
        if text.startswith("warning: ") and "authentication failed" in text:
            self.logins.labels("smtp", "failed").inc()
        elif ", sasl_username=" in text and ": client=" in text:
            self.logins.labels("smtp", "ok").inc()

    # -- gauges of the running parts --
    def watch(self, limits: Any = None, queue: Any = None, services: tuple[str, ...] = ()) -> None:
        """Sessions open per service (``limits``: mailsuite.limits.Limits; ``services`` are
        shown at 0 when none is open) and messages in the queue (``queue``:
        mailsuite.mta.queue.Queue), read at each scrape."""
        if limits is not None:
            self.sources.append(lambda: _sessions(limits, services))
        if queue is not None:
            self.sources.append(lambda: _queued(queue))


class _Gauges:
    """A collector of the gauges ``Metrics.watch`` named, and the uptime."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("mailsuite_uptime_seconds", "Seconds since this process started")
        up.add_metric([], self.metrics.now() - self.metrics.started)
        yield up
        for source in self.metrics.sources:
            yield from source()


def _sessions(limits: Any, services: tuple[str, ...]) -> Iterator[GaugeMetricFamily]:
    g = GaugeMetricFamily("mailsuite_sessions", "Connections open, by service", labels=["service"])
    counts = {str(name): count for name, count in limits.sessions.items()}
    for name in sorted(set(services) | set(counts)):
        g.add_metric([name], counts.get(name, 0))
    yield g


def _queued(queue: Any) -> Iterator[GaugeMetricFamily]:
    """Messages the queue manager holds (being delivered: ``active``; waiting for their next
    try: ``deferred``) and those in the hold queue (a directory count: the hold queue is the
    admin's, small)."""
    g = GaugeMetricFamily("mailsuite_queue_messages", "Messages in the queue, by state",
                          labels=["state"])
    running = len(queue._running)
    g.add_metric(["active"], running)
    g.add_metric(["deferred"], max(0, len(queue.envelopes) - running))
    try:
        with os.scandir(queue.directory.hold) as entries:
            held = sum(1 for e in entries if not e.name.startswith("."))
    except OSError:
        held = 0
    g.add_metric(["hold"], held)
    yield g


class Exposition(resource.Resource):
    """``/metrics``: the registry in Prometheus's text format, made on the reactor thread
    (prometheus_client's own MetricsResource runs it in a pool thread, where the gauges would
    read the reactor's objects while it changes them)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class Health(resource.Resource):
    """``/health``: 200 ``ok`` while the process serves (for load balancers and monitors)."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return f"ok uptime={int(self.metrics.now() - self.metrics.started)}\n".encode()


#: the counters of each maillog (one set for the life of the process, across reloads)
_OF: weakref.WeakKeyDictionary[Any, Metrics] = weakref.WeakKeyDictionary()


def serve(maillog: Any, limits: Any = None, queue: Any = None,
          services: tuple[str, ...] = ()) -> server.Site:
    """The site of ``[listen] metrics``, counting ``maillog``'s lines from the first call on;
    a reload (mailsuite.reload builds the parts again) keeps the counters and reads the gauges
    from the new parts."""
    metrics = _OF.get(maillog)
    if metrics is None:
        metrics = _OF[maillog] = Metrics()
        maillog.observers.append(metrics.observe)
    metrics.sources.clear()
    # (the sessions of 993 and 995 are counted as imap's and pop3's, as the limits count them)
    metrics.watch(limits, queue, tuple(s for s in services if s not in ("imaps", "pop3s")))
    return site(metrics)


def site(metrics: Metrics) -> server.Site:
    """The metrics listener's site: ``/metrics`` and ``/health``, nothing else (404)."""
    root = resource.Resource()
    root.putChild(b"metrics", Exposition(metrics.registry))
    root.putChild(b"health", Health(metrics))
    made = server.Site(root)
    made.noisy = False
    return made
