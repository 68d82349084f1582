"""What must hold after a ``kill -9`` of the server (tests/integration/test_kill_rounds.py).

Every message of a kill test carries a unique marker (its Message-ID ``<MARKER@kill.test>``)
and a body made from it (``body_of``), so any copy found in a mailbox can be checked whole.
``Ledger`` says, per mailbox and marker, how many copies may be there: an acknowledged
delivery or deletion fixes the count, a command in flight at the kill widens it by one.
``check_mbox`` reads a file with the project's parser and with Python's ``mailbox.mbox``, and
``Ledger.settle`` compares what they found with the ledger and takes it as the new truth.
"""

from __future__ import annotations

import mailbox
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mailsuite.store import mboxformat

_MARKER = re.compile(rb"^message-id:[ \t]*<([^@>\s]+)@kill\.test>", re.I | re.M)


def body_of(marker: str, lines: int) -> bytes:
    """The body of the message ``marker``: ``lines`` lines naming it, a ``From `` line
    (quoted in the mbox) and a dot line (stuffed on the wire)."""
    out = [f"{marker} line {i:05d} of {lines}\n" for i in range(lines)]
    out.insert(lines // 2, f"From the middle of {marker}\n")
    out.insert(lines // 3, f".{marker} dot line\n")
    return "".join(out).encode() + f"END {marker}\n".encode()


def message(marker: str, lines: int = 20, to: str = "boss@example.test") -> bytes:
    """The message ``marker`` as a client sends it (CRLF line ends)."""
    head = (f"From: kill@remote.test\nTo: {to}\nSubject: kill {marker}\n"
            f"Message-ID: <{marker}@kill.test>\nX-Kill-Lines: {lines}\n\n")
    return (head.encode() + body_of(marker, lines)).replace(b"\n", b"\r\n")


def marker_of(header: bytes) -> str | None:
    found = _MARKER.search(header)
    return found.group(1).decode() if found else None


def lines_of(header: bytes) -> int | None:
    found = re.search(rb"^x-kill-lines:[ \t]*(\d+)", header, re.I | re.M)
    return int(found.group(1)) if found else None


def _stored(body: bytes) -> bytes:
    """A body as an mbox stores it (``From `` lines quoted as ``>From ``)."""
    return re.sub(rb"(?m)^From ", b">From ", body)


@dataclass
class Found:
    markers: list[str] = field(default_factory=list)  # in file order
    problems: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)  # markers of messages that are not whole


def check_mbox(path: str) -> Found:
    """The markers of the messages in ``path``, and the problems found: the two parsers
    disagree, a ``From `` line that starts no message, a message that is not one of ours; and
    the messages that are not whole (a write cut short: only allowed for a message whose
    delivery was in flight)."""
    found = Found()
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except FileNotFoundError:
        return found
    problems = found.problems
    parsed = mboxformat.parse(buf, 0, len(buf))
    starts = {p.offset for p in parsed}
    for line in re.finditer(rb"^From [^\n]*", buf, re.M):
        if line.start() not in starts:
            problems.append(f"{path}: a From line at offset {line.start()} starts no message: "
                            f"{line.group()!r}")
    if buf and not buf.startswith(b"From "):
        problems.append(f"{path}: does not start with a From line: {buf[:60]!r}")
    ours = []
    for p in parsed:
        header = buf[p.body_off : p.hdr_end]
        marker, lines = marker_of(header), lines_of(header)
        if marker is None or lines is None:
            problems.append(f"{path}: a message at {p.offset} is not ours: {header[:200]!r}")
            continue
        body = buf[p.hdr_end : p.end]
        if body != _stored(body_of(marker, lines)):
            found.torn.append(marker)
        ours.append(marker)
    problems += _compare_stdlib(path, ours, set(found.torn))
    found.markers = ours
    return found


def _compare_stdlib(path: str, ours: list[str], torn: set[str]) -> list[str]:
    """Python's mailbox.mbox must see the same messages, each with its whole body."""
    box = mailbox.mbox(path, factory=None, create=False)
    try:
        theirs = []
        for key in box.iterkeys():
            raw = box.get_bytes(key)
            header, _, body = raw.partition(b"\n\n")
            marker, lines = marker_of(header + b"\n"), lines_of(header + b"\n")
            theirs.append(marker)
            if (marker is not None and lines is not None and marker not in torn
                    and body.rstrip(b"\n") != _stored(body_of(marker, lines)).rstrip(b"\n")):
                return [f"{path}: mailbox.mbox reads {marker} differently"]
    finally:
        box.close()
    if theirs != ours:
        return [f"{path}: mailbox.mbox sees {theirs}, mailsuite's parser {ours}"]
    return []


@dataclass
class Expect:
    low: int = 0
    high: int = 0


@dataclass
class Ledger:
    """Per mailbox (a name the test gives) and marker: the counts allowed after a kill."""

    boxes: dict[str, dict[str, Expect]] = field(default_factory=dict)
    #: checks over several boxes at once (an in-flight MOVE: in one of the two, never both)
    joint: list[tuple[str, Callable[[dict[str, Counter[str]]], bool]]] = field(
        default_factory=list)
    #: messages an interrupted MOVE left in both mailboxes
    both: int = 0

    def _get(self, box: str, marker: str) -> Expect:
        return self.boxes.setdefault(box, {}).setdefault(marker, Expect())

    def added(self, box: str, marker: str) -> None:
        """Acknowledged: one more copy, for sure."""
        e = self._get(box, marker)
        e.low += 1
        e.high = max(e.high, e.low)

    def maybe_added(self, box: str, marker: str) -> None:
        """In flight at the kill: one more copy, or not."""
        self._get(box, marker).high += 1

    def removed(self, box: str, marker: str) -> None:
        """Acknowledged deletion of one copy: gone for good."""
        e = self._get(box, marker)
        e.low, e.high = max(e.low - 1, 0), max(e.high - 1, 0)

    def maybe_removed(self, box: str, marker: str) -> None:
        e = self._get(box, marker)
        e.low = max(e.low - 1, 0)

    def all_or_none(self, what: str, box: str, markers: list[str], sign: int) -> None:
        """An in-flight command on several messages of ``box`` (POP3 QUIT, EXPUNGE: ``sign``
        -1; MOVE into it: +1): it happened for all of them or for none (``markers`` may name
        a message twice: two copies). Call it before recording the command."""
        wanted = Counter(markers)
        before = {m: self.count(box, m) for m in wanted}

        def holds(seen: dict[str, Counter[str]]) -> bool:
            deltas = [seen[box][m] - n for m, n in before.items()]
            return all(d == 0 for d in deltas) or all(
                d == sign * wanted[m] for d, m in zip(deltas, before, strict=True))

        self.joint.append((f"{what} half done in {box}: {sorted(markers)}", holds))

    def never_lost(self, what: str, boxes: tuple[str, str], markers: list[str]) -> None:
        """An in-flight MOVE: each message is still in one of the two mailboxes (it is copied,
        then expunged: a kill in between leaves it in both; counted in ``both``)."""
        a, b = boxes
        before = {m: self.count(a, m) + self.count(b, m) for m in markers}

        def holds(seen: dict[str, Counter[str]]) -> bool:
            self.both += sum(seen[a][m] + seen[b][m] > n for m, n in before.items())
            return all(seen[a][m] + seen[b][m] >= n for m, n in before.items())

        self.joint.append((f"{what} from {a} to {b} lost some of {sorted(before)}", holds))

    def count(self, box: str, marker: str) -> int:
        """The settled count (after ``settle``)."""
        return self.boxes.get(box, {}).get(marker, Expect()).low

    def present(self, box: str) -> list[str]:
        return [m for m, e in self.boxes.get(box, {}).items() if e.low > 0]

    def settle(self, seen: dict[str, list[str]]) -> list[str]:
        """Compare what is in each mailbox (``seen``: box -> markers found) with the ledger;
        the problems found. What was seen becomes the known state."""
        counts = {box: Counter(markers) for box, markers in seen.items()}
        problems = []
        for box in counts:  # the boxes looked at
            found = counts[box]
            expected = self.boxes.setdefault(box, {})
            for marker in set(expected) | set(found):
                e = expected.get(marker, Expect())
                n = found[marker]
                if not e.low <= n <= e.high:
                    problems.append(f"{box}: {marker} is there {n} times, expected "
                                    f"{e.low if e.low == e.high else f'{e.low}-{e.high}'}")
                expected[marker] = Expect(n, n)
        for what, holds in self.joint:
            if not holds(counts):
                problems.append(what)
        self.joint = []
        return problems
