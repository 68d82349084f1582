"""Queue files in ``queue_directory``: one file per message, durable before ``250``.

Layout::

    queue_directory/tmp/ID       being written (removed at start-up: never acknowledged)
    queue_directory/active/ID    committed messages
    queue_directory/hold/ID      committed messages on hold (Postfix's hold queue): never
                                 delivered nor expired there, until released

A queue file is text-framed, never pickled::

    {"v": 1, "id": "3F2A1B9C0D", "sender": "...", "rcpts": [...], "size": N, ...}\\n   (JSON)
    <N bytes: the message, LF line ends, our Received: on top>
    {"done": [0, 2]}\\n                                              (progress records)
    {"attempts": 3, "next": 1764300000.0}\\n

A message is written to ``tmp/``, fsync'ed, renamed into ``active/`` and the directory is
fsync'ed: only then is it acknowledged. Progress is appended to the same file and fsync'ed
after each delivery, so a crash re-delivers at most the recipients whose record was not yet on
disk (SMTP's own window). A torn last record (crash mid-append) is ignored. Removal needs no
fsync: a file that comes back after a crash has every recipient marked done and is removed again.

Holding and releasing move a file between ``active/`` and ``hold/`` with one rename (the
directory fsync'ed), after the record that says why is on disk: killed at any point, the
message is in exactly one of them. The directory is what counts: a ``hold`` record in a file
of ``active/`` (a hold cut short) only keeps the reason. Recipients of held mail are not looked
up yet (``resolved`` false): the queue manager resolves them before the first delivery and
records what each became (``expand``), as it does after ``requeue``.

These functions block; the daemon calls them through a :data:`mailsuite.threads.Blocking`, and
commands (``sendmail``) may call them directly, with or without a running daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from mailsuite.fsutil import atomic_write, fsync_parent, write_all
from mailsuite.maillog import new_queue_id

VERSION = 1


@dataclass
class QueuedRecipient:
    """One recipient of a queued message.

    ``user`` names the local account for local delivery; None means delivery over SMTP.
    ``notify``/``orcpt`` are the DSN parameters given at RCPT (None = not given).
    """

    address: str
    user: str | None = None
    notify: list[str] | None = None
    orcpt: str | None = None
    done: bool = False
    resolved: bool = True  # False: an envelope address still to be looked up (held, requeued)

    def wants(self, what: str) -> bool:
        """Does the sender want a DSN of kind SUCCESS/FAILURE/DELAY for this recipient?"""
        if self.notify is None:
            return what in ("FAILURE", "DELAY")
        return what in self.notify


@dataclass
class Envelope:
    """Everything about a queued message but its content."""

    queue_id: str
    sender: str
    recipients: list[QueuedRecipient]
    arrival: float
    size: int = 0
    ret: str | None = None
    envid: str | None = None
    smtputf8: bool = False
    body: str | None = None
    attempts: int = 0
    next_attempt: float = 0.0
    warned: bool = False
    client: str = ""  # "name[ip]" of the client that gave it to us (bounces report it)
    hold_reason: str | None = None  # why it was put on hold (records)
    requeued: float = 0.0  # when it was requeued (-r): its lifetime counts from then (records)
    last_reason: str = ""  # why the last attempt was deferred (records; shown by mailq)

    def pending(self) -> list[tuple[int, QueuedRecipient]]:
        return [(i, r) for i, r in enumerate(self.recipients) if not r.done]

    def to_json(self) -> bytes:
        d = asdict(self)
        d["v"] = VERSION
        for key in ("attempts", "next_attempt", "warned", "hold_reason", "requeued",
                    "last_reason"):
            d.pop(key)
        for r in d["recipients"]:
            r.pop("done")
            if r["resolved"]:
                r.pop("resolved")
        return json.dumps(d, ensure_ascii=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        d = json.loads(raw)
        if d.pop("v", None) != VERSION:
            raise ValueError("unknown queue file version")
        d["recipients"] = [QueuedRecipient(**r) for r in d["recipients"]]
        return cls(**d)

    def apply(self, record: dict[str, Any]) -> None:
        """Replay one progress record."""
        for i in record.get("done", ()):
            self.recipients[int(i)].done = True
        if "attempts" in record:
            self.attempts = int(record["attempts"])
            self.next_attempt = float(record.get("next", 0.0))
        if record.get("warned"):
            self.warned = True
        if "reason" in record:
            self.last_reason = str(record["reason"])
        if "hold" in record:
            self.hold_reason = str(record["hold"])
        if "released" in record:
            self.hold_reason, self.next_attempt = None, 0.0
        if "requeue" in record:
            self._requeue(float(record["requeue"]))
        for i, found in record.get("expand", ()):
            self.recipients[int(i)].done = True
            self.recipients.extend(QueuedRecipient(**r) for r in found)

    def _requeue(self, when: float) -> None:
        """``postsuper -r``: every pending recipient looked up again, tried now, a new life."""
        self.requeued, self.attempts, self.next_attempt = when, 0, 0.0
        self.hold_reason, self.warned, self.last_reason = None, False, ""
        for _, r in self.pending():
            r.resolved = False

    @property
    def lifetime_start(self) -> float:
        """Where maximal_queue_lifetime counts from: the arrival, or the last requeue."""
        return self.requeued or self.arrival


class CorruptQueueFile(Exception):
    pass


class QueueDirectory:
    """The queue files under one ``queue_directory`` (blocking calls)."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        self.tmp = os.path.join(self.directory, "tmp")
        self.active = os.path.join(self.directory, "active")
        self.hold = os.path.join(self.directory, "hold")

    def setup(self) -> None:
        """Create the directories and drop half-written files of an earlier crash."""
        for d in (self.directory, self.tmp, self.active, self.hold):
            os.makedirs(d, mode=0o700, exist_ok=True)
        for name in os.listdir(self.tmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.tmp, name))

    def path(self, queue_id: str, held: bool = False) -> str:
        if not queue_id.isalnum():
            raise ValueError(f"bad queue id {queue_id!r}")
        return os.path.join(self.hold if held else self.active, queue_id)

    def write(self, envelope: Envelope, data: bytes, hold: str | None = None) -> None:
        """Commit a new message durably (file and directory fsync'ed) under its queue id;
        ``hold``: into the hold queue, with that reason."""
        envelope.size = len(data)
        target = self.path(envelope.queue_id, held=hold is not None)
        for where in (False, True):
            if os.path.exists(self.path(envelope.queue_id, where)):
                raise FileExistsError(target)
        tail = b"" if hold is None else _record({"hold": hold})
        atomic_write(target, envelope.to_json() + b"\n" + data + tail,
                     tmp=os.path.join(self.tmp, envelope.queue_id))

    def mark(self, queue_id: str, record: dict[str, Any], sync: bool = True,
             held: bool = False) -> None:
        """Append one progress record (fsync'ed unless ``sync`` is False)."""
        fd = os.open(self.path(queue_id, held), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            write_all(fd, _record(record))
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, queue_id: str) -> bool:
        """Remove the message, wherever it is (active or on hold); whether there was one."""
        removed = False
        for held in (False, True):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(queue_id, held))
                removed = True
        return removed

    def move(self, queue_id: str, record: dict[str, Any], to_hold: bool) -> bool:
        """``record`` appended (fsync'ed), then the file renamed into hold/ (``to_hold``) or
        back into active/, that directory fsync'ed; False when it is not where it would leave."""
        try:
            self.mark(queue_id, record, held=not to_hold)
        except FileNotFoundError:
            return False
        target = self.path(queue_id, to_hold)
        os.rename(self.path(queue_id, not to_hold), target)
        fsync_parent(target)
        return True

    def requeue(self, queue_id: str, now: float) -> bool:
        """``postsuper -r``: look the recipients up again, deliver now (out of hold too)."""
        record = {"requeue": now}
        if self.move(queue_id, record, to_hold=False):
            return True
        try:
            self.mark(queue_id, record)
        except FileNotFoundError:
            return False
        return True

    def ids(self, held: bool = False) -> list[str]:
        """The committed queue ids (``held``: those on hold), oldest file first."""
        where = self.hold if held else self.active
        names = []
        try:
            listing = os.listdir(where)
        except FileNotFoundError:  # hold/ of a queue made before there was a hold queue
            return []
        for name in listing:
            try:
                names.append((os.stat(os.path.join(where, name)).st_mtime, name))
            except FileNotFoundError:
                continue
        return [name for _, name in sorted(names)]

    def load(self, queue_id: str, with_body: bool = False,
             held: bool = False) -> tuple[Envelope, bytes | None]:
        """The envelope with its progress replayed, and the message if asked for."""
        with open(self.path(queue_id, held), "rb") as f:
            head = f.readline()
            try:
                envelope = Envelope.from_json(head)
            except (ValueError, TypeError, KeyError) as e:
                raise CorruptQueueFile(f"{queue_id}: bad envelope: {e}") from e
            body = f.read(envelope.size) if with_body else None
            if body is not None and len(body) != envelope.size:
                raise CorruptQueueFile(f"{queue_id}: message cut short")
            f.seek(len(head) + envelope.size)
            for line in f.read().split(b"\n"):
                try:
                    envelope.apply(json.loads(line))
                except (ValueError, TypeError, KeyError, IndexError):
                    continue  # a torn last record: never acknowledged as done
        return envelope, body

    def read_body(self, envelope: Envelope) -> bytes:
        with open(self.path(envelope.queue_id), "rb") as f:
            f.readline()
            body = f.read(envelope.size)
        if len(body) != envelope.size:
            raise CorruptQueueFile(f"{envelope.queue_id}: message cut short")
        return body

    def quarantine(self, queue_id: str) -> str:
        """Move a file that cannot be read aside (``corrupt/ID``) rather than lose it."""
        corrupt = os.path.join(self.directory, "corrupt")
        os.makedirs(corrupt, mode=0o700, exist_ok=True)
        target = os.path.join(corrupt, queue_id)
        os.rename(self.path(queue_id), target)
        return target


def submit(
    directory: str,
    sender: str,
    recipients: list[QueuedRecipient],
    data: bytes,
    queue_id: str | None = None,
    now: float | None = None,
    **envelope: Any,
) -> Envelope:
    """Write a new message into ``directory``'s queue (blocking) and return its envelope.

    For commands such as ``sendmail`` that queue mail with or without a running daemon; the
    daemon picks the file up at its next queue scan (or at once after ``Queue.scan()``).
    """
    queue = QueueDirectory(directory)
    os.makedirs(queue.tmp, mode=0o700, exist_ok=True)
    os.makedirs(queue.active, mode=0o700, exist_ok=True)
    env = Envelope(
        queue_id=queue_id or new_queue_id(),
        sender=sender,
        recipients=recipients,
        arrival=time.time() if now is None else now,
        **envelope,
    )
    queue.write(env, data)
    return env


def _record(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


__all__ = ["CorruptQueueFile", "Envelope", "QueueDirectory", "QueuedRecipient", "submit"]
