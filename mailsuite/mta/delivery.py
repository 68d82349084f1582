"""Local delivery, the part of Postfix's trivial-rewrite + local(8) that SMTP in needs.

``resolve`` decides whether an address is ours (``mydestination`` + ``alias_maps`` + Unix
accounts) and to which accounts it goes; ``deliver`` writes one copy per account through the
store (Return-Path, X-Original-To and Delivered-To prepended as Postfix local does) and logs one
Postfix-shaped ``status=sent`` line per recipient; ``avatar`` is what the realm hands the SMTP
server: an ``smtp.IMessageDelivery`` (mailsuite.mta.accept.DeliveryAvatar, which also holds the
RCPT refusals).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from mailsuite.accounts import Account
from mailsuite.config import Config
from mailsuite.maillog import format_delay, new_queue_id
from mailsuite.mta import forward
from mailsuite.mta.accept import (
    AliasLoop,
    DeliveryAvatar,
    LookupFailed,
    RecipientRejected,
    RelayDenied,
    UnknownRecipient,
    UnsupportedRecipient,
    error_status,
    split_address,
)
from mailsuite.mta.aliases import AliasLookupError, AliasMap
from mailsuite.mta.queuefile import Envelope, QueuedRecipient
from mailsuite.mta.relay import Outcome
from mailsuite.mta.rewrite import split_extension
from mailsuite.net import in_networks
from mailsuite.store.interfaces import IMailStore, StoreRefused
from mailsuite.store.quota import QuotaExceeded
from mailsuite.store.spam import spam_marked
from mailsuite.threads import Blocking
from mailsuite.mta.failures import (  # (DeliveryFailed: importable from here as before)
    DeliveryFailed,
    failure_outcome,
    is_special,
    lock_of,
    quota_reply,
)

log = Logger()

#: How long a successful recipient look-up is reused, and how many are kept.
RESOLVE_CACHE_TTL = 2.0
RESOLVE_CACHE_SIZE = 10000
#: Group commit: at most this many messages / bytes in one write to one mailbox.
BATCH_MESSAGES = 200
BATCH_BYTES = 32 * 1024 * 1024


class LocalDelivery:
    """Resolves local recipients and writes messages into their INBOX through the store.

    ``accounts.recipient(name) -> Account | None`` is blocking (it reads passwd): it runs
    through ``blocking`` (mailsuite.threads), together with the alias expansion (which may
    re-read alias files) and the deliveries to |commands and /files.
    """

    def __init__(
        self,
        config: Config,
        accounts: Any,
        store: IMailStore,
        maillog: Any,
        blocking: Blocking,
        now: Callable[[], float] = time.time,
        aliases: AliasMap | None = None,
    ) -> None:
        mail = config.mail
        self.myhostname: str = mail.myhostname
        self.myorigin: str = mail.myorigin
        self.local_domains = {d.lower().rstrip(".") for d in mail.mydestination}
        # A user's own sender addresses: user@ any local domain, @$myorigin and @$mydomain too
        # (the tutorial's boss@linuxprobe.com when mydestination names only mail.linuxprobe.com).
        self.own_domains = self.local_domains | {
            d.lower().rstrip(".") for d in (mail.myorigin, mail.mydomain)
        }
        self.accounts = accounts
        self.store = store
        self.maillog = maillog
        self.blocking = blocking
        self.now = now
        self.aliases = aliases or AliasMap(mail.alias_maps, self.local_domains,
                                           warn=self._alias_warning)
        self.expander = forward.Expander(self.aliases, accounts, self.myorigin, self.local_domains,
                                         mail.default_privs or forward.DEFAULT_PRIVS,
                                         mail.recipient_delimiter)
        self.mynetworks = list(mail.mynetworks)
        self.relay_domains = [d.lower().rstrip(".") for d in mail.relay_domains]
        #: in_mynetworks answers per client IP, for this very ``mynetworks`` list
        self._trusted_ips: dict[str, bool] = {}
        self._trusted_nets: list[Any] = self.mynetworks
        #: the mailsuite.mta.queue.Queue for remote recipients (None: local delivery only)
        self.queue: Any = None
        #: (dest, data, sender, original, final, now) -> Deferred[str]: where commands and files
        #: of .forward are delivered when not here (privsep: the agent of their user)
        self.special: Any = None
        self._resolved: dict[str, tuple[float, list[Any]]] = {}
        self._pending: dict[tuple[str, bool], list[tuple[bytes, str, defer.Deferred[None]]]] = {}
        self._writing: set[tuple[str, bool]] = set()
        #: mailsuite.mta.virtual.VirtualAliases (virtual_alias_maps; None: none)
        self.virtual: Any = None
        #: the batches of group commit are spam or not by this field (the store's decision)
        self.spam_header = config.mailbox.spam_header if config.mailbox.junk else ""

    def _alias_warning(self, text: str) -> None:
        """A problem of an alias file, for the maillog (from the thread that read the file)."""
        self.maillog.write_from_any_thread("local", f"warning: {text}")

    def avatar(self, user: str | None) -> DeliveryAvatar:
        return DeliveryAvatar(self, user)

    def is_local_domain(self, domain: str) -> bool:
        """In mydestination, or a virtual alias domain (both are ours to take mail for)."""
        return domain.lower().rstrip(".") in self.local_domains or (
            self.virtual is not None and self.virtual.is_domain(domain))

    def sender_owned(self, address: str, user: str) -> defer.Deferred[bool]:
        """Whether ``user`` may send as ``address``: the null sender, ``user@`` (``user+ext@``
        with a recipient_delimiter) a local domain, myorigin or mydomain (a bare ``user`` too),
        or an alias there whose expansion (through
        other aliases and local addresses, not ~/.forward) includes ``user``."""
        if address == "":
            return defer.succeed(True)
        local, domain = split_address(address)
        if domain is not None and domain.lower().rstrip(".") not in self.own_domains:
            return defer.succeed(False)
        base = split_extension(local, self.expander.recipient_delimiter)[0]  # boss+news: boss's
        if user.lower() in (local.lower(), base.lower()):
            return defer.succeed(True)
        return self.blocking(self._alias_reaches, local.lower(), user.lower())

    def _alias_reaches(self, name: str, user: str) -> bool:
        try:
            table, _ = self.aliases.snapshot()
        except AliasLookupError:
            return False
        seen: set[str] = set()
        todo = [name]
        while todo:
            name = todo.pop()
            if name == user:
                return True
            if name in seen:
                continue
            seen.add(name)
            for target in table.get(name, ()):
                kind, text = target.kind, target.text
                if kind == "user":
                    todo.append(text[1:].lower())
                elif kind == "name":
                    todo.append(text.lower())
                elif kind == "address":
                    there, _, where = text.rpartition("@")
                    if self.is_local_domain(where):
                        todo.append(there.strip('"').lower())
        return False

    def is_relay_domain(self, domain: str) -> bool:
        """In relay_domains, or a subdomain of one (Postfix parent_domain_matches_subdomains)."""
        name = domain.lower().rstrip(".")
        return any(name == d or name.endswith("." + d) for d in self.relay_domains)

    def in_mynetworks(self, ip: str) -> bool:
        known = self._trusted_ips.get(ip)
        if known is not None and self._trusted_nets is self.mynetworks:
            return known
        trusted = in_networks(ip, self.mynetworks)
        if self._trusted_nets is not self.mynetworks or len(self._trusted_ips) >= 10000:
            self._trusted_ips, self._trusted_nets = {}, self.mynetworks
        self._trusted_ips[ip] = trusted
        return trusted

    # --- the queue's local transport (mailsuite.mta.queue.LocalTransport) ---------------------

    def classify(self, address: str) -> defer.Deferred[list[QueuedRecipient]]:
        """Queue recipients for a new message to ``address`` (a notification): one per
        destination it resolves to (aliases, ~/.forward): an account's mailbox (``user`` its
        name), a |command or /file (``user`` the target's name: ``deliver_users`` resolves the
        address again and runs that target), a remote alias target (delivered over SMTP), or
        the address itself when it is remote."""
        _, domain = split_address(address)
        if domain is not None and not self.is_local_domain(domain):
            return defer.succeed([QueuedRecipient(address)])
        return self.resolve(address).addCallback(self._queued_for, address)

    @staticmethod
    def _queued_for(found: list[Any], address: str) -> list[QueuedRecipient]:
        out = []
        for dest in found:
            if isinstance(dest, forward.Remote):
                out.append(QueuedRecipient(dest.address, orcpt=f"rfc822;{address}"))
            else:
                out.append(QueuedRecipient(address, user=dest.name))
        return out

    @defer.inlineCallbacks
    def deliver_users(
        self, data: bytes, envelope: Envelope, recipients: list[QueuedRecipient]
    ) -> Any:
        """Deliver a queued message to local destinations; one Outcome per recipient, in order.

        ``user`` is an account (its mailbox: 5.1.1 when the account is gone, 4.3.0 when the
        mailbox cannot be written) or a |command or /file target: the address is resolved again
        (as local(8) expands at delivery) and that target alone is run; its failure is 5.x.x
        (bounce) or 4.x.x (retry) as forward.TargetFailed says."""
        names = [r.user or "" for r in recipients]
        accounts = yield self.blocking(
            lambda: [None if is_special(n) else self.accounts.recipient(n) for n in names])
        copies = []
        for r, account in zip(recipients, accounts, strict=True):
            if is_special(r.user):
                copies.append(self._deliver_target(data, envelope, r))
            elif account is None:
                copies.append(defer.succeed(None))
            else:
                copies.append(self.deliver(data, envelope.sender, [(r.address, account)],
                                           envelope.queue_id, arrival=envelope.arrival,
                                           standalone=False))
        results = yield defer.DeferredList(copies, consumeErrors=True)
        outcomes = []
        for r, account, (ok, result) in zip(recipients, accounts, results, strict=True):
            if is_special(r.user):
                outcomes.append(result if ok else failure_outcome(result))
            elif account is None:
                text = f"unknown user: \"{r.user}\""
                self.maillog.write("local", f"{envelope.queue_id}: to=<{r.address}>, relay=local,"
                                   f" dsn=5.1.1, status=bounced ({text})")
                outcomes.append(Outcome(550, "5.1.1", text, "local"))
            elif ok:
                outcomes.append(Outcome(250, "2.0.0", "delivered to mailbox", "local"))
            else:
                outcomes.append(Outcome(451, "4.3.0", f"cannot append message to mailbox: "
                                        f"{result.value}", "local", lock=lock_of(result)))
        return outcomes

    @defer.inlineCallbacks
    def _deliver_target(self, data: bytes, envelope: Envelope, r: QueuedRecipient) -> Any:
        """Resolve ``r.address`` again and run its |command or /file ``r.user`` once more."""
        try:
            found = yield self.resolve(r.address)
        except smtp.SMTPServerError as e:
            resp, dsn = error_status(e)
            return Outcome(550 if e.code >= 500 else 451, dsn, resp, "local")
        wanted = [dest for dest in found if dest.name == r.user]
        if not wanted:
            text = f"{r.user} is no longer a destination of {r.address}"
            self.maillog.write("local", f"{envelope.queue_id}: to=<{r.address}>, relay=local,"
                               f" dsn=5.1.1, status=bounced ({text})")
            return Outcome(550, "5.1.1", text, "local")
        yield self.deliver(data, envelope.sender, [(r.address, wanted[0])], envelope.queue_id,
                           arrival=envelope.arrival, standalone=False)
        return Outcome(250, "2.0.0", f"delivered to {r.user}", "local")

    def resolve(self, address: str) -> defer.Deferred[list[Account]]:
        """The accounts ``address`` delivers to; errback with a RecipientRejected subclass."""
        try:
            cached = self.resolve_cached(address)
        except RecipientRejected:
            return defer.fail()
        if cached is not None:
            return defer.succeed(cached)
        key = address.lower()
        d = self.blocking(self._resolve_blocking, address, split_address(address)[0])
        return d.addCallback(self._remember, key, self.now())

    def resolve_cached(self, address: str) -> list[Any] | None:
        """What ``resolve`` gives without a look-up: the cached accounts (a new list), None
        when the address must be looked up; raises RelayDenied / UnknownRecipient at once."""
        local, domain = split_address(address)
        if domain is not None and not self.is_local_domain(domain):
            raise RelayDenied(address)
        if not local:
            raise UnknownRecipient(address)
        cached = self._resolved.get(address.lower())
        if cached is not None and cached[0] > self.now():
            return list(cached[1])
        return None

    def _remember(self, found: list[Any], key: str, now: float) -> list[Any]:
        """Keep a successful look-up for RESOLVE_CACHE_TTL seconds (Postfix caches too):
        a busy MX then resolves each recipient without a thread hop."""
        if len(self._resolved) >= RESOLVE_CACHE_SIZE:
            self._resolved.clear()
        self._resolved[key] = (now + RESOLVE_CACHE_TTL, list(found))
        return found

    def forget_lookups(self) -> None:
        """Drop cached recipient look-ups (after newaliases, for instance)."""
        self._resolved.clear()

    def _resolve_blocking(self, address: str, local: str) -> list[Any]:
        """Accounts, plus forward.Program/File for |command and /file targets and
        forward.Remote for addresses in other domains (aliases.py, forward.py); a remote alias
        target is refused (451) only when there is no queue to forward it."""
        try:
            found = self._expand(address, local)
        except AliasLookupError as e:  # virtual.VirtualLookupError too
            log.error("alias lookup for {address} failed: {error}", address=address, error=e)
            raise LookupFailed(address) from e
        except forward.Refused as e:
            if e.kind == "unknown":
                raise UnknownRecipient(address) from e
            if e.kind == "loop":
                raise AliasLoop(address) from e
            raise
        if self.queue is None:
            for dest in found:
                if isinstance(dest, forward.Remote):
                    raise UnsupportedRecipient(address, target=f'"{dest.address}" (remote)')
        return found

    def _expand(self, address: str, local: str) -> list[Any]:
        """(blocking) The destinations: through virtual_alias_maps first, then local(8)'s."""
        if self.virtual is not None:
            found = self.virtual.destinations(
                address, self.expander.expand,
                lambda domain: domain.lower().rstrip(".") in self.local_domains,
                lambda final: forward.Remote(final, "virtual_alias_maps"))
            if found is not None:
                return found
        return self.expander.expand(local, address)

    def final_address(self, address: str, account: Account) -> str:
        """The address local(8) delivers to: the original one unless an alias changed it."""
        local, domain = split_address(address)
        if domain is not None and local.lower() == account.name.lower():
            return f"{account.name}@{domain.lower()}"
        user = split_extension(local, self.expander.recipient_delimiter)[0]
        if domain is not None and user.lower() == account.name.lower():
            # boss+news@ keeps its extension, as Postfix's local(8) writes it
            return f"{account.name}{local[len(user):]}@{domain.lower()}"
        return f"{account.name}@{self.myorigin}"

    def deliver(
        self,
        data: bytes,
        sender: str,
        recipients: list[tuple[str, Account]],
        queue_id: str,
        arrival: float | None = None,
        standalone: bool = True,
    ) -> defer.Deferred[None]:
        """Write one copy per distinct account; fire once every copy is on disk.

        ``data`` is the message as stored (LF line ends, Received: already on top). Any failed
        copy makes the Deferred fail with DeliveryFailed, after all copies have finished.
        ``standalone`` False: the caller (SMTP server, queue) logs the qmgr lines itself.
        Besides accounts, ``recipients`` may name forward.Program/File (run or appended) and
        forward.Remote (a new queue file, with the owner- sender if the alias has one, as
        local(8) forwards: fires once that file is on disk).
        """
        start = self.now()
        arrival = start if arrival is None else arrival
        groups: dict[str, tuple[Account, list[str]]] = {}
        for address, account in recipients:
            groups.setdefault(account.name, (account, []))[1].append(address)
        if standalone:
            self.maillog.write(
                "qmgr",
                f"{queue_id}: from=<{sender}>, size={len(data)}, nrcpt={len(recipients)}"
                " (queue active)",
            )
        copies = []
        for account, addresses in groups.values():
            if isinstance(account, forward.Remote):
                copies.extend(self._forward(account, data, sender, addresses, queue_id,
                                            arrival, start))
                continue
            if not isinstance(account, Account):  # |command or /file (mailsuite.mta.forward)
                copies.extend(self._deliver_special(account, data, sender, addresses, queue_id,
                                                    arrival, start))
                continue
            final = self.final_address(addresses[0], account)
            top = f"Return-Path: <{sender}>\nX-Original-To: {addresses[0]}\nDelivered-To: {final}\n"
            d = self._commit(account, top.encode("utf-8", "replace") + data, sender)
            d.addBoth(self._log_copy, queue_id, account, addresses, arrival, start)
            copies.append(d)
        if len(copies) == 1:  # the usual case: no DeferredList around one copy
            return copies[0].addBoth(self._one_written, queue_id, standalone)
        done = defer.DeferredList(copies, consumeErrors=True)
        return done.addCallback(self._all_written, queue_id, standalone)

    def _commit(self, account: Account, data: bytes, sender: str) -> defer.Deferred[None]:
        """Group commit: copies for one INBOX that arrive while a write to it is under way are
        written together by the next write (one lock, one fsync); each fires after its fsync.
        Spam (mailsuite.store.spam), which the store puts into Junk, is batched apart."""
        waiter: defer.Deferred[None] = defer.Deferred()
        key = (account.name, spam_marked(data, self.spam_header))
        self._pending.setdefault(key, []).append((data, sender, waiter))
        if key not in self._writing:
            self._write_batch(account, key)
        return waiter

    def _write_batch(self, account: Account, key: tuple[str, bool]) -> None:
        pending = self._pending.get(key, [])
        batch: list[tuple[bytes, str, defer.Deferred[None]]] = []
        size = 0
        while pending and len(batch) < BATCH_MESSAGES and size < BATCH_BYTES:
            batch.append(pending.pop(0))
            size += len(batch[-1][0])
        if not pending:
            self._pending.pop(key, None)
        if not batch:
            self._writing.discard(key)
            return
        self._writing.add(key)
        d = defer.maybeDeferred(self.store.deliver_many, account, [(m, s) for m, s, _ in batch])

        def written(result: Any) -> Any:
            if isinstance(result, Failure) and len(batch) > 1 and result.check(QuotaExceeded):
                return self._one_by_one(account, batch).addBoth(
                    lambda _: self._write_batch(account, key))  # those that fit go in
            for _, _, waiter in batch:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)
            self._write_batch(account, key)
            return None

        d.addBoth(written)

    @defer.inlineCallbacks
    def _one_by_one(self, account: Account,
                    batch: list[tuple[bytes, str, defer.Deferred[None]]]) -> Any:
        """A group commit over quota as a whole: each copy written alone, in order, so that
        those that fit are taken and only the others refused (store/quota.py)."""
        for data, sender, waiter in batch:
            try:
                yield defer.maybeDeferred(self.store.deliver_many, account, [(data, sender)])
            except Exception:  # this copy's own failure (CancelledError is not an Exception)
                waiter.errback()
            else:
                waiter.callback(None)

    def _deliver_special(self, dest: Any, data: bytes, sender: str, addresses: list[str],
                         queue_id: str, arrival: float, start: float) -> list[Any]:
        """One run of the command / append to the file per original address; logged as local(8)."""
        copies = []
        for address in addresses:
            if self.special is not None:  # privilege separation: the user's agent runs it
                d = self.special(dest, data, sender, address, address, self.now())
            else:
                d = self.blocking(forward.deliver_special, dest, data, sender, address,
                                  address, self.now())
            d.addBoth(self._log_special, queue_id, address, arrival, start)
            copies.append(d)
        return copies

    def _forward(self, dest: forward.Remote, data: bytes, sender: str, addresses: list[str],
                  queue_id: str, arrival: float, start: float) -> list[Any]:
        """A remote alias target: one new queue file per original address (logged as
        local(8)'s ``status=sent (forwarded as ID)``)."""
        if dest.sender and sender:  # owner-NAME; a null sender stays null (no bounce loops)
            sender = dest.sender
        copies = []
        for address in addresses:
            if self.queue is None:
                d: defer.Deferred[Any] = defer.fail(forward.TargetFailed(
                    False, "4.3.0", f"no queue to forward to {dest.address}"))
            else:
                env = Envelope(new_queue_id(), sender, [QueuedRecipient(
                    dest.address, orcpt=f"rfc822;{address}")], self.now())
                d = self.queue.enqueue(env, data)
                d.addCallback(lambda env: f"forwarded as {env.queue_id}")
            d.addBoth(self._log_special, queue_id, address, arrival, start, dest.address)
            copies.append(d)
        return copies

    def _log_special(self, result: Any, queue_id: str, address: str, arrival: float,
                     start: float, forwarded_to: str | None = None) -> Any:
        end = self.now()
        delays = "/".join(format_delay(x) for x in (start - arrival, 0, 0, end - start))
        if isinstance(result, Failure) and result.check(forward.TargetFailed):
            failed = result.value
            dsn = failed.dsn
            status = f"{'bounced' if failed.permanent else 'deferred'} ({failed.text})"
        elif isinstance(result, Failure):
            log.failure("delivery of {queue_id} failed", result, queue_id=queue_id)
            dsn, status = "4.3.0", f"deferred ({result.value})"
        else:
            dsn, status = "2.0.0", f"sent ({result})"
        to = f"<{forwarded_to}>, orig_to=<{address}>" if forwarded_to else f"<{address}>"
        self.maillog.write(
            "local",
            f"{queue_id}: to={to}, relay=local, delay={format_delay(end - arrival)},"
            f" delays={delays}, dsn={dsn}, status={status}",
        )
        return result

    def _log_copy(
        self,
        result: Any,
        queue_id: str,
        account: Account,
        addresses: list[str],
        arrival: float,
        start: float,
    ) -> Any:
        end = self.now()
        delays = "/".join(format_delay(x) for x in (start - arrival, 0, 0, end - start))
        quota = quota_reply(result) if isinstance(result, Failure) else None
        if quota is not None:  # over quota (store/quota.py): bounced, or retried for a 4xx
            dsn, status = quota[1], (f"{'bounced' if quota[0] >= 500 else 'deferred'}"
                                     f" (cannot append message to mailbox: {result.value})")
        elif isinstance(result, Failure) and result.check(StoreRefused):
            # a mailbox not owned by the recipient, hard-linked, not a regular file, behind a
            # symlink: deferred as Postfix local(8) defers it, until the administrator looks
            log.warn("delivery of {queue_id} to {user} refused: {why}",
                     queue_id=queue_id, user=account.name, why=result.value)
            dsn, status = "4.2.0", f"deferred (cannot append message to mailbox: {result.value})"
        elif isinstance(result, Failure):
            log.failure(
                "delivery of {queue_id} to {user} failed",
                result,
                queue_id=queue_id,
                user=account.name,
            )
            dsn, status = "4.3.0", f"deferred (cannot append message to mailbox: {result.value})"
        else:
            dsn, status = "2.0.0", "sent (delivered to mailbox)"
        for address in addresses:
            final = self.final_address(address, account)
            orig = "" if final.lower() == address.lower() else f", orig_to=<{address}>"
            self.maillog.write(
                "local",
                f"{queue_id}: to=<{final}>{orig}, relay=local, delay={format_delay(end - arrival)},"
                f" delays={delays}, dsn={dsn}, status={status}",
            )
        return result

    def _one_written(self, result: Any, queue_id: str, standalone: bool) -> None:
        """``_all_written`` for a single copy."""
        self._all_written([(not isinstance(result, Failure), result)], queue_id, standalone)

    def _all_written(
        self, results: list[tuple[bool, Any]], queue_id: str, standalone: bool = True
    ) -> None:
        failures = [r for ok, r in results if not ok]
        if failures:
            error = DeliveryFailed(
                f"{len(failures)} of {len(results)} copies not written: {failures[0].value}"
            )
            error.failures = failures
            raise error
        if standalone:
            self.maillog.write("qmgr", f"{queue_id}: removed")
