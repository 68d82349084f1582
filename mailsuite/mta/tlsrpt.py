"""SMTP TLS Reporting (RFC 8460): what happened to TLS per policy domain, and the daily report.

The outbound code calls :meth:`TLSReportStore.record` once per session (or per failed
MTA-STS policy fetch) with the policy domain (the recipient domain) and a :class:`TLSResult`:
``result_type`` empty for a success, else one of RESULT_TYPES (4.3). Counts are kept per UTC
day, per domain, per policy (type, policy-string, mx-host), with one failure-details entry per
(result-type, sending IP, receiving MX, receiving IP, ...). :func:`build_report` turns one
day of one domain into the JSON of 4.4; :func:`gzip_report` compresses it
(``application/tlsrpt+gzip``).

The store is kept in memory and written (atomically, in a pool thread) to
``queue_directory/tlsrpt/counts.json`` at most every FLUSH_INTERVAL seconds, when asked and at
stop: a crash loses at most that much of the counts, never the file.
"""

from __future__ import annotations

import calendar
import gzip
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailsuite.fsutil import atomic_write
from mailsuite.threads import Blocking

log = Logger()

POLICY_TYPES = ("tlsa", "sts", "no-policy-found")
#: RFC 8460 4.3: negotiation failures, then policy failures
RESULT_TYPES = (
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
    "certificate-not-trusted", "validation-failure",
    "tlsa-invalid", "dnssec-invalid", "dane-required",
    "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
)
FLUSH_INTERVAL = 60.0
STORE_DIR = "tlsrpt"
STORE_FILE = "counts.json"
#: days with data kept at most (a day whose report could not be sent is tried again)
KEEP_DAYS = 3
#: domains per day counted at most (a flood of destinations cannot grow the file for ever)
MAX_DOMAINS = 20000


@dataclass(frozen=True)
class TLSResult:
    """One session's (or one policy fetch's) result, RFC 8460 4.4's fields. ``policy_string``
    and ``mx_host`` describe the policy applied (the MTA-STS file's lines and mx patterns, or
    the TLSA records); ``result_type`` '' is a success."""

    policy_type: str = "no-policy-found"
    policy_string: tuple[str, ...] = ()
    mx_host: tuple[str, ...] = ()
    result_type: str = ""
    sending_mta_ip: str = ""
    receiving_mx_hostname: str = ""
    receiving_mx_helo: str = ""
    receiving_ip: str = ""
    failure_reason_code: str = ""
    additional_information: str = ""

    def __post_init__(self) -> None:
        if self.policy_type not in POLICY_TYPES:
            raise ValueError(f"policy type {self.policy_type!r} is not one of {POLICY_TYPES}")
        if self.result_type and self.result_type not in RESULT_TYPES:
            raise ValueError(f"result type {self.result_type!r} is not RFC 8460's")

    @classmethod
    def for_sts(cls, policy: Any, **fields: Any) -> TLSResult:
        """A result under an MTA-STS policy (mailsuite.mta.mtasts.StsPolicy); None: the
        policy could not be had (its fetch failed: policy-type sts, no policy-string)."""
        if policy is None:
            return cls("sts", **fields)
        return cls("sts", tuple(policy.lines), tuple(policy.mx), **fields)

    def policy_key(self) -> str:
        return json.dumps([self.policy_type, list(self.policy_string), list(self.mx_host)])

    def detail_key(self) -> str:
        fields = asdict(self)
        for name in ("policy_type", "policy_string", "mx_host"):
            del fields[name]
        return json.dumps(fields, sort_keys=True)


def utc_day(seconds: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def day_range(day: str) -> tuple[float, float]:
    """(start, end) epoch seconds of a UTC day (end: the next day's start)."""
    start = float(calendar.timegm(time.strptime(day, "%Y-%m-%d")))
    return start, start + 86400.0


class TLSReportStore:
    """Counts per day -> domain -> policy -> {ok, fail, details}, durable in ``path``."""

    def __init__(self, path: str, clock: Any, blocking: Blocking) -> None:
        self.path = path
        self.clock = clock
        self.blocking = blocking
        self.days: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        self._timer: Any = None
        self._writing: defer.Deferred[None] | None = None
        self._again = False

    @defer.inlineCallbacks
    def load(self) -> Any:
        if not self.path:
            return
        loaded = yield self.blocking(_read_json, self.path)
        if isinstance(loaded, dict) and isinstance(loaded.get("days"), dict):
            self._merge(loaded["days"])

    def _merge(self, days: dict[str, Any]) -> None:
        """Add counts read from the file to those recorded since the start."""
        for day, domains in days.items():
            for domain, policies in domains.items():
                mine = self.days.setdefault(day, {}).setdefault(domain, {})
                for key, entry in policies.items():
                    into = mine.setdefault(key, {"ok": 0, "fail": 0, "details": {}})
                    into["ok"] += int(entry.get("ok", 0))
                    into["fail"] += int(entry.get("fail", 0))
                    for detail, n in entry.get("details", {}).items():
                        into["details"][detail] = into["details"].get(detail, 0) + int(n)

    def record(self, policy_domain: str, result: TLSResult) -> None:
        """Count one result for ``policy_domain`` today (UTC). Cheap: no I/O here."""
        domain = policy_domain.rstrip(".").lower()
        day = self.days.setdefault(utc_day(self.clock.seconds()), {})
        if domain not in day and len(day) >= MAX_DOMAINS:
            return
        policies = day.setdefault(domain, {})
        entry = policies.setdefault(result.policy_key(), {"ok": 0, "fail": 0, "details": {}})
        if result.result_type:
            entry["fail"] += 1
            key = result.detail_key()
            entry["details"][key] = entry["details"].get(key, 0) + 1
        else:
            entry["ok"] += 1
        self._schedule()

    def _schedule(self) -> None:
        if self.path and self._timer is None:
            self._timer = self.clock.callLater(FLUSH_INTERVAL, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> defer.Deferred[None]:
        """Write the counts now (one write at a time; a write asked meanwhile follows)."""
        if not self.path:
            return defer.succeed(None)
        if self._writing is not None:
            self._again = True
            return self._writing
        data = json.dumps({"version": 1, "days": self.days}).encode("utf-8")
        d = self.blocking(_write, self.path, data)
        d.addErrback(lambda f: log.failure("TLS-RPT counts {p} not written", f, p=self.path))
        self._writing = d

        def written(_: Any) -> Any:
            self._writing = None
            if self._again:
                self._again = False
                return self.flush()
            return None

        return d.addCallback(written)

    def stop(self) -> defer.Deferred[None]:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return self.flush()

    def closed_days(self) -> list[str]:
        """The days before today (UTC) that have counts: ready to be reported."""
        today = utc_day(self.clock.seconds())
        return sorted(day for day in self.days if day < today)

    def forget(self, day: str, domain: str | None = None) -> None:
        """Drop a reported day (or one domain of it)."""
        if domain is None:
            self.days.pop(day, None)
        else:
            self.days.get(day, {}).pop(domain, None)
            if not self.days.get(day, True):
                self.days.pop(day, None)
        self._schedule()


def sts_fetch_reporter(store: TLSReportStore) -> Callable[[str, Any, str, str], None]:
    """The ``report`` of mailsuite.mta.mtastscache.MtaSts: a failed policy fetch counts as a
    failure of policy type sts (with the cached policy, if one was applied)."""

    def report(domain: str, policy: Any, result_type: str, text: str) -> None:
        store.record(domain, TLSResult.for_sts(policy, result_type=result_type))

    return report


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warn("TLS-RPT counts {path} unreadable, starting empty: {e}", path=path, e=e)
        return None


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    atomic_write(path, data)


def store_path(queue_directory: str) -> str:
    return os.path.join(queue_directory, STORE_DIR, STORE_FILE)


def build_report(day: str, domain: str, policies: dict[str, dict[str, Any]], organization: str,
                 contact: str, report_id: str | None = None) -> dict[str, Any]:
    """RFC 8460 4.4's JSON object for one policy domain and one UTC day."""
    start, end = day_range(day)
    out = []
    for key, entry in sorted(policies.items()):
        policy_type, policy_string, mx_host = json.loads(key)
        policy: dict[str, Any] = {"policy-type": policy_type, "policy-domain": domain}
        if policy_string:
            policy["policy-string"] = policy_string
        if mx_host:
            policy["mx-host"] = mx_host
        item: dict[str, Any] = {
            "policy": policy,
            "summary": {"total-successful-session-count": entry["ok"],
                        "total-failure-session-count": entry["fail"]},
        }
        details = [_detail(json.loads(k), n) for k, n in sorted(entry["details"].items())]
        if details:
            item["failure-details"] = details
        out.append(item)
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": _stamp(start), "end-datetime": _stamp(end - 1)},
        "contact-info": contact,
        "report-id": report_id or f"{day}T00:00:00Z_{domain}_{uuid.uuid4()}",
        "policies": out,
    }


def _detail(fields: dict[str, str], count: int) -> dict[str, Any]:
    names = {"result_type": "result-type", "sending_mta_ip": "sending-mta-ip",
             "receiving_mx_hostname": "receiving-mx-hostname",
             "receiving_mx_helo": "receiving-mx-helo", "receiving_ip": "receiving-ip",
             "failure_reason_code": "failure-reason-code",
             "additional_information": "additional-information"}
    detail: dict[str, Any] = {names[k]: v for k, v in fields.items() if v}
    detail["failed-session-count"] = count
    return detail


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def gzip_report(report: dict[str, Any]) -> bytes:
    """The report as ``application/tlsrpt+gzip`` (mtime 0: the same report, the same bytes)."""
    return gzip.compress(json.dumps(report, indent=1).encode("utf-8"), mtime=0)
