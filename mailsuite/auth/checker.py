"""Unix accounts: passwd + shadow look-ups, password checks, and the twisted.cred checker.

``AccountDB`` reads the two files itself (no NSS, no ``spwd``, no stdlib ``crypt``) and hashes
through the system's libxcrypt (``mailsuite.auth.libcrypt``), so it works on Python 3.13+ and tests
point it at temporary files. Its methods block (file reads, deliberately slow hashes): run them
through a ``mailsuite.threads.Blocking``. ``UnixChecker`` does that for logins.

Refusal rules follow what Dovecot with PAM (pam_unix) does on Debian:

- unknown name, uid below ``first_valid_uid``, no shadow entry;
- empty hash (no password) and locked hashes (``!...``, ``*...``, e.g. ``!$6$...``, ``*LK*``);
- a hash libcrypt cannot compute (unknown or disabled method, malformed);
- account expired: shadow ``expire`` set and today >= expire (pam_unix: the account is unusable
  from that day on; ``0`` therefore means expired, as in pam_unix);
- password must be changed: ``lastchg`` is 0, or ``max`` is set and more than ``max`` days have
  passed since ``lastchg`` (pam_unix answers "new password required", which Dovecot refuses;
  a mail login cannot change a password). Past ``max + inactive`` the account is "inactive",
  also refused.

Every check costs exactly one hash computation: the account's own hash when it has a usable one,
otherwise a fixed dummy yescrypt hash, so unknown, locked and system users answer as slowly as a
wrong password does.

Unless the checker is given an ``AuthCache`` (``mailsuite.auth.cache``, Dovecot's auth_cache;
``UnixChecker`` has one by default): then a password already checked against the same passwd and
shadow entries is answered from the cache, without a hash, while the rules above that do not
need the hash (aging) are applied to the current entries on every login. A cached answer is fast
for a repeated correct password and for a repeated refused one alike (unknown users included), so
timing still does not tell a known name from an unknown one.
"""

from __future__ import annotations

import hmac
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsuite.accounts import Account
from mailsuite.auth import libcrypt
from mailsuite.auth.cache import AuthCache
from mailsuite.threads import Blocking

log = Logger()

#: The one message every refused login gets, whatever the reason.
LOGIN_FAILED = "Authentication failed."

#: Checked against when there is no usable hash, so that refusals cost as much as a real check.
#: A yescrypt hash at Debian's default cost (``$y$j9T$``) of a password nobody knows.
DUMMY_HASH = b"$y$j9T$N6MyUbMnNyrCWegYS3GEK0$5pzATmQykoGEtkrinE5UMrMrpkIhBHoB0o1xhuzN.mB"

_SECONDS_PER_DAY = 86400
_DECIMAL = re.compile(r"[0-9]+")

T = TypeVar("T")


@dataclass(frozen=True)
class ShadowEntry:
    """One line of shadow(5). Day counts are days since 1970-01-01 (UTC); None = field empty."""

    hash: str
    lastchg: int | None
    min: int | None
    max: int | None
    warn: int | None
    inactive: int | None
    expire: int | None


def _decimal(field: str) -> int:
    if not _DECIMAL.fullmatch(field):
        raise ValueError(field)
    return int(field)


def _optional_decimal(field: str) -> int | None:
    return None if field == "" else _decimal(field)


def parse_passwd(text: str) -> dict[str, Account]:
    """``name:x:uid:gid:gecos:home:shell`` lines -> accounts by name.

    Malformed lines (wrong field count, non-numeric ids) and NIS ``+``/``-`` lines are skipped;
    when a name appears twice the first entry wins, as with getpwnam(3).
    """
    accounts: dict[str, Account] = {}
    for line in text.split("\n"):
        fields = line.split(":")
        if len(fields) != 7:
            continue
        name, _password, uid, gid, _gecos, home, _shell = fields
        if not name or name[0] in "+-" or name in accounts:
            continue
        try:
            accounts[name] = Account(name=name, uid=_decimal(uid), gid=_decimal(gid), home=home)
        except ValueError:
            continue
    return accounts


def parse_shadow(text: str) -> dict[str, ShadowEntry]:
    """``name:hash:lastchg:min:max:warn:inactive:expire:`` lines -> entries by name.

    A malformed line is skipped, which leaves that user without a shadow entry: refused.
    """
    entries: dict[str, ShadowEntry] = {}
    for line in text.split("\n"):
        fields = line.split(":")
        if len(fields) != 9:
            continue
        name, hashed = fields[0], fields[1]
        if not name or name[0] in "+-" or name in entries:
            continue
        try:
            numbers = [_optional_decimal(f) for f in fields[2:8]]
        except ValueError:
            continue
        entries[name] = ShadowEntry(hashed, *numbers)
    return entries


class _ParsedFile(Generic[T]):
    """A file parsed into a dict, read again only when its identity or size or times change."""

    def __init__(self, path: str, parse: Callable[[str], dict[str, T]]) -> None:
        self.path = path
        self._parse = parse
        self._lock = threading.Lock()
        # (identity, entries) of the last read, replaced as one object so that ``current``
        # needs no lock.
        self._snapshot: tuple[tuple[int, ...], dict[str, T]] | None = None

    @staticmethod
    def _identity_of(st: os.stat_result) -> tuple[int, ...]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def entries(self) -> dict[str, T]:
        """The parsed contents; raises OSError when the file cannot be read."""
        identity = self._identity_of(os.stat(self.path))
        with self._lock:
            snapshot = self._snapshot
            if snapshot is None or identity != snapshot[0]:
                with open(self.path, "rb") as f:
                    # The identity of what was actually read, in case of a rename meanwhile.
                    identity = self._identity_of(os.fstat(f.fileno()))
                    data = f.read()
                snapshot = (identity, self._parse(data.decode("utf-8", "surrogateescape")))
                self._snapshot = snapshot
            return snapshot[1]

    def current(self) -> dict[str, T] | None:
        """The parsed contents if the file is unchanged since it was last read, else None.

        One stat(2) and no lock, no read: cheap enough for the reactor thread.
        """
        snapshot = self._snapshot
        if snapshot is None:
            return None
        try:
            identity = self._identity_of(os.stat(self.path))
        except OSError:
            return None
        return snapshot[1] if identity == snapshot[0] else None


class AccountDB:
    """The passwd and shadow files of a host (or of a test). All methods block."""

    def __init__(
        self,
        passwd_file: str,
        shadow_file: str,
        first_valid_uid: int,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._passwd = _ParsedFile(passwd_file, parse_passwd)
        self._shadow = _ParsedFile(shadow_file, parse_shadow)
        self.first_valid_uid = first_valid_uid
        self._now = now

    def lookup(self, name: str) -> Account | None:
        """The account called exactly ``name``; None if unknown or a system account.

        Names are case sensitive and used as given: ``boss@example.com`` is not ``boss``.
        """
        account = self._passwd.entries().get(name)
        if account is None or account.uid < self.first_valid_uid:
            return None
        return account

    def recipient(self, name: str) -> Account | None:
        """The account mail for ``name`` is delivered to: any passwd entry, system accounts too.

        As Postfix's local_recipient_maps (``unix:passwd.byname``): mail for ``root`` or
        ``postmaster: root`` lands in /var/mail/root even though root cannot log in here.
        """
        return self._passwd.entries().get(name)

    def verify(
        self, name: str, password: bytes, cache: AuthCache | None = None
    ) -> Account | None:
        """The account if ``password`` opens it and it may log in now; otherwise None.

        With a ``cache``, a password already checked against the same account state is not
        hashed again (see ``mailsuite.auth.cache``); the outcome of a new check is stored there.
        """
        account, reason = self._check(name, password, cache)
        if account is None:
            log.debug("password check for {name!r} refused: {reason}", name=name, reason=reason)
        return account

    def verify_cached(
        self, name: str, password: bytes, cache: AuthCache
    ) -> Account | _Miss | None:
        """``verify`` answered from ``cache`` alone, or ``MISS``. Does not block: two stat(2)
        calls, an HMAC and dictionary look-ups; no file read, no hash. ``MISS`` when either file
        changed since it was last read (or was never read), or the cache does not know this
        password in the current state: then call ``verify`` in a thread."""
        passwd = self._passwd.current()
        shadow = self._shadow.current()
        if passwd is None or shadow is None:
            return MISS
        account, entry = passwd.get(name), shadow.get(name)
        known = cache.get(name, cache.digest(name, password), _state(account, entry))
        if known is None:
            return MISS
        result, reason = self._after_hash(known, account, entry, _CACHED_REFUSAL)
        if result is None:
            log.debug("password check for {name!r} refused: {reason}", name=name, reason=reason)
        return result

    def _check(
        self, name: str, password: bytes, cache: AuthCache | None
    ) -> tuple[Account | None, str]:
        account = self._passwd.entries().get(name)
        entry = self._shadow.entries().get(name)
        if cache is None:
            matched, reason = self._hash_check(account, entry, password)
            return self._after_hash(matched, account, entry, reason)
        digest = cache.digest(name, password)
        state = _state(account, entry)
        known = cache.get(name, digest, state)
        if known is not None:
            return self._after_hash(known, account, entry, _CACHED_REFUSAL)
        matched, reason = self._hash_check(account, entry, password)
        cache.put(name, digest, state, matched)
        return self._after_hash(matched, account, entry, reason)

    def _hash_check(
        self, account: Account | None, entry: ShadowEntry | None, password: bytes
    ) -> tuple[bool, str]:
        """The expensive step, exactly one hash computation: does ``password`` match the
        account's hash? Without a usable hash, a dummy one is computed and the answer is no."""
        if account is None:
            return _refuse_after_dummy(password, "unknown user")
        if account.uid < self.first_valid_uid:
            return _refuse_after_dummy(password, "uid below first_valid_uid")
        if entry is None:
            return _refuse_after_dummy(password, "no shadow entry")
        if entry.hash == "":
            return _refuse_after_dummy(password, "empty password field")
        if entry.hash[0] in "!*":
            return _refuse_after_dummy(password, "account locked")
        stored = entry.hash.encode("utf-8", "surrogateescape")
        computed = libcrypt.crypt(password, stored)
        if computed is None:
            return _refuse_after_dummy(password, "hash not computable by libcrypt")
        if not hmac.compare_digest(computed, stored):
            return False, "password mismatch"
        return True, "ok"

    def _after_hash(
        self, matched: bool, account: Account | None, entry: ShadowEntry | None, reason: str
    ) -> tuple[Account | None, str]:
        """The rules applied after the hash, to the current entries: shadow aging."""
        if not matched:
            return None, reason
        if account is None or entry is None:  # cannot be: a match needs both (cache included)
            return None, "no account"
        problem = _aging_problem(entry, int(self._now() // _SECONDS_PER_DAY))
        if problem is not None:
            return None, problem
        return account, "ok"


_CACHED_REFUSAL = "refused before in this account state (auth cache)"


class _Miss:
    """The type of ``MISS``."""

    def __repr__(self) -> str:
        return "MISS"


#: ``verify_cached``'s answer when the cache cannot decide.
MISS = _Miss()


def _state(account: Account | None, entry: ShadowEntry | None) -> tuple[object, ...]:
    """What a hash check's outcome depends on besides the password, for ``AuthCache``: the
    passwd entry (existence, uid) and the shadow hash string. Aging fields are left out: they
    are applied to the current entry after every check, cached or not."""
    return (account, None if entry is None else entry.hash)


def _refuse_after_dummy(password: bytes, reason: str) -> tuple[bool, str]:
    """Spend one hash computation on nothing, then refuse."""
    libcrypt.crypt(password.replace(b"\0", b""), DUMMY_HASH)
    return False, reason


def _aging_problem(entry: ShadowEntry, today: int) -> str | None:
    """Why the shadow aging fields forbid a login today (pam_unix's rules), or None."""
    if entry.expire is not None and today >= entry.expire:
        return "account expired"
    if entry.lastchg == 0:
        return "password change required (lastchg 0)"
    if entry.lastchg is not None and entry.max is not None:
        age = today - entry.lastchg
        if entry.inactive is not None and age > entry.max + entry.inactive:
            return "account inactive (password expired longer than inactive days)"
        if age > entry.max:
            return "password expired"
    return None


def hash_password(password: bytes | str, prefix: str = "$y$") -> str:
    """A new crypt(3) hash of ``password`` with a random salt: ``$y$`` yescrypt by default.

    For tests and tools (``$6$``, ``$5$``, ``$2b$``, ``$1$`` also work). Raises ValueError when
    libcrypt does not offer the method or cannot hash this password (NUL byte, too long).
    """
    phrase = password.encode("utf-8") if isinstance(password, str) else password
    setting = libcrypt.gensalt(prefix.encode("ascii"))
    result = libcrypt.crypt(phrase, setting)
    if result is None:
        raise ValueError(f"libcrypt cannot hash this password with {prefix!r}")
    return result.decode("ascii")


_DEFAULT_CACHE = object()


def login_of(credentials: IUsernamePassword) -> tuple[str, bytes]:
    """(name, password bytes) of username/password credentials; UnauthorizedLogin if the name
    is not UTF-8. Shared by every password checker (UnixChecker, PamChecker)."""
    username, password = credentials.username, credentials.password
    try:
        name = username.decode("utf-8") if isinstance(username, bytes) else username
        if isinstance(password, str):
            password = password.encode("utf-8")
    except UnicodeError:
        raise UnauthorizedLogin(LOGIN_FAILED) from None
    return name, password


#: What ICredentialsChecker.requestAvatarId yields in twisted.cred: an avatar id, or () for
#: an anonymous login (never ours: our checkers yield the user name as bytes).
AvatarId = bytes | tuple[()]


def avatar_id(account: Account | None, name: str) -> bytes:
    """The avatarId of a verified login (the name as bytes); None -> UnauthorizedLogin."""
    if account is None:
        raise UnauthorizedLogin(LOGIN_FAILED)
    return name.encode("utf-8")


@implementer(ICredentialsChecker)
class UnixChecker:
    """Username/password logins against an ``AccountDB``; the hash runs in the thread pool.

    The avatarId is the login name as bytes. Every refusal, whatever its reason, is the same
    ``UnauthorizedLogin(LOGIN_FAILED)``; unexpected errors (an unreadable shadow file) are
    logged and refused the same way.

    ``cache``: an ``AuthCache`` (default: one with Dovecot-like settings, 10 MB, 1 hour for
    successes and refusals; ``AuthCache.from_config(cfg.auth)`` for mail.ini's), or None for
    none. A login the cache can answer while both files are unchanged is answered on the
    calling (reactor) thread: two stat(2) calls and an HMAC, no thread hop, no file read.
    Anything else - a cache miss, a changed file - goes to ``blocking`` (mailsuite.threads).
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self, accountdb: AccountDB, blocking: Blocking,
        cache: AuthCache | object | None = _DEFAULT_CACHE,
    ) -> None:
        libcrypt.library()  # fail at start-up, not at the first login, when libcrypt is missing
        self.accountdb = accountdb
        self.blocking = blocking
        self.cache = cache if cache is None or isinstance(cache, AuthCache) else AuthCache()

    def requestAvatarId(self, credentials: IUsernamePassword) -> defer.Deferred[AvatarId]:
        try:
            name, password = login_of(credentials)
        except UnauthorizedLogin as e:
            return defer.fail(e)
        if self.cache is None:
            d = self.blocking(self.accountdb.verify, name, password)
        else:
            known = self.accountdb.verify_cached(name, password, self.cache)
            if isinstance(known, _Miss):
                d = self.blocking(self.accountdb.verify, name, password, self.cache)
            else:
                d = defer.succeed(known)
        return d.addCallbacks(avatar_id, self._failed, callbackArgs=(name,))

    @staticmethod
    def _failed(failure: Failure) -> Failure:
        if failure.check(defer.CancelledError):
            return failure
        log.failure("password check failed", failure)
        return Failure(UnauthorizedLogin(LOGIN_FAILED))
