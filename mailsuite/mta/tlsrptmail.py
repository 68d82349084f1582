"""Sending the daily TLS-RPT reports (RFC 8460 3, 5): where to (``_smtp._tls`` TXT ``rua=``),
the message (5.3), and the once-a-day timer.

- :func:`parse_tlsrpt_txt`: records not starting ``v=TLSRPTv1;`` are dropped; anything but
  exactly one valid record means the domain takes no reports; ``rua=`` is a comma-separated
  list of URIs, of which ``mailto:`` ones are used (``https:`` ones are skipped: an optional
  part of the RFC not done here, logged);
- :func:`report_message`: ``multipart/report; report-type="tlsrpt"`` with the headers
  ``TLS-Report-Domain`` and ``TLS-Report-Submitter``, the Subject of 5.3, a text part and the
  ``application/tlsrpt+gzip`` attachment named ``submitter!domain!begin!end!id.json.gz``;
- :class:`TLSReportService` runs shortly after each UTC midnight (the injected clock): every
  closed day of the store is reported, domain by domain, through the server's own queue
  (``queue.submit``, as bounces are) from the null sender (a report that bounces makes no
  bounce); a domain whose TXT look-up failed for a passing reason is tried again at the next
  run, until the day is KEEP_DAYS old.
"""

from __future__ import annotations

import base64
import email.utils
import re
import secrets
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from mailsuite.mta.mtasts import txt_texts
from mailsuite.mta.mtastsfetch import TxtLookupError, lookup_txt
from mailsuite.mta.tlsrpt import (
    KEEP_DAYS,
    TLSReportStore,
    build_report,
    day_range,
    gzip_report,
    utc_day,
)

log = Logger()

#: minutes after UTC midnight the day's reports go out
RUN_OFFSET = 15 * 60.0
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


def parse_tlsrpt_record(text: str) -> list[str] | None:
    """The rua URIs of one ``v=TLSRPTv1`` record (3: grammar), None if it is invalid."""
    if not text.startswith("v=TLSRPTv1"):
        return None
    fields = text[len("v=TLSRPTv1"):].split(";")
    if fields[0].strip(" \t") or len(fields) < 2:
        return None
    fields = fields[1:]
    if not fields[-1].strip(" \t"):
        fields = fields[:-1]
    rua: list[str] | None = None
    for raw in fields:
        name, equals, value = raw.strip(" \t").partition("=")
        if not equals or not value:
            return None
        if name == "rua":
            uris = [u.strip(" \t") for u in value.split(",")]
            if rua is not None or not all(re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", u)
                                          for u in uris):
                return None
            rua = uris
        elif not _EXT_NAME.fullmatch(name):
            return None
    return rua


def parse_tlsrpt_txt(strings_per_record: Sequence[Sequence[bytes | str]]) -> list[str] | None:
    """The rua URIs of the one valid TLSRPTv1 record of an answer, else None."""
    candidates = [t for t in txt_texts(strings_per_record) if t.startswith("v=TLSRPTv1;")]
    if len(candidates) != 1:
        return None
    return parse_tlsrpt_record(candidates[0])


def mailto_addresses(uris: Sequence[str]) -> list[str]:
    """The addresses of the ``mailto:`` URIs (percent-decoded, ``?headers`` dropped)."""
    found = []
    for uri in uris:
        scheme, _, rest = uri.partition(":")
        if scheme.lower() != "mailto":
            continue
        for address in urllib.parse.unquote(rest.partition("?")[0]).split(","):
            address = address.strip()
            if re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", address):
                found.append(address)
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class ReportSettings:
    """Who we are in a report: ``organization`` (organization-name), ``contact`` (contact-info),
    ``submitter`` (our domain: TLS-Report-Submitter), ``sender`` (the From: address)."""

    organization: str
    contact: str
    submitter: str
    sender: str
    hostname: str


def report_message(settings: ReportSettings, domain: str, day: str, report: dict[str, Any],
                   now: float) -> bytes:
    """The report mail (LF line ends) for one domain and day."""
    start, end = day_range(day)
    unique = secrets.token_hex(4)
    filename = f"{settings.submitter}!{domain}!{int(start)}!{int(end) - 1}!{unique}.json.gz"
    boundary = f"tlsrpt-{secrets.token_hex(12)}"
    encoded = base64.encodebytes(gzip_report(report)).decode("ascii")
    report_id = report["report-id"]
    head = [
        f"From: {settings.sender}",
        f"Date: {email.utils.formatdate(now)}",
        f"Subject: Report Domain: {domain} Submitter: {settings.submitter}"
        f" Report-ID: <{report_id}>",
        f"TLS-Report-Domain: {domain}",
        f"TLS-Report-Submitter: {settings.submitter}",
        f"Message-Id: <tlsrpt.{unique}.{int(now)}@{settings.hostname}>",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type="tlsrpt";\n\tboundary="{boundary}"',
        "",
        "This is a multipart message in MIME format.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is an aggregate TLS report (RFC 8460) from {settings.organization}",
        f"for {domain}, {day} (UTC).",
        "",
        f"--{boundary}",
        "Content-Type: application/tlsrpt+gzip",
        "Content-Transfer-Encoding: base64",
        f'Content-Disposition: attachment;\n\tfilename="{filename}"',
        "",
        encoded.rstrip("\n"),
        f"--{boundary}--",
        "",
    ]
    return "\n".join(head).encode("utf-8")


class TLSReportService(service.Service):
    """The daily report run. ``queue``: ``submit(sender, addresses, data) -> Deferred``
    (mailsuite.mta.queue.Queue); ``names``: the MXResolver for the ``_smtp._tls`` TXT."""

    def __init__(self, store: TLSReportStore, names: Any, queue: Any, clock: Any,
                 settings: ReportSettings) -> None:
        self.store = store
        self.names = names
        self.queue = queue
        self.clock = clock
        self.settings = settings
        self._call: Any = None
        self.sent: list[tuple[str, str, list[str]]] = []  # (day, domain, addresses): for logs

    def startService(self) -> None:
        super().startService()
        d = self.store.load()
        d.addErrback(lambda f: log.failure("TLS-RPT counts not loaded", f))
        d.addCallback(lambda _: self._schedule())

    def stopService(self) -> Any:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return self.store.stop()

    def delay(self) -> float:
        """Seconds until the next run: RUN_OFFSET after the next UTC midnight."""
        now = self.clock.seconds()
        start, _ = day_range(utc_day(now))
        at = start + RUN_OFFSET
        return at - now if at > now else at + 86400.0 - now

    def _schedule(self) -> None:
        if self.running:
            self._call = self.clock.callLater(self.delay(), self._tick)

    def _tick(self) -> None:
        self._call = None
        d = self.run()
        d.addErrback(lambda f: log.failure("TLS-RPT report run failed", f))
        d.addBoth(lambda _: self._schedule())

    @defer.inlineCallbacks
    def run(self) -> Any:
        """Report every closed day; the days older than KEEP_DAYS are dropped in any case."""
        now = self.clock.seconds()
        for day in self.store.closed_days():
            for domain in sorted(self.store.days.get(day, {})):
                done = yield self._report(day, domain, now)
                if done:
                    self.store.forget(day, domain)
            if day < utc_day(now - KEEP_DAYS * 86400.0):
                self.store.forget(day)
        yield self.store.flush()

    @defer.inlineCallbacks
    def _report(self, day: str, domain: str, now: float) -> Any:
        """Send one report; True when it is done with (sent, or the domain takes none)."""
        try:
            records = yield lookup_txt(self.names, f"_smtp._tls.{domain}")
        except TxtLookupError as e:
            log.info("TLS-RPT: {e}; tried again at the next run", e=e)
            return False
        uris = parse_tlsrpt_txt(records)
        if not uris:
            return True
        addresses = mailto_addresses(uris)
        skipped = [u for u in uris if not u.lower().startswith("mailto:")]
        if skipped:
            log.info("TLS-RPT for {domain}: only mailto: rua is used, skipped {uris}",
                     domain=domain, uris=skipped)
        if not addresses:
            return True
        s = self.settings
        report = build_report(day, domain, self.store.days[day][domain], s.organization,
                              s.contact)
        message = report_message(s, domain, day, report, now)
        yield self.queue.submit("", addresses, message)
        self.sent.append((day, domain, addresses))
        return True
