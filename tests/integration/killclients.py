"""Clients for the kill rounds (test_kill_rounds.py): blocking, each run in a thread while the
test kills the server; each records what the server acknowledged and what was in flight.

``UidWatch`` looks at folders over IMAP after every restart: UIDVALIDITY never changes, a UID
is never given to two messages, and a message keeps its UID.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import random
import re
import smtplib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.integration import crashcheck
from tests.integration.harness import Site

TIMEOUT = 20
_UID = re.compile(rb"UID (\d+)")


def imap(site: Site, user: str = "boss") -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", site.ports["imap"], timeout=TIMEOUT)
    m.login(user, "secret" if user == "boss" else "hunter2")
    return m


def pop3(site: Site) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", site.ports["pop3"], timeout=TIMEOUT)
    p.user("boss")
    p.pass_("secret")
    return p


def ok(reply: tuple[str, list[object]]) -> list[object]:
    typ, data = reply
    if typ != "OK":
        raise imaplib.IMAP4.error(f"{typ} {data}")
    return data


@dataclass
class Flight:
    """What one client thread did: acknowledged (box, marker)s, and the one in flight."""

    acked: list[tuple[str, str]] = field(default_factory=list)
    in_flight: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Clients:
    """Client threads that run until the server dies (or ``count`` messages each)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.flights: list[Flight] = []

    def run(self, work: Callable[[Flight], None]) -> None:
        flight = Flight()

        def body() -> None:
            try:
                work(flight)
            except (OSError, EOFError, smtplib.SMTPException, imaplib.IMAP4.abort,
                    imaplib.IMAP4.error, poplib.error_proto) as e:
                flight.errors.append(repr(e))

        t = threading.Thread(target=body, daemon=True)
        self.flights.append(flight)
        self.threads.append(t)
        t.start()

    def join(self) -> list[Flight]:
        for t in self.threads:
            t.join(TIMEOUT + 5)
            if t.is_alive():
                raise AssertionError("a client thread still runs after the kill")
        return self.flights


def smtp_sender(site: Site, prefix: str, boxes: dict[str, str], count: int,
                lines: Callable[[], int]) -> Callable[[Flight], None]:
    """Send up to ``count`` messages to random sets of ``boxes`` ({address: box name})."""
    def work(flight: Flight) -> None:
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=TIMEOUT) as s:
            for i in range(count):
                marker = f"{prefix}n{i}"
                rcpts = random.sample(sorted(boxes), random.randint(1, len(boxes)))
                data = crashcheck.message(marker, lines(), to=rcpts[0])
                flight.in_flight = [(boxes[r], marker) for r in rcpts]
                refused = s.sendmail("kill@remote.test", rcpts, data)
                if refused:
                    raise AssertionError(refused)
                flight.acked += flight.in_flight
                flight.in_flight = []
    return work


def imap_appender(site: Site, prefix: str, folders: list[str], count: int,
                  lines: Callable[[], int]) -> Callable[[Flight], None]:
    """APPEND up to ``count`` messages to random ``folders`` of boss."""
    def work(flight: Flight) -> None:
        m = imap(site)
        for i in range(count):
            marker, folder = f"{prefix}n{i}", random.choice(folders)
            flight.in_flight = [(folder, marker)]
            ok(m.append(folder, None, None, crashcheck.message(marker, lines())))
            flight.acked += flight.in_flight
            flight.in_flight = []
        with contextlib.suppress(OSError, imaplib.IMAP4.error, imaplib.IMAP4.abort):
            m.logout()
    return work


def fetch_markers(m: imaplib.IMAP4) -> dict[int, str | None]:
    """{UID: marker} of the selected folder."""
    typ, data = m.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    if typ != "OK":
        raise AssertionError(f"FETCH: {typ} {data}")
    out: dict[int, str | None] = {}
    for item in data:
        if isinstance(item, tuple):
            found = _UID.search(item[0])
            if found is None:
                raise AssertionError(f"FETCH without UID: {item[0]!r}")
            uid = int(found.group(1))
            if uid in out:
                raise AssertionError(f"UID {uid} given twice")
            out[uid] = crashcheck.marker_of(item[1])
    return out


@dataclass
class UidWatch:
    """IMAP's view of some folders of boss, checked against every earlier look."""

    folders: list[str]
    validity: dict[str, int] = field(default_factory=dict)
    #: every (folder, UID) ever seen, and the marker it had
    history: dict[tuple[str, int], str | None] = field(default_factory=dict)
    last: dict[str, dict[int, str | None]] = field(default_factory=dict)

    def look(self, site: Site) -> tuple[dict[str, dict[int, str | None]], list[str]]:
        """({folder: {UID: marker}}, problems)."""
        problems: list[str] = []
        now: dict[str, dict[int, str | None]] = {}
        m = imap(site)
        try:
            for folder in self.folders:
                ok(m.select(folder, readonly=True))
                validity = int(m.response("UIDVALIDITY")[1][0])  # type: ignore[arg-type]
                if self.validity.setdefault(folder, validity) != validity:
                    problems.append(f"{folder}: UIDVALIDITY {self.validity[folder]} -> {validity}")
                now[folder] = fetch_markers(m)
                problems += self._compare(folder, now[folder])
        finally:
            m.logout()
        self.last = now
        return now, problems

    def _compare(self, folder: str, uids: dict[int, str | None]) -> list[str]:
        problems = []
        top = max((uid for (f, uid) in self.history if f == folder), default=0)
        for uid, marker in sorted(uids.items()):
            if (folder, uid) in self.history:
                if self.history[(folder, uid)] != marker:
                    problems.append(f"{folder}: UID {uid} was {self.history[(folder, uid)]}, "
                                    f"is {marker}")
            elif uid <= top:
                problems.append(f"{folder}: new message {marker} got UID {uid} <= {top}")
            self.history[(folder, uid)] = marker
        was = _single(self.last.get(folder, {}))
        for marker, uid in _single(uids).items():
            if marker in was and was[marker] != uid:
                problems.append(f"{folder}: {marker} had UID {was[marker]}, now {uid}")
        return problems


def _single(uids: dict[int, str | None]) -> dict[str | None, int]:
    """{marker: UID} of the markers with one copy."""
    seen: dict[str | None, list[int]] = {}
    for uid, marker in uids.items():
        seen.setdefault(marker, []).append(uid)
    return {marker: found[0] for marker, found in seen.items() if len(found) == 1}


def kill_during(site: Site, action: Callable[[], object], delay: float) -> tuple[bool, float]:
    """Run ``action`` in a thread, SIGKILL the server ``delay`` seconds after it started;
    (whether the action completed before the kill, how long it took)."""
    done: list[float] = []
    started = time.monotonic()

    def run() -> None:
        with contextlib.suppress(OSError, EOFError, imaplib.IMAP4.abort, imaplib.IMAP4.error,
                                 poplib.error_proto):
            action()
            done.append(time.monotonic() - started)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(delay)
    site.kill9()
    t.join(TIMEOUT + 5)
    # a reply read now was sent before the kill: the server had acknowledged the command
    return bool(done), done[0] if done else delay
