"""The queue manager (Postfix's qmgr + bounce): delivers queued mail, retries, bounces.

Messages live in :class:`mailsuite.mta.queuefile.QueueDirectory` (durable before ``250``).
Each attempt hands the pending recipients to their transport: ``local`` for recipients with an
account (``user``), ``relay`` (SMTP, one call per next hop) for the others. Then, per recipient:

- 2xx: marked done (fsync'ed) — a ``NOTIFY=SUCCESS`` recipient gets a success notice;
- 5xx: a bounce (RFC 3464) to the envelope sender is queued first, then the recipient is marked
  done; the null sender gets none (no loops);
- 4xx: retried after 5 min, 10, 20, ... (doubling up to ``maximal_backoff_time``); once the
  message is older than ``maximal_queue_lifetime`` it bounces (``status=expired``). With
  ``delay_warning_time`` set, one delay warning is sent after that long. A local delivery
  deferred by a mailbox lock is retried as soon as that lock goes (``lockwatch``), and every
  message with local recipients left is tried at once at start (the lock that deferred it
  may have been left by the server that was killed: removed at start).

The hold queue (Postfix's): ``hold`` takes a message that a filter held (its recipients as
given, looked up only once it is released), ``put_on_hold``/``release``/``requeue``/``delete``
are ``postsuper -h/-H/-r/-d`` for the running daemon (mailsuite.queuecmd without one changes the
files). A held message is neither tried nor expired; once released its lifetime counts from its
arrival, as Postfix's (``-r`` starts it again: recipients looked up anew, tried now).

Every event is a maillog line in Postfix's shape under the message's one queue id.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import smtp

from mailsuite.config import MailConfig
from mailsuite.maillog import format_delay, new_queue_id
from mailsuite.mta.accept import error_status
from mailsuite.mta.bounce import Entry, make_dsn
from mailsuite.mta.lockwatch import LockWatch
from mailsuite.mta.queuefile import CorruptQueueFile, Envelope, QueueDirectory, QueuedRecipient
from mailsuite.mta.relay import Outcome
from mailsuite.threads import Blocking

log = Logger()


class LocalTransport(Protocol):
    def deliver_users(
        self, data: bytes, envelope: Envelope, recipients: list[QueuedRecipient]
    ) -> defer.Deferred[list[Outcome]]: ...

    def classify(self, address: str) -> defer.Deferred[list[QueuedRecipient]]: ...


@dataclass
class QueueSettings:
    hostname: str
    lifetime: float = 5 * 86400.0  # maximal_queue_lifetime
    min_backoff: float = 300.0  # minimal_backoff_time
    max_backoff: float = 4000.0  # maximal_backoff_time
    delay_warning: float = 0.0  # delay_warning_time (0 = off)
    concurrency: int = 20  # messages delivered at the same time

    @classmethod
    def from_config(cls, mail: MailConfig) -> QueueSettings:
        return cls(
            hostname=mail.myhostname,
            lifetime=mail.maximal_queue_lifetime,
            min_backoff=mail.minimal_backoff_time,
            max_backoff=mail.maximal_backoff_time,
            delay_warning=mail.delay_warning_time,
        )


class Queue:
    """Delivers what is in ``directory``. ``clock`` is a reactor (callLater, seconds); the
    queue files are read and written through ``blocking`` (mailsuite.threads)."""

    def __init__(
        self,
        directory: QueueDirectory,
        local: LocalTransport,
        relay: Any,
        maillog: Any,
        clock: Any,
        settings: QueueSettings,
        blocking: Blocking,
    ) -> None:
        self.directory = directory
        self.local = local
        self.relay = relay
        self.maillog = maillog
        self.clock = clock
        self.settings = settings
        self.blocking = blocking
        self.envelopes: dict[str, Envelope] = {}
        self._bodies: dict[str, bytes] = {}
        self._timers: dict[str, Any] = {}
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._busy: set[str] = set()  # being held, released or requeued: not tried meanwhile
        self._idle: dict[str, list[defer.Deferred[None]]] = {}
        self._slots = defer.DeferredSemaphore(settings.concurrency)
        self.locks = LockWatch(clock, self.blocking)

    # --- entry points -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Load what an earlier run left (and drop half-written files); schedule all of it."""
        yield self.blocking(self.directory.setup)
        yield self.scan(at_start=True)

    @defer.inlineCallbacks
    def scan(self, at_start: bool = False) -> Any:
        """Pick up queue files not known yet (left by a crash, or written by ``sendmail``);
        ``at_start``: messages with local recipients are tried now, not after their back-off."""
        ids = yield self.blocking(self.directory.ids)
        now = self.clock.seconds()
        for queue_id in ids:
            if queue_id in self.envelopes or queue_id in self._busy:
                continue
            try:
                env, _ = yield self.blocking(self.directory.load, queue_id)
            except (CorruptQueueFile, OSError) as e:
                log.error("queue file {id} unreadable: {e}", id=queue_id, e=e)
                with contextlib.suppress(OSError):
                    yield self.blocking(self.directory.quarantine, queue_id)
                continue
            self.envelopes[queue_id] = env
            self._active_line(env)
            local = at_start and any(r.user for _, r in env.pending())
            self._schedule(queue_id, 0.0 if local else max(0.0, env.next_attempt - now))

    def enqueue(self, envelope: Envelope, data: bytes) -> defer.Deferred[Envelope]:
        """Write ``envelope``+``data`` durably, then deliver it; fires once it is on disk."""
        d = self.blocking(self.directory.write, envelope, data)

        def written(_: Any) -> Envelope:
            self.envelopes[envelope.queue_id] = envelope
            self._bodies[envelope.queue_id] = data
            self._active_line(envelope)
            self._schedule(envelope.queue_id, 0)
            return envelope

        return d.addCallback(written)

    @defer.inlineCallbacks
    def submit(self, sender: str, addresses: list[str], data: bytes, **fields: Any) -> Any:
        """Queue a new message (a notification) for ``addresses``, routed local or remote."""
        recipients: list[QueuedRecipient] = []
        for address in addresses:
            try:
                recipients.extend((yield self.local.classify(address)))
            except defer.CancelledError:
                raise
            except Exception as e:  # any failure is reported as a result
                log.warn("notification to {a} dropped: {e}", a=address, e=e)
        if not recipients:
            return None
        env = Envelope(new_queue_id(), sender, recipients, self.clock.seconds(), **fields)
        self.maillog.write("cleanup", f"{env.queue_id}: message-id=<{_message_id(data)}>")
        return (yield self.enqueue(env, data))

    def flush(self) -> None:
        """``postqueue -f``: try every deferred message now."""
        for queue_id in list(self.envelopes):
            self._schedule(queue_id, 0)

    @defer.inlineCallbacks
    def delete(self, queue_id: str) -> Any:
        """``postsuper -d``: drop one message (on hold or not) without notice."""
        yield self._quiet(queue_id)
        try:
            removed = yield self.blocking(self.directory.remove, queue_id)
        finally:
            self._forget(queue_id)
            self._busy.discard(queue_id)
        if removed:
            self.maillog.write("postsuper", f"{queue_id}: removed")
        return removed

    def hold(self, envelope: Envelope, data: bytes, reason: str) -> defer.Deferred[Envelope]:
        """A message a filter held (transaction.Hold): on disk in the hold queue when this
        fires, its recipients to be looked up when it is released."""
        for r in envelope.recipients:
            r.resolved = False
        d = self.blocking(self.directory.write, envelope, data, reason)

        def written(_: Any) -> Envelope:
            to = envelope.recipients[0].address if envelope.recipients else ""
            self.maillog.write("cleanup", f"{envelope.queue_id}: hold: {reason};"
                               f" from=<{envelope.sender}> to=<{to}>")
            return envelope

        return d.addCallback(written)

    @defer.inlineCallbacks
    def put_on_hold(self, queue_id: str, reason: str = "mailsuite queue hold") -> Any:
        """``postsuper -h``: once an attempt under way is over, into the hold queue."""
        if queue_id not in self.envelopes:
            return False
        yield self._quiet(queue_id)
        try:
            moved = yield self.blocking(self.directory.move, queue_id, {"hold": reason}, True)
        finally:
            self._busy.discard(queue_id)
        self._forget(queue_id)
        if moved:
            self.maillog.write("postsuper", f"{queue_id}: placed on hold")
        return moved

    @defer.inlineCallbacks
    def release(self, queue_id: str, requeue: bool = False) -> Any:
        """``postsuper -H`` (``requeue``: ``-r``, which also takes queued mail): back into the
        queue, and tried at once."""
        yield self._quiet(queue_id)
        try:
            if requeue:
                moved = yield self.blocking(self.directory.requeue, queue_id, self.clock.seconds())
            else:
                record = {"released": self.clock.seconds()}
                moved = yield self.blocking(self.directory.move, queue_id, record, False)
            env = (yield self.blocking(self.directory.load, queue_id))[0] if moved else None
        finally:
            self._busy.discard(queue_id)
        if env is None:
            if queue_id in self.envelopes:  # queued, not held: as it was
                self._attempt_over(None, queue_id)
            return False
        self._bodies.pop(queue_id, None)
        self.envelopes[queue_id] = env
        done = "requeued" if requeue else "released from hold"
        self.maillog.write("postsuper", f"{queue_id}: {done}")
        self._active_line(env)
        self._schedule(queue_id, 0)
        return True

    def _quiet(self, queue_id: str) -> defer.Deferred[None]:
        """Stop trying ``queue_id``; fires once an attempt under way is over."""
        self._busy.add(queue_id)
        self._cancel(queue_id)
        if queue_id not in self._running:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.setdefault(queue_id, []).append(d)
        return d

    def stop(self) -> None:
        self.locks.stop()
        for queue_id in list(self._timers):
            self._cancel(queue_id)

    # --- scheduling ---------------------------------------------------------------------------

    def _active_line(self, env: Envelope) -> None:
        self.maillog.write(
            "qmgr",
            f"{env.queue_id}: from=<{env.sender}>, size={env.size}, "
            f"nrcpt={len(env.recipients)} (queue active)",
        )

    def _cancel(self, queue_id: str) -> None:
        timer = self._timers.pop(queue_id, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _schedule(self, queue_id: str, delay: float) -> None:
        if queue_id in self._running:
            self._again.add(queue_id)
            return
        self._cancel(queue_id)
        self._timers[queue_id] = self.clock.callLater(delay, self._run, queue_id)

    def _run(self, queue_id: str) -> None:
        self._timers.pop(queue_id, None)
        if queue_id not in self.envelopes or queue_id in self._running or queue_id in self._busy:
            return
        self.locks.forget(queue_id)
        self._running.add(queue_id)
        d = self._slots.run(self._attempt, queue_id)
        d.addErrback(lambda f: log.failure("delivery attempt of {id} failed", f, id=queue_id))
        d.addBoth(self._attempt_over, queue_id)

    def _attempt_over(self, _: Any, queue_id: str) -> None:
        self._running.discard(queue_id)
        again = queue_id in self._again
        self._again.discard(queue_id)
        for waiter in self._idle.pop(queue_id, ()):
            waiter.callback(None)
        env = self.envelopes.get(queue_id)
        if env is not None and queue_id not in self._busy:
            delay = 0.0 if again else max(0.0, env.next_attempt - self.clock.seconds())
            self._schedule(queue_id, delay)

    def backoff(self, attempts: int) -> float:
        delay = self.settings.min_backoff * (2 ** max(0, attempts - 1))
        return min(delay, max(self.settings.max_backoff, self.settings.min_backoff))

    # --- one attempt --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _attempt(self, queue_id: str) -> Any:
        env = self.envelopes[queue_id]
        data = self._bodies.get(queue_id)
        if data is None:
            try:
                data = yield self.blocking(self.directory.read_body, env)
            except (CorruptQueueFile, OSError) as e:
                log.error("queue file {id} unreadable: {e}", id=queue_id, e=e)
                self._forget(queue_id)
                return
        start = self.clock.seconds()
        unresolved = yield self._resolve(env)
        pending = [(i, r) for i, r in env.pending() if r.resolved]
        jobs: list[tuple[list[int], defer.Deferred[list[Outcome]]]] = []
        local = [(i, r) for i, r in pending if r.user]
        if local:
            jobs.append(([i for i, _ in local],
                         self.local.deliver_users(data, env, [r for _, r in local])))
        hops: dict[str, list[tuple[int, QueuedRecipient]]] = {}
        for i, r in pending:
            if not r.user:
                hops.setdefault(self.relay.next_hop(r.address), []).append((i, r))
        for hop, items in hops.items():
            jobs.append(([i for i, _ in items],
                         self.relay.deliver(hop, env, [r for _, r in items], data)))
        results = yield defer.DeferredList([d for _, d in jobs], consumeErrors=True)
        outcomes: dict[int, Outcome] = unresolved
        for (indexes, _), (ok, result) in zip(jobs, results, strict=True):
            if not ok:
                log.failure("transport failed for {id}", result, id=queue_id)
                result = [Outcome(451, "4.3.0", f"internal error: {result.value}")] * len(indexes)
            outcomes.update(zip(indexes, result, strict=False))
        yield self._settle(env, data, outcomes, start, remote={i for i, r in pending if not r.user})

    @defer.inlineCallbacks
    def _resolve(self, env: Envelope) -> Any:
        """Look up the recipients still as given (held mail, ``-r``): each becomes what it
        resolves to (local accounts, .forward and alias targets, remote), recorded before any
        delivery. The Outcome of each look-up that failed, by recipient index."""
        failed: dict[int, Outcome] = {}
        expand: list[list[Any]] = []
        for i, r in env.pending():
            if r.resolved:
                continue
            try:
                found = yield self.local.classify(r.address)
            except defer.CancelledError:
                raise
            except smtp.SMTPServerError as e:
                failed[i] = self._lookup_failed(env, r, e.code, *error_status(e))
            except Exception as e:  # the recipient's own failure, retried
                log.failure("look-up of {a} failed", a=r.address)
                failed[i] = self._lookup_failed(env, r, 451, f"look-up failed: {e}", "4.3.0")
            else:
                expand.append([i, [asdict(_inherit(r, new)) for new in found]])
        if expand:
            record = {"expand": expand}
            yield self.blocking(self.directory.mark, env.queue_id, record)
            env.apply(record)
        return failed

    def _lookup_failed(self, env: Envelope, r: QueuedRecipient, code: int, text: str,
                       dsn: str) -> Outcome:
        status = "bounced" if code >= 500 else "deferred"
        self.maillog.write("local", f"{env.queue_id}: to=<{r.address}>, relay=none,"
                           f" dsn={dsn}, status={status} ({text})")
        return Outcome(code, dsn, text, "none")

    @defer.inlineCallbacks
    def _settle(self, env: Envelope, data: bytes, outcomes: dict[int, Outcome], start: float,
                remote: set[int]) -> Any:
        now = self.clock.seconds()
        expired = now - env.lifetime_start >= self.settings.lifetime
        finished: list[int] = []
        failed: list[Entry] = []
        succeeded: list[tuple[str, Entry]] = []
        deferred: list[Entry] = []
        gave_up = False
        for i, outcome in sorted(outcomes.items()):
            r = env.recipients[i]
            if i in remote:
                self._log_outcome(env, r, outcome, start, now, expired)
            entry = Entry(r, outcome.dsn, outcome.text, _host_of(outcome.relay))
            if outcome.code < 400:
                finished.append(i)
                if r.wants("SUCCESS"):
                    kind = "relayed" if i in remote and not outcome.remote_dsn else "delivered"
                    if i not in remote or kind == "relayed":
                        succeeded.append((kind, entry))
            elif outcome.code >= 500 or expired:
                finished.append(i)
                gave_up = gave_up or outcome.code < 500
                if r.wants("FAILURE"):
                    failed.append(entry)
            else:
                deferred.append(entry)
        if gave_up:
            self.maillog.write(
                "qmgr", f"{env.queue_id}: from=<{env.sender}>, status=expired, returned to sender"
            )
        yield self.notify(env, data, "failed", failed, now)
        for kind in ("delivered", "relayed"):
            yield self.notify(env, data, kind, [e for k, e in succeeded if k == kind], now)
        if finished:
            yield self.blocking(self.directory.mark, env.queue_id, {"done": finished})
            for i in finished:
                env.recipients[i].done = True
        if not env.pending():
            yield self.blocking(self.directory.remove, env.queue_id)
            self.maillog.write("qmgr", f"{env.queue_id}: removed")
            self._forget(env.queue_id)
            return
        warn = (self.settings.delay_warning and not env.warned
                and now - env.arrival >= self.settings.delay_warning)
        if warn:
            yield self.notify(
                env, data, "delayed", [e for e in deferred if e.recipient.wants("DELAY")], now
            )
            env.warned = True
        env.attempts += 1
        env.next_attempt = now + self.backoff(env.attempts)
        record: dict[str, Any] = {"attempts": env.attempts, "next": env.next_attempt,
                                  "reason": deferred[0].diagnostic if deferred else ""}
        if warn:
            record["warned"] = True
        yield self.blocking(self.directory.mark, env.queue_id, record, warn)
        self._bodies.pop(env.queue_id, None)  # read again at the next attempt
        for lock in {o.lock for o in outcomes.values() if 400 <= o.code < 500 and o.lock}:
            self.locks.watch(lock, env.queue_id, self._lock_freed)

    def _lock_freed(self, queue_id: str) -> None:
        """The mailbox lock that deferred ``queue_id`` went: try it again now."""
        if queue_id in self.envelopes:
            self._schedule(queue_id, 0)

    def _forget(self, queue_id: str) -> None:
        self.envelopes.pop(queue_id, None)
        self._bodies.pop(queue_id, None)
        self._cancel(queue_id)

    @defer.inlineCallbacks
    def notify(
        self, env: Envelope, data: bytes, kind: str, entries: list[Entry], now: float
    ) -> Any:
        """Queue a notification of ``kind`` (bounce.make_dsn) about ``entries`` to the sender;
        none for the null sender. Fires once it is on disk."""
        if not entries:
            return
        if env.sender == "":
            if kind == "failed":
                self.maillog.write(
                    "bounce",
                    f"{env.queue_id}: undeliverable notification for the null sender discarded",
                )
            return
        message = make_dsn(
            kind, env, entries, data, self.settings.hostname, now, self.settings.lifetime
        )
        notice = yield self.submit("", [env.sender], message, smtputf8=env.smtputf8)
        what = {
            "failed": "sender non-delivery notification",
            "delayed": "sender delay notification",
            "delivered": "sender delivery status notification",
            "relayed": "sender delivery status notification",
        }[kind]
        if notice is not None:
            self.maillog.write("bounce", f"{env.queue_id}: {what}: {notice.queue_id}")

    def _log_outcome(self, env: Envelope, r: QueuedRecipient, o: Outcome, start: float, now: float,
                     expired: bool) -> None:
        orig = ""
        if r.orcpt and r.orcpt.lower() != f"rfc822;{r.address}".lower():
            orig = f", orig_to=<{r.orcpt.partition(';')[2]}>"
        delays = "/".join(
            format_delay(x) for x in (max(0.0, start - env.arrival), 0, 0, now - start)
        )
        status = o.status
        self.maillog.write(
            "smtp",
            f"{env.queue_id}: to=<{r.address}>{orig}, relay={o.relay}, "
            f"delay={format_delay(now - env.arrival)}, delays={delays}, dsn={o.dsn}, "
            f"status={status} ({o.text})",
        )


_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*<?([^\s>]*)", re.IGNORECASE | re.MULTILINE)


def _message_id(data: bytes) -> str:
    end = data.find(b"\n\n")
    m = _MESSAGE_ID.search(data if end < 0 else data[:end])
    return m.group(1).decode("ascii", "replace") if m else ""


def _inherit(given: QueuedRecipient, found: QueuedRecipient) -> QueuedRecipient:
    """A recipient a look-up found for ``given``, with the DSN parameters given at RCPT."""
    found.notify = given.notify
    found.orcpt = given.orcpt or found.orcpt
    return found


def _host_of(relay: str) -> str:
    return relay.partition("[")[0] if "[" in relay else ""


__all__ = ["LocalTransport", "Queue", "QueueSettings"]
