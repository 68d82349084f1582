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
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator

from twisted.trial import unittest

from tests.integration import crashcheck
from tests.integration import killclients as kc
from tests.integration.harness import Site

#: Rounds per scenario: MAILSUITE_KILL_ROUNDS, else CI's few (each scenario also stops
#: starting rounds after BUDGET seconds, unless MAILSUITE_KILL_ROUNDS is set).
LONG = int(os.environ.get("MAILSUITE_KILL_ROUNDS", "0") or 0)
BUDGET = 15.0
#: A fresh site after so many rounds, so the mailboxes stay small in long runs.
EPOCH = 30


def sizes() -> int:
    """Lines of a message body: mostly small ones, a few of 300 KB (several writes)."""
    return random.choice((3, 20, 20, 200, 200, 2000, 10000))


class KillCase(unittest.TestCase):
    timeout = max(120, LONG * 12)

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
        self.rounds_done = done
        print(f"\n{self.id()}: {done} kill rounds")

    def site(self) -> Site:
        site = Site(self)
        site.start()
        self.paths = {"INBOX": site.inbox("boss"), "carol": site.inbox("carol"),
                      "Work": os.path.join(site.home("boss"), "mail", "Work"),
                      "Archive": os.path.join(site.home("boss"), "mail", "Archive")}
        return site

    def restart_and_check(self, site: Site, ledger: crashcheck.Ledger,
                          watch: kc.UidWatch | None) -> None:
        """Start the killed server, then every check: the mbox files, the ledger, the UIDs."""
        site.start()
        problems: list[str] = []
        seen = {}
        for box, path in self.paths.items():
            seen[box], found = crashcheck.check_mbox(path)
            problems += found
        problems += ledger.settle(seen)
        if watch is not None:
            _, found = watch.look(site)
            problems += found
        if problems:
            self.fail("after a kill -9:\n" + "\n".join(problems) + "\n" + site.log()[-3000:])

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
            if r % EPOCH == 0:
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
            if r % EPOCH == 0:
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
                ledger.all_or_none("POP3 QUIT", "INBOX", markers)
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
        for r in self.rounds(10):
            if r % EPOCH == 0:
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
            source = random.choice([f for f in self.FOLDERS if seen[f]] or ["INBOX"])
            if not seen[source]:
                seen, _ = watch.look(site)
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
            self.expect(ledger, op, acked, source, target, markers)  # type: ignore[arg-type]
            self.record(ledger, clients.join())
            self.restart_and_check(site, ledger, watch)
            seen = watch.last

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
            if op != "copy":
                ledger.all_or_none(op, source, markers)
            if op != "expunge":
                ledger.all_or_none(op, target, markers)
            if op == "move":
                ledger.one_of("an interrupted MOVE", (source, target), markers)
        for marker in markers:
            if op in ("expunge", "move"):
                (ledger.removed if acked else ledger.maybe_removed)(source, marker)
            if op in ("copy", "move"):
                (ledger.added if acked else ledger.maybe_added)(target, marker)
