"""Crash safety, proven again at every run: rounds of ``kill -9`` of the whole server (every
process of it, see harness.Site.kill9) at random instants during SMTP delivery, POP3 QUIT,
IMAP EXPUNGE, MOVE, COPY and APPEND, and a queue run towards a receiving MX, each followed by a
restart and these checks (crashcheck.py, killclients.py):

- every acknowledged message (250 after DATA, APPEND OK, MOVE/COPY OK) is there exactly once,
  whole; nothing acknowledged as deleted (POP3 +OK after QUIT, EXPUNGE OK, MOVE OK) comes back;
  a command in flight at the kill did all or nothing, and never made a copy too many;
- every mbox reads the same with mailsuite's parser and Python's mailbox.mbox, and every
  ``From `` line starts a message;
- UIDVALIDITY never changes, UIDs are never reused and a message keeps its UID (IMAP), its
  UIDL (POP3) too; what the killed server left (dotlocks, rewrite files) blocks nothing.

CI runs a few rounds of each (bounded in time: ``BUDGET`` seconds a scenario); a long run::

    MAILSUITE_KILL_ROUNDS=150 python scripts/run_tests.py tests.integration.test_kill_rounds

What is counted, not failed on (see README.rst, Development): an in-flight message left cut
short, an interrupted MOVE leaving a copy in both folders, a relayed message sent twice.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests import fakemx
from tests.integration import crashcheck
from tests.integration import killclients as kc
from tests.integration.harness import Site

#: Rounds per scenario: MAILSUITE_KILL_ROUNDS, else CI's few (each scenario also stops
#: starting rounds after BUDGET seconds, unless MAILSUITE_KILL_ROUNDS is set).
LONG = int(os.environ.get("MAILSUITE_KILL_ROUNDS", "0") or 0)
BUDGET = 15.0
#: A fresh site once a mailbox is that big, so that long runs stay fast.
BIG = 3_000_000


def sizes() -> int:
    """Lines of a message body: mostly small ones, some of 60 KB, a few of 300 KB."""
    return 10000 if random.random() < 0.05 else random.choice((3, 20, 20, 60, 200, 200, 2000))


class KillCase(unittest.TestCase):
    timeout = max(120, LONG * 12)

    def setUp(self) -> None:
        self.done: list[str] = []  # what the last rounds did, for a failure
        self.torn_seen: dict[str, set[str]] = {}

    def rounds(self, default: int) -> Iterator[int]:
        """Round numbers: LONG of them, or ``default`` within BUDGET seconds."""
        count = LONG or default
        deadline = time.monotonic() + (BUDGET if not LONG else LONG * 10.0)
        done = 0
        for r in range(count):
            if time.monotonic() > deadline:
                break
            yield r
            done += 1
        torn = sum(map(len, self.torn_seen.values()))
        print(f"\n{self.id()}: {done} kill rounds; in-flight messages left torn: {torn}")

    def fresh(self, r: int) -> bool:
        """Whether round ``r`` starts on a new site: the first, or a mailbox has grown big."""
        return r == 0 or any(os.path.exists(p) and os.path.getsize(p) > BIG
                             for p in self.paths.values())

    def site(self) -> Site:
        site = Site(self)
        site.start()
        self.paths = {"INBOX": site.inbox("boss"), "carol": site.inbox("carol"),
                      "Work": os.path.join(site.home("boss"), "mail", "Work"),
                      "Archive": os.path.join(site.home("boss"), "mail", "Archive")}
        return site

    def restart_and_check(self, site: Site, ledger: crashcheck.Ledger,
                          watch: kc.UidWatch | None) -> None:
        """Start the killed server, then every check: the mbox files as the kill left them,
        the UIDs, the ledger against what clients are served (IMAP; the file for a mailbox
        IMAP is not asked about), and the files once compacted (an EXPUNGE is durable when
        answered; the file follows)."""
        site.start()
        problems: list[str] = []
        for box, path in self.paths.items():
            found = crashcheck.check_mbox(path)
            problems += found.problems + self.torn(ledger, box, found.torn)
        served: dict[str, list[str]] = {}
        if watch is not None:
            try:
                view, wrong = watch.look(site)
            except (OSError, kc.imaplib.IMAP4.error) as e:
                self.fail(f"IMAP after the restart: {e!r}\n{self.leftovers()}\n"
                          f"{site.log()[-5000:]}")
            problems += wrong
            served = {box: list(uids.values()) for box, uids in view.items()}  # type: ignore[misc]
        seen = dict(served)
        for box, path in self.paths.items():
            if box not in seen:
                seen[box] = crashcheck.check_mbox(path).markers
        problems += ledger.settle(seen)
        problems += self.compacted(served)
        if problems:
            self.fail("after a kill -9:\n" + "\n".join(problems) + "\n" + "\n".join(self.done[-3:])
                      + "\n" + site.log()[-3000:])

    def torn(self, ledger: crashcheck.Ledger, box: str, markers: list[str]) -> list[str]:
        """A message cut short by the kill must be one whose delivery was in flight (a known
        weakness: counted in ``torn_seen``, see README.rst); never an acknowledged one."""
        problems = []
        seen = self.torn_seen.setdefault(box, set())
        for marker in markers:
            expected = ledger.boxes.get(box, {}).get(marker)
            if marker in seen:
                continue  # torn by an earlier kill, counted then
            if expected is not None and expected.low == 0 and expected.high > 0:
                seen.add(marker)
            else:
                problems.append(f"{box}: acknowledged message {marker} is not whole")
        return problems

    def leftovers(self) -> str:
        """What is in the directories of the mailboxes (locks, temp files), for a failure."""
        dirs = sorted({os.path.dirname(p) for p in self.paths.values()})
        return "\n".join(f"{d}: {sorted(os.listdir(d)) if os.path.isdir(d) else '-'}"
                         for d in dirs)

    def compacted(self, served: dict[str, list[str]]) -> list[str]:
        """Each file holds what IMAP serves, once its compaction is done (bounded wait)."""
        deadline = time.monotonic() + 10
        while True:
            problems = []
            for box, markers in served.items():
                found = crashcheck.check_mbox(self.paths[box])
                problems += found.problems
                if sorted(found.markers) != sorted(markers):
                    problems.append(f"{box}: the file has {sorted(found.markers)}, IMAP "
                                    f"serves {sorted(markers)}")
            if not problems or time.monotonic() > deadline:
                return problems
            time.sleep(0.05)

    def stock(self, site: Site, ledger: crashcheck.Ledger, prefix: str, count: int) -> None:
        """``count`` messages delivered to boss's INBOX over SMTP, each acknowledged."""
        work = kc.smtp_sender(site, prefix, {"boss@example.test": "INBOX"}, count, lambda: 20)
        clients = kc.Clients()
        clients.run(work)
        for flight in clients.join():
            if flight.errors:
                raise AssertionError(flight.errors)
            for box, marker in flight.acked:
                ledger.added(box, marker)

    def record(self, ledger: crashcheck.Ledger, flights: list[kc.Flight]) -> None:
        for flight in flights:
            for box, marker in flight.acked:
                ledger.added(box, marker)
            for box, marker in flight.in_flight:
                ledger.maybe_added(box, marker)


class SMTPKillTests(KillCase):
    def test_kill_during_parallel_smtp_delivery(self) -> None:
        """Four clients deliver to boss, carol or both; the kill comes at a random instant."""
        boxes = {"boss@example.test": "INBOX", "carol@example.test": "carol"}
        for r in self.rounds(8):
            if self.fresh(r):
                site, ledger = self.site(), crashcheck.Ledger()
                watch = kc.UidWatch(["INBOX"])
            clients = kc.Clients()
            for t in range(4):
                clients.run(kc.smtp_sender(site, f"s{r}t{t}", boxes, 40, sizes))
            time.sleep(random.uniform(0.05, 0.8))
            site.kill9()
            self.record(ledger, clients.join())
            self.restart_and_check(site, ledger, watch)


class POP3KillTests(KillCase):
    def test_kill_around_pop3_quit(self) -> None:
        """DELE of a few messages then QUIT, the kill before, during or after the commit, while
        a client delivers to the same INBOX; the UIDLs of the messages left never change."""
        quit_time = 0.02
        for r in self.rounds(8):
            if self.fresh(r):
                site, ledger = self.site(), crashcheck.Ledger()
                watch, uidls = kc.UidWatch(["INBOX"]), {}
            if len(ledger.present("INBOX")) < 12:
                self.stock(site, ledger, f"p{r}stock", 15)
            pop = kc.pop3(site)
            listed = self.uidl_markers(pop, uidls)
            doomed = random.sample(sorted(listed), random.randint(1, min(5, len(listed))))
            for n in doomed:
                pop.dele(n)
            clients = kc.Clients()
            clients.run(kc.smtp_sender(site, f"p{r}", {"boss@example.test": "INBOX"}, 20,
                                       sizes))
            markers = [listed[n] for n in doomed]
            acked, took = kc.kill_during(site, pop.quit, random.uniform(0, quit_time * 1.5))
            if acked:
                quit_time = max(quit_time, took)
                for marker in markers:
                    ledger.removed("INBOX", marker)
            else:
                ledger.all_or_none("POP3 QUIT", "INBOX", markers, -1)
                for marker in markers:
                    ledger.maybe_removed("INBOX", marker)
            self.record(ledger, clients.join())
            self.restart_and_check(site, ledger, watch)

    def uidl_markers(self, pop: object, uidls: dict[bytes, str | None]) -> dict[int, str]:
        """{message number: marker} of a POP3 session; a UIDL seen before must name the same
        message as before (TOP tells which one)."""
        found = {}
        for line in pop.uidl()[1]:  # type: ignore[attr-defined]
            number, uidl = line.split()
            header = b"\n".join(pop.top(int(number), 0)[1])  # type: ignore[attr-defined]
            marker = crashcheck.marker_of(header)
            if uidls.setdefault(uidl, marker) != marker:
                self.fail(f"UIDL {uidl!r} was {uidls[uidl]}, is {marker}")
            assert marker is not None
            found[int(number)] = marker
        return found


class IMAPKillTests(KillCase):
    FOLDERS = ("INBOX", "Work", "Archive")

    def test_kill_during_expunge_move_copy_append(self) -> None:
        """Each round one EXPUNGE, MOVE or COPY of a few messages (the kill at a random instant
        of it) while another client APPENDs; UIDs and UIDVALIDITY of the three folders hold."""
        took = {"expunge": 0.02, "move": 0.02, "copy": 0.02}
        self.both = 0
        for r in self.rounds(10):
            if self.fresh(r):
                site, ledger = self.site(), crashcheck.Ledger()
                m = kc.imap(site)
                for folder in self.FOLDERS[1:]:
                    kc.ok(m.create(folder))
                m.logout()
                watch = kc.UidWatch(list(self.FOLDERS))
                seen, _ = watch.look(site)
            if len(ledger.present("INBOX")) < 12:
                self.stock(site, ledger, f"i{r}stock", 15)
                seen, _ = watch.look(site)
            op = random.choice(sorted(took))
            source = random.choice([f for f in self.FOLDERS if seen[f]])
            m = kc.imap(site)
            kc.ok(m.select(source))
            kc.ok(m.uid("STORE", "1:*", "-FLAGS.SILENT", r"(\Deleted)"))
            uids = random.sample(sorted(seen[source]), random.randint(1, min(5, len(seen[source]))))
            markers = [seen[source][u] for u in uids]
            target = random.choice([f for f in self.FOLDERS if f != source])
            action = self.action(m, op, ",".join(map(str, uids)), target)
            clients = kc.Clients()
            clients.run(kc.imap_appender(site, f"i{r}a", self.FOLDERS, 20, sizes))
            acked, t = kc.kill_during(site, action, random.uniform(0, took[op] * 1.5))
            if acked:
                took[op] = max(took[op], t)
            self.done.append(f"round {r}: {op} {uids} {markers} {source} -> {target}: "
                             f"{'acknowledged' if acked else 'in flight'}")
            self.expect(ledger, op, acked, source, target, markers)  # type: ignore[arg-type]
            self.record(ledger, clients.join())
            self.restart_and_check(site, ledger, watch)
            seen = watch.last
            self.both += ledger.both
            ledger.both = 0
        print(f"messages an interrupted MOVE left in both folders: {self.both}")

    def action(self, m: object, op: str, uids: str, target: str) -> object:
        def run() -> None:
            if op == "expunge":
                kc.ok(m.uid("STORE", uids, "+FLAGS.SILENT", r"(\Deleted)"))  # type: ignore[attr-defined]
                kc.ok(m.expunge())  # type: ignore[attr-defined]
            else:
                kc.ok(m.uid(op.upper(), uids, target))  # type: ignore[attr-defined]
        return run

    def expect(self, ledger: crashcheck.Ledger, op: str, acked: bool, source: str, target: str,
               markers: list[str]) -> None:
        if not acked:
            if op != "copy":  # a COPY copies one message after the other: may stop halfway
                ledger.all_or_none(op, source, markers, -1)
            if op == "move":
                ledger.never_lost("an interrupted MOVE", (source, target), markers)
        for marker in markers:
            if op in ("expunge", "move"):
                (ledger.removed if acked else ledger.maybe_removed)(source, marker)
            if op in ("copy", "move"):
                (ledger.added if acked else ledger.maybe_added)(target, marker)


class QueueKillTests(KillCase):
    """The outbound queue towards a receiving MX (tests/fakemx.py on this process's reactor:
    the rounds run in a thread). mx1 defers every recipient (4xx), so messages wait in the
    queue for a retry after ``minimal_backoff_time`` on mx1 then mx2."""

    @defer.inlineCallbacks
    def test_kill_during_queue_runs(self) -> Any:
        port = fakemx.free_port_on(["127.0.0.2", "127.0.0.3"])
        records = fakemx.zone({"remote.test": [(10, "mx1.remote.test"), (20, "mx2.remote.test")]},
                              {"mx1.remote.test": "127.0.0.2", "mx2.remote.test": "127.0.0.3"})
        dns_port, _, ports = fakemx.start_dns(records)
        sinks, sink_ports = fakemx.start_sinks(
            {"127.0.0.2": fakemx.Behaviour(greeting="421 4.3.2 mx1 is busy"),
             "127.0.0.3": fakemx.Behaviour()}, port)
        for p in ports + sink_ports:
            self.addCleanup(p.stopListening)
        extra = (f"dns_resolver = 127.0.0.1:{dns_port}\nsmtp_port = {port}\n"
                 "minimal_backoff_time = 1s\nmaximal_backoff_time = 1s\n"
                 "mynetworks = 127.0.0.0/8\n")
        yield threads.deferToThread(self.queue_rounds, extra, sinks["127.0.0.3"])

    def queue_rounds(self, extra: str, sink: Any) -> None:
        ledger = crashcheck.Ledger()
        site = Site(self, mail_extra=extra)
        site.start()
        self.paths = {"INBOX": site.inbox("boss")}
        boxes = {"r1@remote.test": "remote", "boss@example.test": "INBOX"}
        twice, queued, self.final = 0, 0, Counter[str]()
        for r in self.rounds(6):
            clients = kc.Clients()
            for t in range(3):
                clients.run(kc.smtp_sender(site, f"q{r}t{t}", boxes, 15, sizes))
            time.sleep(random.uniform(0.05, 0.6))
            site.kill9()
            # what the dead server sent may still wait in the MX's sockets: a DATA it ended
            # before the kill counts as got before it once the MX has read all of it
            deadline = time.monotonic() + 10
            while sink.open and time.monotonic() < deadline:
                time.sleep(0.02)
            before = Counter(self.received(sink))
            queued += len(os.listdir(os.path.join(site.dir, "queue", "active")))
            self.record(ledger, clients.join())
            self.restart_and_check(site, ledger, None)
            twice += self.drained(site, ledger, sink, before)
        print(f"queue files left by the kills: {queued}; messages sent twice to the MX "
              f"(SMTP's own window): {twice}")

    def received(self, sink: Any) -> list[str]:
        """The markers of the messages the MX has got, each whole (else a failure)."""
        out = []
        for got in list(sink.received):
            header = got.data.split(b"\n\n", 1)[0] + b"\n"
            marker = crashcheck.marker_of(header)
            lines = crashcheck.lines_of(header)
            if marker is None or lines is None or not got.data.endswith(
                    crashcheck.body_of(marker, lines)):
                self.fail(f"the MX got a message that is not whole: {got.data[-200:]!r}")
            out.append(marker)
        return out

    def drained(self, site: Site, ledger: crashcheck.Ledger, sink: Any,
                before: Counter[str]) -> int:
        """Wait (bounded) for an empty queue; then each message acknowledged for the remote
        recipients reached the MX, once, or twice when its first copy got there before the
        kill (its success was not yet on disk: SMTP's window). The number sent twice."""
        active = os.path.join(site.dir, "queue", "active")
        deadline = time.monotonic() + 30
        while os.listdir(active) and time.monotonic() < deadline:
            time.sleep(0.05)
        if os.listdir(active):
            self.fail(f"the queue did not drain: {os.listdir(active)}\n{site.log()[-3000:]}")
        counts = Counter(self.received(sink))
        problems = [f"{m}: sent again after it was done" for m, n in self.final.items()
                    if counts[m] != n]
        owed = ledger.boxes.pop("remote", {})
        for marker, e in owed.items():
            n, had = counts[marker], before[marker]
            if n > e.high + (1 if had else 0) or n < e.low or (n > 1 and not had):
                problems.append(f"{marker}: at the MX {n} times ({had} before the kill), "
                                f"expected {e.low}-{e.high}")
        unknown = set(counts) - set(owed) - set(self.final)
        if problems or unknown:
            self.fail("\n".join(problems) + f"\nunknown: {sorted(unknown)}")
        self.final = counts
        return sum(1 for m in owed if counts[m] > 1)
