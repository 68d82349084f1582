"""The one accept pipeline: what becomes of a message after DATA, whichever door it came in by.

The doors are SMTP (smtp/server.py), LMTP (smtp/lmtp.py) and the sendmail pickup
(mta/maildrop.py). A door speaks its protocol, checks and resolves recipients where its protocol
answers them (SMTP and LMTP at RCPT; the pickup leaves that to the pipeline), and hands one
``Envelope`` and the message bytes to ``Pipeline``. The checks that answer a command stay with
the door that has the command: relay control and sender ownership at MAIL/RCPT (SMTP's
DeliveryAvatar), the recipient look-up at RCPT, the message size while DATA is read. The
pipeline::

    stamp      our Received: header (SMTP: one for the message; pickup: Postfix pickup's
               "Received: by"; LMTP: one per copy, naming its recipient, added when routing)
    stages     Pipeline.stages, in order: see Stage below (the filters plug in here)
    route      local recipients into the store (aliases, ~/.forward, |command, /file already
               expanded by LocalDelivery.resolve; each mailbox written once by group commit),
               remote ones into the queue, and what failed for good returned to the sender
    results    one Result per envelope recipient, in order

How a door answers is its protocol's, and so is how its copies are routed:

- SMTP gives one reply for the whole message, so the copies are routed *together*: one copy per
  mailbox for all its recipients, a copy that cannot be written now is queued for a retry, one
  that failed for good is bounced (DSN), and the Deferred fails only when part of the message
  could not be made durable anywhere (the door says 451, the client sends it all again).
- LMTP answers each recipient after the dot, so each recipient is delivered *on its own* (all
  at once), and its Result is its reply; nothing is bounced (the client MTA does that).
- The pickup keeps the recipients still to try in the drop file, so each recipient is delivered
  on its own (one after another); remote ones go to the queue, refusals are looked up here and
  bounced in one RFC 3464 report, and a recipient whose bounce cannot be written stays deferred.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from mailsuite.accounts import Account
from mailsuite.mta import address as addr
from mailsuite.mta import forward, queuefile
from mailsuite.mta.accept import LocalRecipient, RemoteRecipient, error_status, received_header
from mailsuite.mta.bounce import Entry, make_dsn
from mailsuite.mta.failures import DeliveryFailed, over_quota, quota_reply, target_failure

log = Logger()

SMTP, LMTP, PICKUP = "smtp", "lmtp", "pickup"

DELIVERED, QUEUED, BOUNCED, DISCARDED = "delivered", "queued", "bounced", "discarded"
DEFERRED, REFUSED = "deferred", "refused"


@dataclass(frozen=True)
class Client:
    """Who handed the message in: ``door`` (smtp, lmtp, pickup), the client's IP address and
    name (``unknown`` without forward-confirmed reverse DNS), its HELO/LHLO name, the
    authenticated user (SMTP AUTH) or the submitting uid (pickup), whether TLS was on, and the
    ``with`` word of the Received: header (ESMTP, ESMTPSA, LMTP...)."""

    door: str
    address: str = "127.0.0.1"
    name: str = "localhost"
    helo: str | None = None
    user: str | None = None
    uid: int | None = None
    tls: bool = False
    protocol: str = "ESMTP"

    @property
    def label(self) -> str:
        """``name[ip]``, as Postfix logs a client."""
        return f"{self.name}[{self.address}]"


@dataclass
class Recipient:
    """One envelope recipient: the address as given, its DSN parameters (NOTIFY, ORCPT), and
    ``route``, what the door's RCPT look-up found (SMTP: the avatar's LocalRecipient,
    RemoteRecipient or an ``smtp.IMessage`` factory; LMTP: the destinations of
    LocalDelivery.resolve). ``None``: the pipeline looks the address up itself. ``bcc``: a
    blind copy a stage added (BCC maps, audit rules), not itself given another copy."""

    address: str
    params: addr.RcptParams = field(default_factory=addr.RcptParams)
    route: Any = None
    bcc: bool = False


@dataclass
class Envelope:
    """One message's envelope. ``arrival`` None: it arrives now (LMTP)."""

    queue_id: str
    sender: str
    recipients: list[Recipient]
    client: Client
    params: addr.MailParams = field(default_factory=addr.MailParams)
    arrival: float | None = None


@dataclass(frozen=True)
class Result:
    """What became of one recipient: ``delivered`` (on disk in its mailboxes, or forwarded),
    ``queued`` (in the queue, to be delivered or retried), ``bounced`` (failed for good after
    the message was taken, and returned to the sender as a DSN), ``discarded`` (taken, and
    removed from the recipients by a stage), ``deferred`` (not taken: the
    client, or the drop file, tries again), ``refused`` (not taken, for good). ``code``, the
    enhanced status ``dsn`` and ``text`` say why."""

    status: str
    code: int = 250
    dsn: str = "2.0.0"
    text: str = ""

    @property
    def accepted(self) -> bool:
        """The pipeline took the message for this recipient: the door may say 2xx."""
        return self.status in (DELIVERED, QUEUED, BOUNCED, DISCARDED)


@dataclass(frozen=True)
class Verdict:
    """A stage's decision about the whole message: 4xx defers, 5xx refuses every recipient."""

    code: int
    dsn: str
    text: str

    def result(self) -> Result:
        return Result(DEFERRED if self.code < 500 else REFUSED, self.code, self.dsn, self.text)


@dataclass(frozen=True)
class Hold:
    """A stage's decision: take the message (the door says 2xx) but keep it in the hold queue,
    undelivered, until the admin releases or deletes it (Postfix's HOLD). ``reason`` goes to
    the maillog and ``mailq``."""

    reason: str


@dataclass(frozen=True)
class Discard:
    """A stage's decision: take the message (2xx) and deliver it to no one (Postfix's
    DISCARD); the stage has logged why."""

    reason: str


class Message:
    """What a stage sees and may change: the envelope (its ``recipients`` list may be edited:
    a new Recipient without a route is looked up like a pickup recipient; a removed one's
    Result is ``discarded``) and ``data``, the message as it will be stored (LF line ends)."""

    def __init__(self, envelope: Envelope, data: bytes) -> None:
        self.envelope = envelope
        self.data = data

    def add_header(self, name: str, value: str) -> None:
        """Put ``name: value`` on top of the message (below nothing: our Received: is older)."""
        self.data = f"{name}: {value}\n".encode("utf-8", "replace") + self.data


#: One filter of the pipeline (milter, header/body checks, DKIM, SPF/DMARC, audit copies,
#: quotas): called once per message, in ``Pipeline.stages`` order, on the reactor thread (slow
#: work goes through mailsuite.threads, or a Deferred). It may change the Message (headers,
#: recipients) and returns None (or a Deferred of None) to go on, or a Verdict that ends the
#: pipeline: the later stages and the routing do not run, every recipient gets the verdict
#: (a Hold: the message goes to the hold queue; a Discard: to no one; both are taken).
Decision = Verdict | Hold | Discard
Stage = Callable[[Message], "Decision | defer.Deferred[Decision | None] | None"]


class Pipeline:
    """The accept pipeline over ``delivery`` (a LocalDelivery: resolve, deliver and its queue).
    ``now`` gives the time for headers and reports; ``stages`` is the list of Stage."""

    def __init__(self, delivery: Any, maillog: Any, hostname: str,
                 now: Callable[[], float], stages: Sequence[Stage] = ()) -> None:
        self.delivery = delivery
        self.maillog = maillog
        self.hostname = hostname
        self.now = now
        self.stages = list(stages)

    def receive(self, envelope: Envelope, body: bytes) -> defer.Deferred[list[Result]]:
        """Stamp ``body`` (LF line ends, no Received: of ours yet), then ``deliver`` it."""
        return self.deliver(envelope, self.stamp(envelope, body))

    def stamp(self, envelope: Envelope, body: bytes) -> bytes:
        """The message with our Received: header on top (LMTP's is added per copy)."""
        c = envelope.client
        if c.door == PICKUP:
            return received_by(self.hostname, c.uid or 0, envelope.queue_id, self.now()) + body
        if c.door == LMTP:
            return body
        ip = f"IPv6:{c.address}" if ":" in c.address else c.address
        header = received_header(c.helo, c.name, ip, self.hostname, c.protocol,
                                 envelope.queue_id, [r.address for r in envelope.recipients],
                                 self.now())
        return b"".join((header, b"\n", body))

    def deliver(self, envelope: Envelope, data: bytes) -> defer.Deferred[list[Result]]:
        """Run the stages on the stamped message, then route it: one Result per recipient.
        SMTP only: fails when the message could not be made durable (see the module doc)."""
        message = Message(envelope, data)
        if not self.stages:  # the usual case: no Deferred chain for stages that are not there
            return self._route(None, message)
        given = list(envelope.recipients)
        routed = self._run_stages(message, 0).addCallback(self._route, message)
        return routed.addCallback(_in_given_order, message.envelope.recipients, given)

    def _run_stages(self, message: Message, first: int,
                    held: bool = False) -> defer.Deferred[Decision | None]:
        """The stages from ``first`` on, until one decides; ``held``: after a Hold, only those
        whose ``runs_when_held`` is true (the BCC copies: Postfix keeps them in held mail),
        their decisions ignored."""
        for i in range(first, len(self.stages)):
            if held and not getattr(self.stages[i], "runs_when_held", False):
                continue
            verdict = self.stages[i](message)
            if isinstance(verdict, defer.Deferred):
                return verdict.addCallback(self._after_stage, message, i + 1, held)
            if isinstance(verdict, Hold) and not held:
                return self._after_stage(verdict, message, i + 1)  # type: ignore[no-any-return]
            if verdict is not None and not held:
                return defer.succeed(verdict)
        return defer.succeed(None)

    def _after_stage(self, verdict: Decision | None, message: Message,
                     following: int, held: bool = False) -> Any:
        if isinstance(verdict, Hold) and not held:
            d = self._run_stages(message, following, held=True)
            return d.addCallback(lambda _: verdict)
        return verdict if verdict is not None and not held \
            else self._run_stages(message, following, held)

    def _route(self, verdict: Decision | None, message: Message) -> defer.Deferred[list[Result]]:
        if isinstance(verdict, Discard):
            return defer.succeed([Result(DISCARDED, text=verdict.reason)]
                                 * len(message.envelope.recipients))
        if isinstance(verdict, Hold):
            return self._hold(message, verdict.reason)
        if verdict is not None:
            results = [verdict.result()] * len(message.envelope.recipients)
            if message.envelope.client.door == PICKUP:
                return _Alone(self, message).return_refused(results)
            return defer.succeed(results)
        if message.envelope.client.door == SMTP:
            return _Together(self, message).run()
        return _Alone(self, message).run()

    def _hold(self, message: Message, reason: str) -> defer.Deferred[list[Result]]:
        """Keep the whole message, every recipient still to be looked up, in the hold queue
        (mailsuite.mta.queue.Queue.hold); a released message is delivered as queued mail."""
        env = message.envelope
        p = env.params
        queued = queuefile.Envelope(
            env.queue_id, env.sender, [_queued(r.address, None, r.params) for r in env.recipients],
            env.arrival if env.arrival is not None else self.now(), ret=p.ret, envid=p.envid,
            smtputf8=p.smtputf8, body=p.body, client=env.client.label)
        d = self.delivery.queue.hold(queued, message.data, reason)
        return d.addCallback(lambda _: [Result(QUEUED, text=f"held: {reason}")]
                             * len(env.recipients))


def _in_given_order(results: list[Result], routed: list[Recipient],
                    given: list[Recipient]) -> list[Result]:
    """Results for the recipients the door gave, in its order (those a stage removed:
    discarded), then those for the recipients the stages added."""
    by_recipient = {id(r): result for r, result in zip(routed, results, strict=False)}
    out = [by_recipient.pop(id(r), Result(DISCARDED, text="removed by a stage")) for r in given]
    return out + [by_recipient[id(r)] for r in routed if id(r) in by_recipient]


class _Together:
    """SMTP's routing: the copies of one message, each mailbox once, the rest to the queue."""

    def __init__(self, pipeline: Pipeline, message: Message) -> None:
        self.pipeline = pipeline
        self.delivery = pipeline.delivery
        self.maillog = pipeline.maillog
        env = self.envelope = message.envelope
        self.data = message.data
        self.sender = env.sender
        self.arrival = env.arrival if env.arrival is not None else pipeline.now()
        self.results: list[Result] = [Result(DELIVERED)] * len(env.recipients)
        self.queued: list[queuefile.QueuedRecipient] = []
        self.delivered: list[tuple[str, addr.RcptParams]] = []
        self.bounced: list[tuple[str, addr.RcptParams, Any, forward.TargetFailed]] = []
        self.forwarded = False

    def run(self) -> defer.Deferred[list[Result]]:
        missing = [i for i, r in enumerate(self.envelope.recipients) if r.route is None]
        if not missing:
            return self._route()
        looked_up = [self._look_up(i) for i in missing]
        return defer.gatherResults(looked_up).addCallback(lambda _: self._route())

    def _look_up(self, i: int) -> defer.Deferred[None]:
        """Route a recipient a stage added (as DeliveryAvatar would: remote ones queued)."""
        rcpt = self.envelope.recipients[i]
        _, _, domain = rcpt.address.rpartition("@")
        if domain and not self.delivery.is_local_domain(domain) and \
                self.delivery.queue is not None:
            rcpt.route = RemoteRecipient(rcpt.address)
            return defer.succeed(None)

        def found(dests: list[Any]) -> None:
            rcpt.route = LocalRecipient(rcpt.address, dests, self.delivery, self.sender)

        def refused(failure: Failure) -> None:
            self.results[i] = _refusal(failure, rcpt.address)

        return self.delivery.resolve(rcpt.address).addCallbacks(found, refused)

    def _route(self) -> defer.Deferred[list[Result]]:
        groups: dict[Any, tuple[Any, list[tuple[int, str, addr.RcptParams]]]] = {}
        others = []
        for i, rcpt in enumerate(self.envelope.recipients):
            address, recipient, params = rcpt.address, rcpt.route, rcpt.params
            if recipient is None:  # a stage's recipient that the look-up refused
                continue
            if isinstance(recipient, RemoteRecipient):
                self._queue(i, _queued(address, None, params))
            elif isinstance(recipient, LocalRecipient):
                for dest in recipient.accounts:
                    if isinstance(dest, forward.Remote) and (
                            not dest.sender or not self.sender):
                        self._queue(i, _queued(dest.address, None, params, address))
                        continue
                    # a mailbox takes all its addresses in one copy; a command, file or a
                    # forward with an owner- sender runs once per address, so that each
                    # outcome is that address's own
                    key = dest.name if isinstance(dest, Account) else (repr(dest), address)
                    groups.setdefault(key, (dest, []))[1].append((i, address, params))
            else:  # another avatar's IMessage
                others.append(_deliver_imessage(recipient, self.data))
        if self.queued and self.delivery.queue is None:
            return defer.fail(RuntimeError("remote recipients but no queue"))
        if groups:
            self.maillog.write(
                "qmgr", f"{self.envelope.queue_id}: from=<{self.sender}>, size={len(self.data)},"
                f" nrcpt={len(self.envelope.recipients)} (queue active)")
        copies = []
        for dest, triples in groups.values():
            d = self.delivery.deliver(
                self.data, self.sender, [(a, dest) for _, a, _ in triples],
                self.envelope.queue_id, arrival=self.arrival, standalone=False)
            d.addCallbacks(self._copy_written, self._copy_failed,
                           callbackArgs=(dest, triples), errbackArgs=(dest, triples))
            copies.append(d)
        if len(copies) + len(others) == 1:  # the usual case: one mailbox, no list around it
            return (copies or others)[0].addCallback(self._queue_rest)
        done = defer.gatherResults(copies + others, consumeErrors=True)
        done.addCallback(self._queue_rest)
        done.addErrback(
            lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f
        )
        return done

    def _queue(self, i: int, recipient: queuefile.QueuedRecipient) -> None:
        self.queued.append(recipient)
        self.results[i] = Result(QUEUED)

    def _copy_written(self, _: Any, dest: Any,
                      triples: list[tuple[int, str, addr.RcptParams]]) -> None:
        if isinstance(dest, forward.Remote):  # forwarded under a queue id of its own
            self.forwarded = True
        else:
            self.delivered.extend((a, p) for _, a, p in triples)

    def _copy_failed(self, failure: Failure, dest: Any,
                     triples: list[tuple[int, str, addr.RcptParams]]) -> None:
        """A copy that failed is not the whole message's failure once there is a queue: a
        mailbox that cannot be written now, or a |command or /file that failed temporarily, is
        queued and retried (Postfix defers it); a command or file that failed for good bounces
        to the sender (or the alias's owner-). Other copies are not written twice by a client
        resending the whole message."""
        if self.delivery.queue is None or isinstance(dest, forward.Remote):
            failure.raiseException()
        error = over_quota(failure) if isinstance(dest, Account) else target_failure(failure)
        for i, address, params in triples:
            if error is not None and error.permanent:
                self.bounced.append((address, params, dest, error))
                if self.results[i].status == DELIVERED:
                    self.results[i] = Result(BOUNCED, 550, error.dsn, error.text)
            else:
                self._queue(i, _queued(address, dest.name, params))

    def _queue_rest(self, _: Any) -> Any:
        self._success_notices()
        self._failure_notices()
        if not self.queued:
            if self.delivered or self.bounced or self.forwarded:
                self.maillog.write("qmgr", f"{self.envelope.queue_id}: removed")
            return self.results
        p = self.envelope.params
        env = queuefile.Envelope(
            self.envelope.queue_id, self.sender, self.queued, self.arrival, ret=p.ret,
            envid=p.envid, smtputf8=p.smtputf8, body=p.body, client=self.envelope.client.label)
        return self.delivery.queue.enqueue(env, self.data).addCallback(lambda _: self.results)

    def _notice(self, kind: str, sender: str, entries: list[Entry], what: str) -> None:
        """Queue an RFC 3464 report of ``kind`` to ``sender`` (not waited for: logged)."""
        p = self.envelope.params
        env = queuefile.Envelope(self.envelope.queue_id, sender, [], self.arrival, ret=p.ret,
                                 envid=p.envid, smtputf8=p.smtputf8)
        report = make_dsn(kind, env, entries, self.data, self.pipeline.hostname,
                          self.pipeline.now())
        d = self.delivery.queue.submit("", [sender], report, smtputf8=p.smtputf8)
        d.addCallbacks(self._notice_logged, lambda f: log.failure(f"{what} failed", f),
                       callbackArgs=(what,))

    def _notice_logged(self, notice: Any, what: str) -> None:
        if notice is not None:
            self.maillog.write("bounce", f"{self.envelope.queue_id}: {what}: {notice.queue_id}")

    def _failure_notices(self) -> None:
        """Commands and files that failed for good: an RFC 3464 bounce to the sender (the
        alias's owner- when it has one); none for the null sender or NOTIFY without FAILURE."""
        to: dict[str, list[Entry]] = {}
        for address, params, dest, error in self.bounced:
            sender = (getattr(dest, "sender", "") or self.sender) if self.sender else ""
            if not sender or (params.notify and "FAILURE" not in params.notify):
                continue
            to.setdefault(sender, []).append(
                Entry(_queued(address, None, params), error.dsn, error.text))
        for sender, entries in to.items():
            self._notice("failed", sender, entries, "sender non-delivery notification")

    def _success_notices(self) -> None:
        """NOTIFY=SUCCESS for mailbox deliveries: a "delivered" DSN to the sender."""
        wanted = [(a, p) for a, p in self.delivered if p.notify and "SUCCESS" in p.notify]
        if not wanted or not self.sender or self.delivery.queue is None:
            return
        entries = [Entry(_queued(a, None, rp), "2.0.0", "delivered to mailbox")
                   for a, rp in wanted]
        self._notice("delivered", self.sender, entries, "sender delivery status notification")


def received_by(hostname: str, uid: int, queue_id: str, when: float) -> bytes:
    """The Received: line Postfix's pickup/cleanup gives locally submitted mail."""
    date = email.utils.formatdate(when, localtime=True)
    return (f"Received: by {hostname} (mailsuite, from userid {uid})\n\tid {queue_id};"
            f" {date}\n").encode()


def _deliver_imessage(recipient: Callable[[], Any], data: bytes) -> defer.Deferred[Any]:
    """An avatar's own ``smtp.IMessage`` (not LocalDelivery's): fed line by line."""
    message = recipient()
    for line in data.split(b"\n")[:-1]:
        message.lineReceived(line)
    return defer.maybeDeferred(message.eomReceived)


def _queued(address: str, user: str | None, params: addr.RcptParams,
            original: str | None = None) -> queuefile.QueuedRecipient:
    orcpt = params.orcpt or (f"rfc822;{original}" if original else None)
    notify = list(params.notify) if params.notify else None
    return queuefile.QueuedRecipient(address, user=user, notify=notify, orcpt=orcpt)


def _refusal(failure: Failure, address: str) -> Result:
    """A failed recipient look-up as its Result (an unexpected error: logged, deferred)."""
    if failure.check(smtp.SMTPServerError):
        e = failure.value
        resp, dsn = error_status(e)
        reason = resp.removeprefix(dsn).strip().removeprefix(f"<{address}>: ")
        return Result(DEFERRED if e.code < 500 else REFUSED, e.code, dsn, reason)
    log.failure("recipient look-up for {address} failed", failure, address=address)
    return Result(DEFERRED, 451, "4.3.0", "internal error")


class _Alone:
    """LMTP's and the pickup's routing: each recipient delivered on its own (see module doc)."""

    def __init__(self, pipeline: Pipeline, message: Message) -> None:
        self.pipeline = pipeline
        self.delivery = pipeline.delivery
        self.envelope = message.envelope
        self.data = message.data

    def run(self) -> defer.Deferred[list[Result]]:
        if self.envelope.client.door == LMTP:  # every reply at once
            each = [self._one(r) for r in self.envelope.recipients]
            return defer.gatherResults(each)
        return self._one_by_one()

    @defer.inlineCallbacks
    def _one_by_one(self) -> Any:
        results = []
        for rcpt in self.envelope.recipients:
            results.append((yield self._one(rcpt)))
        return (yield self.return_refused(results))

    def _copy(self, address: str) -> bytes:
        if self.envelope.client.door != LMTP:
            return self.data
        c, p = self.envelope.client, self.pipeline
        top = received_header(c.helo, c.name, c.address, p.hostname, c.protocol,
                              self.envelope.queue_id, [address], p.now())
        return top + b"\n" + self.data

    @defer.inlineCallbacks
    def _one(self, rcpt: Recipient) -> Any:
        env, address = self.envelope, rcpt.address
        when = {} if env.arrival is None else {"arrival": env.arrival}
        try:
            dests = rcpt.route
            if dests is None:
                _, _, domain = address.rpartition("@")
                queue = getattr(self.delivery, "queue", None)
                if queue is not None and not self.delivery.is_local_domain(domain):
                    yield queue.submit(env.sender, [address], self.data)  # durable in the queue
                    return Result(QUEUED)
                dests = yield self.delivery.resolve(address)
            yield self.delivery.deliver(self._copy(address), env.sender,
                                        [(address, d) for d in dests], env.queue_id, **when)
        except defer.CancelledError:
            raise
        except smtp.SMTPServerError as e:
            return self._refused(e, address)
        except Exception:  # the recipient's own Result, never the others'
            return self._failed(Failure(), address)
        return Result(DELIVERED)

    def _refused(self, error: smtp.SMTPServerError, address: str) -> Result:
        """A pickup recipient the look-up refused, logged as local(8) would."""
        result = _refusal(Failure(error), address)
        resp = error_status(error)[0]
        status = "deferred" if result.status == DEFERRED else "bounced"
        env = self.envelope
        delay = self.pipeline.now() - (env.arrival or 0.0)
        self.pipeline.maillog.write(
            "local", f"{env.queue_id}: to=<{address}>, relay=none, delay={delay:.2g},"
            f" dsn={result.dsn}, status={status} ({resp})")
        return result

    def _failed(self, failure: Failure, address: str) -> Result:
        """A failed deliver(): refused when its |command or /file failed for good (LMTP: every
        failed copy; pickup: the first command or file), else deferred."""
        causes = getattr(failure.value, "failures", None) if failure.check(DeliveryFailed) \
            else None
        targets = [c.value for c in causes or () if c.check(forward.TargetFailed)]
        if (quota := quota_reply(failure)) is not None:  # over quota (store/quota.py)
            return Result(REFUSED if quota[0] >= 500 else DEFERRED, *quota)  # pickup: bounced
        if self.envelope.client.door == LMTP:
            if causes and len(targets) == len(causes) and all(t.permanent for t in targets):
                return Result(REFUSED, 550, targets[0].dsn, targets[0].text)
            if causes and causes[0].check(forward.TargetFailed):
                return Result(DEFERRED, 451, targets[0].dsn, targets[0].text)
            log.failure("LMTP delivery to {address}", failure, address=address)
            return Result(DEFERRED, 451, "4.3.0", "Error: cannot write the message")
        if causes is None:
            log.failure("maildrop {id}: delivery to {rcpt} failed", failure,
                        id=self.envelope.queue_id, rcpt=address)
            return Result(DEFERRED, 451, "4.3.0", "internal error")
        if not targets:
            return Result(DEFERRED, 451, "4.3.0", str(failure.value))
        first = targets[0]
        return Result(REFUSED if first.permanent else DEFERRED, 550 if first.permanent else 451,
                      first.dsn, first.text)

    @defer.inlineCallbacks
    def return_refused(self, results: list[Result]) -> Any:
        """Bounce the refused recipients in one report (bounce(8)); if it cannot be written,
        they are deferred, to be refused (and bounced) again next time."""
        refused = [(rcpt, r) for rcpt, r in zip(self.envelope.recipients, results, strict=False)
                   if r.status == REFUSED]
        if not refused:
            return results
        env = self.envelope
        queue = getattr(self.delivery, "queue", None)
        if queue is None:
            log.warn("maildrop {id}: no queue to return the message to <{sender}>",
                     id=env.queue_id, sender=env.sender)
            return results
        entries = [Entry(queuefile.QueuedRecipient(rcpt.address), r.dsn, r.text)
                   for rcpt, r in refused]
        report = queuefile.Envelope(env.queue_id, env.sender, [e.recipient for e in entries],
                                    env.arrival or 0.0, size=len(self.data))
        try:
            yield queue.notify(report, self.data, "failed", entries, self.pipeline.now())
        except defer.CancelledError:
            raise
        except Exception:  # the recipients stay, and are tried again
            log.failure("maildrop {id}: cannot queue the bounce", id=env.queue_id)
            return [Result(DEFERRED, 451, "4.3.0", "cannot queue the bounce")
                    if r.status == REFUSED else r for r in results]
        return [Result(BOUNCED, r.code, r.dsn, r.text) if r.status == REFUSED else r
                for r in results]
