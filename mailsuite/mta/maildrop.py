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

import email.utils
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
from twisted.mail import smtp
from twisted.python.failure import Failure

from mailsuite import threads
from mailsuite.fsutil import atomic_write, fsync_entry
from mailsuite.maillog import new_queue_id
from mailsuite.mta.bounce import Entry
from mailsuite.mta.delivery import DeliveryFailed, error_status
from mailsuite.mta.forward import TargetFailed
from mailsuite.mta.queuefile import Envelope, QueuedRecipient

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


def read(queue_directory: str, queue_id: str) -> Dropped:
    """One dropped message. The uid is the file owner's when that is not root (a user cannot
    claim to be someone else), so a hard link (anyone may make one in the 1733 directory, to a
    file of someone else's where protected_hardlinks is off) is refused, as a symlink is."""
    path = os.path.join(maildrop_dir(queue_directory), queue_id)
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
    """Moves maildrop/ messages into the mail system, one scan at a time (never two at once)."""

    def __init__(self, queue_directory: str, submit: Submit, maillog: Any) -> None:
        self.queue_directory = queue_directory
        self.submit = submit
        self.maillog = maillog
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
        queue_ids = yield threads.blocking(ids, self.queue_directory)
        for queue_id in queue_ids:
            try:
                dropped = yield threads.blocking(read, self.queue_directory, queue_id)
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
            except Exception:  # noqa: BLE001 -- logged; the file stays for the next scan
                log.failure("maildrop {id}: submission failed; kept for the next scan",
                            id=queue_id)
                continue
            if remaining:
                yield threads.blocking(rewrite, self.queue_directory, dropped, remaining)
            else:
                yield threads.blocking(remove, self.queue_directory, queue_id)


def pickup_service(pickup: Pickup, interval: float = SCAN_INTERVAL) -> internet.TimerService:
    """Scans at start and every ``interval`` seconds; a failing scan is logged and survived."""

    return internet.TimerService(interval, pickup.scan)


def received_by(hostname: str, uid: int, queue_id: str, when: float) -> bytes:
    """The Received: line Postfix's pickup/cleanup gives locally submitted mail."""
    date = email.utils.formatdate(when, localtime=True)
    return (f"Received: by {hostname} (mailsuite, from userid {uid})\n\tid {queue_id};"
            f" {date}\n").encode()


def qualify(address: str, myorigin: str) -> str:
    """Postfix's append_at_myorigin: a bare name gets @myorigin (the null sender stays)."""
    if address and "@" not in address:
        return f"{address}@{myorigin}"
    return address


def local_submitter(delivery: Any, maillog: Any, hostname: str, myorigin: str,
                    now: Callable[[], float] = time.time) -> Submit:
    """``submit`` for Pickup that delivers through LocalDelivery (the same resolve() as SMTP
    RCPT, one deliver() per recipient so a retry never repeats a delivered copy).

    Permanent refusals (5xx: an unknown user, a |command that failed) are logged
    ``status=bounced`` and, as Postfix's bounce(8), reported to the sender in one RFC 3464
    bounce through ``delivery.queue`` (a local sender finds it in the mailbox); the recipient
    is dropped once the bounce is on disk. Temporary ones are kept for the next scan. Remote
    recipients go to ``delivery.queue.submit`` (the outbound queue) when there is one, else
    they wait (temporary failure).
    """

    @defer.inlineCallbacks
    def deliver_one(dropped: Dropped, sender: str, address: str, data: bytes) -> Any:
        """None when delivered (or queued), else (permanent, dsn, text), logged."""
        _, _, domain = address.rpartition("@")
        queue = getattr(delivery, "queue", None)
        try:
            if queue is not None and not delivery.is_local_domain(domain):
                yield queue.submit(sender, [address], data)  # durable in the queue
                return None
            found = yield delivery.resolve(address)
            yield delivery.deliver(data, sender, [(address, d) for d in found],
                                   dropped.queue_id, arrival=dropped.arrival)
        except smtp.SMTPServerError as e:
            resp, dsn = error_status(e)
            status = "deferred" if e.code < 500 else "bounced"
            maillog.write("local", f"{dropped.queue_id}: to=<{address}>, relay=none,"
                          f" delay={now() - dropped.arrival:.2g}, dsn={dsn},"
                          f" status={status} ({resp})")
            reason = resp.removeprefix(dsn).strip().removeprefix(f"<{address}>: ")
            return e.code >= 500, dsn, reason  # the bounce says "<address>: reason"
        except DeliveryFailed as e:  # logged by deliver(); a failed |command or /file
            error = next((f.value for f in e.failures if f.check(TargetFailed)), None)
            if error is None:
                return False, "4.3.0", str(e)
            return error.permanent, error.dsn, error.text
        return None

    @defer.inlineCallbacks
    def submit(dropped: Dropped) -> Any:
        sender = qualify(dropped.sender, myorigin)
        data = received_by(hostname, dropped.uid, dropped.queue_id, now()) + dropped.data
        retry: list[str] = []
        bounced: list[tuple[str, Entry]] = []
        for rcpt in dropped.recipients:
            address = qualify(rcpt, myorigin)
            try:
                result = yield deliver_one(dropped, sender, address, data)
            except defer.CancelledError:
                raise
            except Exception:  # noqa: BLE001 -- logged and retried at the next scan
                log.failure("maildrop {id}: delivery to {rcpt} failed", id=dropped.queue_id,
                            rcpt=address)
                result = (False, "4.3.0", "internal error")
            if result is None:
                continue
            permanent, dsn, text = result
            if permanent:
                bounced.append((rcpt, Entry(QueuedRecipient(address), dsn, text)))
            else:
                retry.append(rcpt)
        if bounced and not (yield bounce(dropped, sender, data, [e for _, e in bounced])):
            retry.extend(rcpt for rcpt, _ in bounced)  # refused again, and bounced, next time
        return retry

    @defer.inlineCallbacks
    def bounce(dropped: Dropped, sender: str, data: bytes, entries: list[Entry]) -> Any:
        """Queue one bounce for ``entries``; False when it could not be written."""
        queue = getattr(delivery, "queue", None)
        if queue is None:
            log.warn("maildrop {id}: no queue to return the message to <{sender}>",
                     id=dropped.queue_id, sender=sender)
            return True
        env = Envelope(dropped.queue_id, sender, [e.recipient for e in entries], dropped.arrival,
                       size=len(data))
        try:
            yield queue.notify(env, data, "failed", entries, now())
        except defer.CancelledError:
            raise
        except Exception:  # noqa: BLE001 -- the recipients stay, and are tried again
            log.failure("maildrop {id}: cannot queue the bounce", id=dropped.queue_id)
            return False
        return True

    return submit
