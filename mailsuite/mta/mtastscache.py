"""The MTA-STS policy of a destination, cached across restarts (RFC 8461 3.3, 5.1, 10.2).

:meth:`MtaSts.policy_for` answers "which policy applies to mail for DOMAIN now?":

- the ``_mta-sts`` TXT record is looked up every time (through our resolver); a policy is
  fetched when there is no cached one, when the record's ``id`` differs from the cached
  policy's, and when the cached one is older than half its ``max_age`` (a refresh before it
  expires, so that an attacker who blocks the fetch at expiry time finds it still cached);
- a cached, unexpired policy is used when the TXT record is missing or its look-up failed, and
  when the fetch fails (5.1: "senders MUST apply that cached policy");
- without one, a failed fetch means no policy (3.3: deliver as if the domain had none), and
  the failure goes to TLS-RPT (``report``) when a recorder is given; the same record id is
  not fetched again for RETRY_AFTER seconds (a new id is fetched at once);
- a fetched policy with ``mode: none`` replaces the cached one (how a domain withdraws), and
  :meth:`policy_for` returns it: callers treat mode none as no policy.

The cache is a JSON file (``queue_directory/mta-sts/policies.json``), replaced atomically
(fsutil.atomic_write, in a pool thread) after every change; stamps are the injected clock's
seconds (the reactor's: wall-clock epoch), so they mean the same after a restart. Each entry
keeps the policy text as fetched and is parsed again when loaded (a bad entry is dropped).
At most MAX_ENTRIES domains are kept (the least recently fetched go first).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailsuite.fsutil import atomic_write
from mailsuite.mta.mtasts import PolicyError, StsPolicy, parse_policy
from mailsuite.mta.mtastsfetch import FetchError, TxtLookupError, sts_record
from mailsuite.threads import Blocking

log = Logger()

MAX_ENTRIES = 10000
#: after a failed fetch, the same record id is not fetched again for this long (3.3 lets
#: senders limit fetch attempts: a domain whose policy host is down must not cost every
#: delivery a fetch and its time limit)
RETRY_AFTER = 600.0
CACHE_DIR = "mta-sts"
CACHE_FILE = "policies.json"
#: Report(policy_domain, policy or None, result_type, text): a failure for TLS-RPT
Report = Callable[[str, "StsPolicy | None", str, str], None]


@dataclass(frozen=True)
class CachedPolicy:
    policy: StsPolicy
    record_id: str
    fetched: float  # clock seconds of the fetch

    def expired(self, now: float) -> bool:
        return now >= self.fetched + self.policy.max_age

    def stale(self, now: float) -> bool:
        """Old enough to be fetched again before it expires (half its max_age)."""
        return now >= self.fetched + self.policy.max_age / 2


def cache_path(queue_directory: str) -> str:
    return os.path.join(queue_directory, CACHE_DIR, CACHE_FILE)


def load_cache(path: str) -> dict[str, CachedPolicy]:
    """The entries of a cache file ({} when there is none; a bad entry or file is dropped)."""
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warn("MTA-STS cache {path} unreadable, starting empty: {e}", path=path, e=e)
        return {}
    entries: dict[str, CachedPolicy] = {}
    for domain, item in (raw.get("policies", {}) if isinstance(raw, dict) else {}).items():
        try:
            policy = parse_policy(item["text"].encode("utf-8"), domain)
            entries[domain] = CachedPolicy(policy, str(item["id"]), float(item["fetched"]))
        except (KeyError, TypeError, ValueError, AttributeError, PolicyError):
            continue
    return entries


def dump_cache(entries: dict[str, CachedPolicy]) -> bytes:
    policies = {domain: {"id": e.record_id, "fetched": e.fetched, "text": e.policy.text}
                for domain, e in sorted(entries.items())}
    return json.dumps({"version": 1, "policies": policies}, indent=1).encode("utf-8")


def save_cache(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    atomic_write(path, data)


class MtaSts:
    """Policies of destination domains. ``names``: mailsuite.mta.dns.MXResolver (TXT look-ups);
    ``fetcher``: ``fetch(domain) -> Deferred[StsPolicy]`` errbacking FetchError
    (mailsuite.mta.mtastsfetch.PolicyFetcher); ``path``: the cache file, '' for none."""

    def __init__(self, names: Any, fetcher: Any, clock: Any, blocking: Blocking,
                 path: str = "", report: Report | None = None) -> None:
        self.names = names
        self.fetcher = fetcher
        self.clock = clock
        self.blocking = blocking
        self.path = path
        self.report = report
        self.entries: dict[str, CachedPolicy] = {}
        self._loaded: defer.Deferred[None] | None = None
        self._pending: dict[str, list[defer.Deferred[StsPolicy | None]]] = {}
        self._failed: dict[str, tuple[str, float]] = {}  # domain: (record id, until)
        self._saving = False
        self._dirty = False

    def load(self) -> defer.Deferred[None]:
        """Read the cache file (once; policy_for waits for it)."""
        if self._loaded is None:
            if not self.path:
                self._loaded = defer.succeed(None)
            else:
                d = self.blocking(load_cache, self.path)
                d.addCallback(self.entries.update)
                self._loaded = d
        return self._loaded

    def policy_for(self, domain: str) -> defer.Deferred[StsPolicy | None]:
        """The policy for mail to ``domain`` (mode none included), None if it has none. Never
        errbacks. Simultaneous asks for one domain share one look-up."""
        domain = domain.rstrip(".").lower()
        waiter: defer.Deferred[StsPolicy | None] = defer.Deferred()
        if domain in self._pending:
            self._pending[domain].append(waiter)
            return waiter
        self._pending[domain] = [waiter]
        d = defer.ensureDeferred(self._discover(domain))
        d.addErrback(self._unexpected, domain)
        d.addBoth(self._answer, domain)
        return waiter

    def _answer(self, result: StsPolicy | None, domain: str) -> None:
        for waiter in self._pending.pop(domain, []):
            waiter.callback(result)

    def _unexpected(self, failure: Any, domain: str) -> StsPolicy | None:
        log.failure("MTA-STS discovery for {domain} failed", failure, domain=domain)
        cached = self.entries.get(domain)
        return cached.policy if cached and not cached.expired(self.clock.seconds()) else None

    async def _discover(self, domain: str) -> StsPolicy | None:
        await self.load()
        now = self.clock.seconds()
        cached = self.entries.get(domain)
        if cached is not None and cached.expired(now):
            self._forget(domain)
            cached = None
        try:
            record = await sts_record(self.names, domain)
        except TxtLookupError as e:
            log.info("MTA-STS: {e}", e=e)
            return cached.policy if cached else None
        if record is None:  # 3.1: no usable record does not remove a cached policy
            return cached.policy if cached else None
        if cached is not None and cached.record_id == record.id and not cached.stale(now):
            return cached.policy
        failed = self._failed.get(domain)
        if failed is not None and failed[0] == record.id and failed[1] > now:
            return cached.policy if cached else None  # failed a moment ago: not again yet
        try:
            policy = await self.fetcher.fetch(domain)
        except FetchError as e:
            log.info("MTA-STS policy of {domain} not fetched: {e}", domain=domain, e=e.text)
            self._failed[domain] = (record.id, self.clock.seconds() + RETRY_AFTER)
            if len(self._failed) > MAX_ENTRIES:
                self._failed.pop(next(iter(self._failed)))
            if self.report is not None:
                self.report(domain, cached.policy if cached else None, e.result_type, e.text)
            return cached.policy if cached else None
        self._failed.pop(domain, None)
        self.entries[domain] = CachedPolicy(policy, record.id, self.clock.seconds())
        self._trim()
        self._save()
        return policy

    def _forget(self, domain: str) -> None:
        if self.entries.pop(domain, None) is not None:
            self._save()

    def _trim(self) -> None:
        if len(self.entries) > MAX_ENTRIES:
            by_age = sorted(self.entries, key=lambda d: self.entries[d].fetched)
            for domain in by_age[: len(self.entries) - MAX_ENTRIES]:
                del self.entries[domain]

    def _save(self) -> None:
        """Write the cache file; one write at a time, the latest state last."""
        if not self.path:
            return
        if self._saving:
            self._dirty = True
            return
        self._saving = True
        self._dirty = False
        d = self.blocking(save_cache, self.path, dump_cache(self.entries))

        def done(result: Any) -> None:
            self._saving = False
            if self._dirty:
                self._save()

        d.addErrback(lambda f: log.failure("MTA-STS cache {p} not written", f, p=self.path))
        d.addBoth(done)
