"""A cache of password verifications, as Dovecot's ``auth_cache``: no second yescrypt for a
password that was already checked against the same shadow entry.

What is cached is the outcome of the one expensive step of a login, the hash computation:
"this password, for this user, in this account state, gave match / mismatch". Nothing else is:
``AccountDB`` still reads the current passwd and shadow entries on every login and applies the
cheap refusal rules (locked, expired, password too old, uid below ``first_valid_uid``) to them.

- **No passwords.** Entries are keyed by the login name and ``HMAC-SHA256(key, name, password)``
  with a random key per cache (per process), compared with ``hmac.compare_digest``. A memory
  dump shows neither the password nor a digest that can be attacked without the key.
- **Bound to the account state.** Every entry remembers the state it was computed in: the passwd
  entry (``Account``: exists, uid) and the shadow hash string. A login whose current state differs
  (password changed, account locked with ``!``, user created, removed or renumbered) finds the
  user's entries stale, drops them and checks the password afresh. So a change to the files
  invalidates exactly the entries it concerns; other users keep theirs.
- **Positive and negative entries.** A success is kept ``ttl`` seconds; a refusal (wrong
  password, and also unknown user, locked, system account: everything decided before or by the
  hash) ``negative_ttl`` seconds, 0 = refusals are not cached. Negative entries are per password
  digest, so a wrong password followed by the right one is accepted at once; a right one followed
  by a wrong one is checked (and refused) in full. Because refusals of unknown and of existing
  users are cached alike, a repeated attempt answers fast in both cases and timing still does not
  tell whether a name exists. A client retrying one stale password (a phone after a password
  change) costs one hash per ``negative_ttl`` instead of one per attempt; an attacker trying new
  passwords gains nothing, every new password is hashed.
- **Bounded.** ``size`` is an approximate byte budget (Dovecot's ``auth_cache_size``); users are
  dropped least recently used first, and one user keeps at most ``MAX_ENTRIES_PER_USER``
  digests (the positive one and the latest refusals).
- Entries expire ``ttl`` after they were made, not after their last use, as Dovecot's.

Thread-safe: a lock guards the table (held for dictionary work only, never during a hash).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from mailsuite.config import AuthConfig

#: Digests kept per user: one success and the most recent refusals.
MAX_ENTRIES_PER_USER = 8
#: Approximate bytes of one user record (dict slot, record, state tuple) besides name and hash.
RECORD_OVERHEAD = 300
#: Approximate bytes of one digest entry (entry object, 32-byte digest object, list slot).
ENTRY_OVERHEAD = 160

DEFAULT_SIZE = 10 * 1024 * 1024
DEFAULT_TTL = 3600.0
DEFAULT_NEGATIVE_TTL = 3600.0


@dataclass
class _Entry:
    digest: bytes
    ok: bool
    expires: float


@dataclass
class _Record:
    state: Hashable
    cost: int
    entries: list[_Entry] = field(default_factory=list)


class AuthCache:
    """Verified (name, password digest, account state) -> success or refusal, LRU by user.

    ``size``: byte budget (0 = nothing is cached); ``ttl`` / ``negative_ttl``: seconds a success /
    a refusal is trusted (0 = not cached); ``clock``: monotonic seconds (tests inject one);
    ``key``: the HMAC key, random per instance unless given.
    """

    def __init__(
        self,
        size: int = DEFAULT_SIZE,
        ttl: float = DEFAULT_TTL,
        negative_ttl: float = DEFAULT_NEGATIVE_TTL,
        clock: Callable[[], float] = time.monotonic,
        key: bytes | None = None,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._key = os.urandom(32) if key is None else key
        self._lock = threading.Lock()
        self._users: OrderedDict[str, _Record] = OrderedDict()
        self.bytes_used = 0
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_config(cls, auth: AuthConfig) -> AuthCache | None:
        """The cache an ``[auth]`` section asks for; None when ``auth_cache_size = 0``."""
        if auth.auth_cache_size == 0:
            return None
        return cls(auth.auth_cache_size, auth.auth_cache_ttl, auth.auth_cache_negative_ttl)

    def digest(self, name: str, password: bytes) -> bytes:
        """HMAC-SHA256 of the name and the password under this cache's key."""
        encoded = name.encode("utf-8", "surrogateescape")
        message = len(encoded).to_bytes(4, "big") + encoded + password
        return hmac.digest(self._key, message, hashlib.sha256)

    def get(self, name: str, digest: bytes, state: Hashable) -> bool | None:
        """True (this password opened the account in this state), False (it was refused in this
        state) or None (not known: check it). Stale and expired entries are dropped here."""
        with self._lock:
            record = self._users.get(name)
            if record is None:
                self.misses += 1
                return None
            if record.state != state:
                self._drop(name)
                self.misses += 1
                return None
            now = self._clock()
            found: _Entry | None = None
            live = []
            for entry in record.entries:
                if entry.expires <= now:
                    continue
                live.append(entry)
                if hmac.compare_digest(entry.digest, digest):
                    found = entry
            if len(live) != len(record.entries):
                self._resize(record, live)
            if not live:
                self._drop(name)
            else:
                self._users.move_to_end(name)
            if found is None:
                self.misses += 1
                return None
            self.hits += 1
            return found.ok

    def put(self, name: str, digest: bytes, state: Hashable, ok: bool) -> None:
        """Remember the outcome of a full check made in ``state``."""
        ttl = self.ttl if ok else self.negative_ttl
        if ttl <= 0 or self.size <= 0:
            return
        entry = _Entry(digest, ok, self._clock() + ttl)
        with self._lock:
            record = self._users.get(name)
            if record is not None and record.state != state:
                self._drop(name)
                record = None
            if record is None:
                record = _Record(state, RECORD_OVERHEAD + len(name) + _state_size(state))
                self._users[name] = record
                self.bytes_used += record.cost
            # One entry per digest; one success per user (a new success replaces the old one).
            kept = [e for e in record.entries
                    if not hmac.compare_digest(e.digest, digest) and not (ok and e.ok)]
            kept.append(entry)
            if len(kept) > MAX_ENTRIES_PER_USER:
                oldest_refusal = next(e for e in kept if not e.ok)
                kept.remove(oldest_refusal)
            self._resize(record, kept)
            self._users.move_to_end(name)
            while self.bytes_used > self.size and self._users:
                self._drop(next(iter(self._users)))

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._users.clear()
            self.bytes_used = 0

    def __len__(self) -> int:
        """Number of digests held (successes and refusals)."""
        with self._lock:
            return sum(len(r.entries) for r in self._users.values())

    def users(self) -> list[str]:
        """The names with entries, least recently used first."""
        with self._lock:
            return list(self._users)

    # -- with the lock held ---------------------------------------------------------------

    def _resize(self, record: _Record, entries: list[_Entry]) -> None:
        self.bytes_used += (len(entries) - len(record.entries)) * ENTRY_OVERHEAD
        record.entries = entries

    def _drop(self, name: str) -> None:
        record = self._users.pop(name)
        self.bytes_used -= record.cost + len(record.entries) * ENTRY_OVERHEAD


def _state_size(state: Hashable) -> int:
    """Rough bytes of the strings in a state tuple (the shadow hash, the home directory)."""
    if isinstance(state, str):
        return len(state)
    if isinstance(state, tuple):
        return sum(_state_size(part) for part in state)
    fields = getattr(state, "__dataclass_fields__", None)
    if fields is not None:
        return sum(_state_size(getattr(state, f)) for f in fields)
    return 8
