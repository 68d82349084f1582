"""Unix accounts: passwd + shadow look-ups, password checks, and the twisted.cred checker.

``AccountDB`` reads the two files itself (no NSS, no ``spwd``, no stdlib ``crypt``) and hashes
through the system's libxcrypt (``mailsuite._libcrypt``), so it works on Python 3.13+ and tests
point it at temporary files. Its methods block (file reads, deliberately slow hashes): run them
through ``mailsuite.threads.blocking``. ``UnixChecker`` does that for logins.

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

from mailsuite import _libcrypt, threads
from mailsuite.accounts import Account

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
        self._identity: tuple[int, ...] | None = None
        self._entries: dict[str, T] = {}

    @staticmethod
    def _identity_of(st: os.stat_result) -> tuple[int, ...]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def entries(self) -> dict[str, T]:
        """The parsed contents; raises OSError when the file cannot be read."""
        identity = self._identity_of(os.stat(self.path))
        with self._lock:
            if identity != self._identity:
                with open(self.path, "rb") as f:
                    # The identity of what was actually read, in case of a rename meanwhile.
                    identity = self._identity_of(os.fstat(f.fileno()))
                    data = f.read()
                self._entries = self._parse(data.decode("utf-8", "surrogateescape"))
                self._identity = identity
            return self._entries


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

    def verify(self, name: str, password: bytes) -> Account | None:
        """The account if ``password`` opens it and it may log in now; otherwise None."""
        account, reason = self._check(name, password)
        if account is None:
            log.debug("password check for {name!r} refused: {reason}", name=name, reason=reason)
        return account

    def _check(self, name: str, password: bytes) -> tuple[Account | None, str]:
        account = self._passwd.entries().get(name)
        if account is None:
            return _refuse_after_dummy(password, "unknown user")
        if account.uid < self.first_valid_uid:
            return _refuse_after_dummy(password, "uid below first_valid_uid")
        entry = self._shadow.entries().get(name)
        if entry is None:
            return _refuse_after_dummy(password, "no shadow entry")
        if entry.hash == "":
            return _refuse_after_dummy(password, "empty password field")
        if entry.hash[0] in "!*":
            return _refuse_after_dummy(password, "account locked")
        stored = entry.hash.encode("utf-8", "surrogateescape")
        computed = _libcrypt.crypt(password, stored)
        if computed is None:
            return _refuse_after_dummy(password, "hash not computable by libcrypt")
        if not hmac.compare_digest(computed, stored):
            return None, "password mismatch"
        problem = _aging_problem(entry, int(self._now() // _SECONDS_PER_DAY))
        if problem is not None:
            return None, problem
        return account, "ok"


def _refuse_after_dummy(password: bytes, reason: str) -> tuple[None, str]:
    """Spend one hash computation on nothing, then refuse."""
    _libcrypt.crypt(password.replace(b"\0", b""), DUMMY_HASH)
    return None, reason


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
    setting = _libcrypt.gensalt(prefix.encode("ascii"))
    result = _libcrypt.crypt(phrase, setting)
    if result is None:
        raise ValueError(f"libcrypt cannot hash this password with {prefix!r}")
    return result.decode("ascii")


@implementer(ICredentialsChecker)
class UnixChecker:
    """Username/password logins against an ``AccountDB``; the hash runs in the thread pool.

    The avatarId is the login name as bytes. Every refusal, whatever its reason, is the same
    ``UnauthorizedLogin(LOGIN_FAILED)``; unexpected errors (an unreadable shadow file) are
    logged and refused the same way.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, accountdb: AccountDB) -> None:
        _libcrypt.library()  # fail at start-up, not at the first login, when libcrypt is missing
        self.accountdb = accountdb

    def requestAvatarId(self, credentials: IUsernamePassword) -> defer.Deferred[bytes]:
        username = credentials.username
        password = credentials.password
        try:
            name = username.decode("utf-8") if isinstance(username, bytes) else username
            if isinstance(password, str):
                password = password.encode("utf-8")
        except UnicodeError:
            return defer.fail(UnauthorizedLogin(LOGIN_FAILED))
        d = threads.blocking(self.accountdb.verify, name, password)
        return d.addCallbacks(self._verified, self._failed, callbackArgs=(name,))

    @staticmethod
    def _verified(account: Account | None, name: str) -> bytes:
        if account is None:
            raise UnauthorizedLogin(LOGIN_FAILED)
        return name.encode("utf-8")

    @staticmethod
    def _failed(failure: Failure) -> Failure:
        if failure.check(defer.CancelledError):
            return failure
        log.failure("password check failed", failure)
        return Failure(UnauthorizedLogin(LOGIN_FAILED))
