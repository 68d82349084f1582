"""``queue_directory/maildrop/``: where ``sendmail`` leaves mail, and the daemon's pickup.

Postfix's design: any local user may drop a message (the directory is mode 1733: everyone may
create files, nobody but root may list them); the message is fsync'ed and renamed into place
before ``sendmail`` exits 0, so it survives a stopped or crashing daemon. The daemon picks the
directory up at start, every ``SCAN_INTERVAL`` seconds and when poked (``mailsuite.mta.control``),
logs ``ID: uid=N from=<sender>`` as Postfix's pickup does, and hands each message to
``submit(queue_id, sender, recipients, data) -> Deferred[list[str]]`` (the recipients still to be
tried later; [] when done). The file is removed once every recipient is handled, or rewritten
with the remaining ones.

File format (one file per message, name = its queue id)::

    {"v": 1, "sender": "boss", "rcpts": ["carol", "x@remote.test"], "uid": 1000}\\n
    <the message, LF line ends>
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import internet
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailsuite.fsutil import atomic_write, fsync_entry
from mailsuite.maillog import new_queue_id
from mailsuite.mta.transaction import DEFERRED, PICKUP, Client, Envelope, Pipeline, Recipient
from mailsuite.threads import Blocking

log = Logger()

VERSION = 1
SCAN_INTERVAL = 5.0
#: A half-written ``.tmp`` file older than this was left by a killed sendmail.
STALE_TMP = 3600.0


def maildrop_dir(queue_directory: str) -> str:
    return os.path.join(queue_directory, "maildrop")


def ensure_maildrop(queue_directory: str) -> str:
    """Create ``maildrop/`` mode 1733 (as root; others may only use an existing one)."""
    path = maildrop_dir(queue_directory)
    os.makedirs(queue_directory, mode=0o755, exist_ok=True)
    try:
        os.mkdir(path, 0o1733)
    except FileExistsError:
        return path
    os.chmod(path, 0o1733)
    return path


@dataclass
class Dropped:
    queue_id: str
    sender: str
    recipients: list[str]
    uid: int
    data: bytes
    arrival: float


def _write_file(directory: str, name: str, head: dict[str, Any], data: bytes) -> None:
    """Write ``.tmp.NAME``, fsync it, rename it to NAME and make the rename durable; on any
    error nothing is left under either name (so a reported failure never delivers)."""
    payload = json.dumps(head, separators=(",", ":")).encode("utf-8") + b"\n" + data
    atomic_write(os.path.join(directory, name), payload,
                 tmp=os.path.join(directory, f".tmp.{name}"),
                 sync=lambda fd: fsync_entry(directory, fd), undo=True)


def drop(queue_directory: str, sender: str, recipients: list[str], data: bytes,
         uid: int | None = None) -> str:
    """Write one message durably into maildrop/ (blocking); returns its queue id."""
    directory = maildrop_dir(queue_directory)
    if not os.path.isdir(directory) and os.geteuid() == 0:
        ensure_maildrop(queue_directory)
    queue_id = new_queue_id()
    head = {"v": VERSION, "sender": sender, "rcpts": recipients,
            "uid": os.getuid() if uid is None else uid}
    _write_file(directory, queue_id, head, data)
    return queue_id


def read(queue_directory: str, queue_id: str, fd: int | None = None) -> Dropped:
    """One dropped message. The uid is the file owner's when that is not root (a user cannot
    claim to be someone else), so a hard link (anyone may make one in the 1733 directory, to a
    file of someone else's where protected_hardlinks is off) is refused, as a symlink is.
    ``fd``: the file, opened already (by the master of a privilege-separated server)."""
    path = os.path.join(maildrop_dir(queue_directory), queue_id)
    if fd is None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if st.st_nlink != 1:
            raise ValueError(f"{path}: {st.st_nlink} hard links")
        head = json.loads(f.readline())
        data = f.read()
    if head.get("v") != VERSION:
        raise ValueError(f"{path}: unknown maildrop version")
    uid = int(head.get("uid", st.st_uid)) if st.st_uid == 0 else st.st_uid
    return Dropped(queue_id, str(head["sender"]), [str(r) for r in head["rcpts"]], uid, data,
                   st.st_mtime)


def ids(queue_directory: str, now: Callable[[], float] = time.time) -> list[str]:
    """Queue ids waiting in maildrop/, oldest first; stale ``.tmp`` files are removed."""
    directory = maildrop_dir(queue_directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            mtime = os.lstat(path).st_mtime
        except FileNotFoundError:
            continue
        if name.startswith("."):
            if now() - mtime > STALE_TMP:
                remove(queue_directory, name)
            continue
        if name.isalnum():
            found.append((mtime, name))
    return [name for _, name in sorted(found)]


def remove(queue_directory: str, queue_id: str) -> bool:
    try:
        os.unlink(os.path.join(maildrop_dir(queue_directory), queue_id))
        return True
    except FileNotFoundError:
        return False


def rewrite(queue_directory: str, dropped: Dropped, recipients: list[str]) -> None:
    """Keep only ``recipients`` (the ones to try again) in the dropped message."""
    head = {"v": VERSION, "sender": dropped.sender, "rcpts": recipients, "uid": dropped.uid}
    directory = maildrop_dir(queue_directory)
    _write_file(directory, f"{dropped.queue_id}.new", head, dropped.data)
    os.rename(os.path.join(directory, f"{dropped.queue_id}.new"),
              os.path.join(directory, dropped.queue_id))


Submit = Callable[[Dropped], "defer.Deferred[list[str]]"]


class Pickup:
    """Moves maildrop/ messages into the mail system, one scan at a time (never two at once);
    the files are read and removed through ``blocking`` (mailsuite.threads)."""

    def __init__(self, queue_directory: str, submit: Submit, maillog: Any,
                 blocking: Blocking, open_dropped: Any = None) -> None:
        """``open_dropped(queue_id)``: Deferred[fd] of a file the pickup cannot open itself
        (the network process of a privilege-separated server asks the master)."""
        self.open_dropped = open_dropped
        self.queue_directory = queue_directory
        self.submit = submit
        self.maillog = maillog
        self.blocking = blocking
        self._running: defer.Deferred[None] | None = None
        self._again = False

    def scan(self) -> defer.Deferred[None]:
        """Pick up everything now; if a scan is running, one more follows it."""
        if self._running is not None:
            self._again = True
            return self._running
        running = self._running = self._scan()
        running.addBoth(self._done)
        return running

    def _done(self, result: Any) -> None:
        self._running = None
        if isinstance(result, Failure):
            log.failure("maildrop scan failed", result)
        if self._again:
            self._again = False
            self.scan()

    @defer.inlineCallbacks
    def _scan(self) -> Any:
        queue_ids = yield self.blocking(ids, self.queue_directory)
        for queue_id in queue_ids:
            try:
                fd = None if self.open_dropped is None else (yield self.open_dropped(queue_id))
                dropped = yield self.blocking(read, self.queue_directory, queue_id, fd)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError) as e:
                log.error("maildrop {id}: unreadable, left in place: {error}", id=queue_id,
                          error=e)
                continue
            self.maillog.write("pickup", f"{queue_id}: uid={dropped.uid} from=<{dropped.sender}>")
            try:
                remaining = yield self.submit(dropped)
            except defer.CancelledError:
                raise
            except Exception:  # logged; the file stays for the next scan
                log.failure("maildrop {id}: submission failed; kept for the next scan",
                            id=queue_id)
                continue
            if remaining:
                yield self.blocking(rewrite, self.queue_directory, dropped, remaining)
            else:
                yield self.blocking(remove, self.queue_directory, queue_id)


def pickup_service(pickup: Pickup, clock: Any,
                   interval: float = SCAN_INTERVAL) -> internet.TimerService:
    """Scans at start and every ``interval`` seconds of ``clock`` (an IReactorTime); a failing
    scan is logged and survived."""
    scanner = internet.TimerService(interval, pickup.scan)
    scanner.clock = clock
    return scanner


def qualify(address: str, myorigin: str) -> str:
    """Postfix's append_at_myorigin: a bare name gets @myorigin (the null sender stays)."""
    if address and "@" not in address:
        return f"{address}@{myorigin}"
    return address


def local_submitter(delivery: Any, maillog: Any, hostname: str, myorigin: str,
                    now: Callable[[], float] = time.time,
                    pipeline: Pipeline | None = None) -> Submit:
    """``submit`` for Pickup: the dropped message through the accept pipeline
    (mailsuite.mta.transaction; ``pipeline`` None: one over ``delivery``), with @myorigin
    added to bare names; returns the recipients to try again at the next scan (the pipeline's
    deferred ones: a refused recipient is dropped once its bounce is on disk)."""
    pipeline = pipeline or Pipeline(delivery, maillog, hostname, now)

    def submit(dropped: Dropped) -> defer.Deferred[list[str]]:
        envelope = Envelope(
            dropped.queue_id, qualify(dropped.sender, myorigin),
            [Recipient(qualify(rcpt, myorigin)) for rcpt in dropped.recipients],
            Client(PICKUP, uid=dropped.uid), arrival=dropped.arrival)
        d = pipeline.receive(envelope, dropped.data)
        return d.addCallback(
            lambda results: [
                rcpt
                for rcpt, r in zip(dropped.recipients, results, strict=False)
                if r.status == DEFERRED
            ]
        )

    return submit
