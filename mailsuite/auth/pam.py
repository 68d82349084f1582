"""``passdb = pam``: passwords checked by PAM (service ``pam_service``, ``etc/pam.d/mailsuite``),
accounts from NSS, for sites whose users live in LDAP/SSSD as well as in /etc/passwd.

libpam is called through ctypes (no extra package): ``pam_start`` (``pam_start_confdir`` when
a directory of service files is given: the tests' stacks), ``pam_set_item(PAM_RHOST)``,
``pam_authenticate`` then ``pam_acct_mgmt``, ``pam_end``, each check in its own handle on a
pool thread (a ``mailsuite.threads.Blocking``). The conversation answers the password to hidden
prompts and the user name to visible ones, as Dovecot's passdb pam does. The application's own
``PAM_FAIL_DELAY`` hook is installed, so pam_unix's 2-second sleep after a failure does not
hold a pool thread: the protocols and ``mailsuite.auth.policy`` delay failures on the reactor.

After PAM says yes, the account (uid, gid, home) comes from NSS (``pwd.getpwnam``: files, LDAP,
SSSD, whatever nsswitch.conf says) and the same refusal rule as the shadow passdb applies:
unknown to NSS or uid below ``first_valid_uid`` is refused.

Outcomes: success -> the login name as bytes (the avatarId, as ``UnixChecker``); a wrong
password, unknown user, locked/expired account or required password change ->
``UnauthorizedLogin``; PAM unable to decide (an LDAP server down: ``PAM_AUTHINFO_UNAVAIL``, a
broken stack) -> ``PamUnavailable``, which the protocols answer as a temporary failure and the
brute-force policy does not count.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import pwd
import threading
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsuite.accounts import Account
from mailsuite.auth.checker import LOGIN_FAILED, AvatarId, avatar_id, login_of
from mailsuite.threads import Blocking

log = Logger()

# <security/_pam_types.h>
PAM_SUCCESS = 0
PAM_PERM_DENIED = 6
PAM_AUTH_ERR = 7
PAM_CRED_INSUFFICIENT = 8
PAM_AUTHINFO_UNAVAIL = 9
PAM_USER_UNKNOWN = 10
PAM_MAXTRIES = 11
PAM_NEW_AUTHTOK_REQD = 12
PAM_ACCT_EXPIRED = 13
PAM_AUTHTOK_EXPIRED = 27
PAM_SILENT = 0x8000
PAM_DISALLOW_NULL_AUTHTOK = 0x0001
PAM_RHOST = 4
PAM_TTY = 3
PAM_FAIL_DELAY = 10
PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2

#: Answers meaning "this user may not log in with this password now" (Dovecot: auth failed).
REFUSALS = frozenset({PAM_PERM_DENIED, PAM_AUTH_ERR, PAM_CRED_INSUFFICIENT, PAM_USER_UNKNOWN,
                      PAM_MAXTRIES, PAM_NEW_AUTHTOK_REQD, PAM_ACCT_EXPIRED, PAM_AUTHTOK_EXPIRED})


class PamUnavailable(Exception):
    """PAM could not decide (module error, directory server down): a temporary failure."""

    def __init__(self, step: str, code: int, message: str) -> None:
        super().__init__(f"{step}: {message} ({code})")
        self.step, self.code = step, code


class _Message(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _Response(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


_CONV = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.POINTER(_Message)),
                         ctypes.POINTER(ctypes.POINTER(_Response)), ctypes.c_void_p)
_FAIL_DELAY = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)


class _Conv(ctypes.Structure):
    _fields_ = [("conv", _CONV), ("appdata_ptr", ctypes.c_void_p)]


class _Lib:
    """libpam and libc, loaded once (at start-up when passdb = pam)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("pam") or "libpam.so.0"
        pam = ctypes.CDLL(name)
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        handle = ctypes.POINTER(ctypes.c_void_p)
        pam.pam_start.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_Conv),
                                  ctypes.POINTER(handle)]
        self.start_confdir = getattr(pam, "pam_start_confdir", None)  # Linux-PAM >= 1.4
        if self.start_confdir is not None:
            self.start_confdir.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_Conv),
                                           ctypes.c_char_p, ctypes.POINTER(handle)]
        pam.pam_set_item.argtypes = [handle, ctypes.c_int, ctypes.c_void_p]
        pam.pam_authenticate.argtypes = [handle, ctypes.c_int]
        pam.pam_acct_mgmt.argtypes = [handle, ctypes.c_int]
        pam.pam_end.argtypes = [handle, ctypes.c_int]
        pam.pam_strerror.argtypes = [handle, ctypes.c_int]
        pam.pam_strerror.restype = ctypes.c_char_p
        libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        libc.calloc.restype = ctypes.c_void_p
        libc.strdup.argtypes = [ctypes.c_char_p]
        libc.strdup.restype = ctypes.c_void_p
        self.pam, self.libc, self.handle = pam, libc, handle


_lib: _Lib | None = None
_lib_lock = threading.Lock()


def library() -> _Lib:
    """The loaded libpam; OSError if it is not installed."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = _Lib()
        return _lib


#: Microseconds of the last fail delay a PAM module asked for and we did not sleep (tests).
skipped_delay = 0


@_FAIL_DELAY
def _no_fail_delay(retval: int, usec: int, appdata: Any) -> None:
    """PAM_FAIL_DELAY hook: no sleep on a pool thread (failures are delayed on the reactor)."""
    global skipped_delay
    skipped_delay = usec


def pam_check(
    service: str, user: bytes, password: bytes, rhost: str | None = None,
    confdir: str | None = None,
) -> int:
    """Run pam_authenticate then pam_acct_mgmt for ``user``; PAM_SUCCESS or the failing code.

    Blocks (PAM modules read files, ask servers). Raises PamUnavailable for answers that are
    neither success nor one of REFUSALS, and when a service stack cannot be started.
    """
    lib = library()
    if b"\0" in user or b"\0" in password:
        return PAM_AUTH_ERR

    def converse(count: int, messages: Any, responses: Any, _appdata: Any) -> int:
        replies = lib.libc.calloc(count, ctypes.sizeof(_Response))
        if not replies:
            return 5  # PAM_BUF_ERR
        array = ctypes.cast(replies, ctypes.POINTER(_Response))
        for i in range(count):
            style = messages[i].contents.msg_style
            if style == PAM_PROMPT_ECHO_OFF:
                array[i].resp = lib.libc.strdup(password)
            elif style == PAM_PROMPT_ECHO_ON:
                array[i].resp = lib.libc.strdup(user)
        responses[0] = array
        return PAM_SUCCESS

    conv = _Conv(_CONV(converse), None)
    pamh = lib.handle()
    if confdir is not None:
        if lib.start_confdir is None:
            raise PamUnavailable("pam_start_confdir", 0, "libpam is older than 1.4")
        code = lib.start_confdir(service.encode(), user, ctypes.byref(conv), confdir.encode(),
                                 ctypes.byref(pamh))
    else:
        code = lib.pam.pam_start(service.encode(), user, ctypes.byref(conv), ctypes.byref(pamh))
    if code != PAM_SUCCESS:
        raise PamUnavailable("pam_start", code, f"cannot start PAM service {service!r}")
    try:
        lib.pam.pam_set_item(pamh, PAM_FAIL_DELAY, ctypes.cast(_no_fail_delay, ctypes.c_void_p))
        lib.pam.pam_set_item(pamh, PAM_TTY, ctypes.c_char_p(b"mailsuite"))
        if rhost:
            lib.pam.pam_set_item(pamh, PAM_RHOST, ctypes.c_char_p(rhost.encode()))
        flags = PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK
        for step, call in (("pam_authenticate", lib.pam.pam_authenticate),
                           ("pam_acct_mgmt", lib.pam.pam_acct_mgmt)):
            code = call(pamh, flags)
            if code in REFUSALS:
                return code
            if code != PAM_SUCCESS:
                message = (lib.pam.pam_strerror(pamh, code) or b"").decode("utf-8", "replace")
                raise PamUnavailable(step, code, message)
        return PAM_SUCCESS
    finally:
        lib.pam.pam_end(pamh, code)


class NssAccounts:
    """Accounts from NSS (``getpwnam``), for passdb = pam; same methods as ``AccountDB``.

    Blocking (NSS may ask a directory server): call through a ``threads.Blocking``.
    """

    def __init__(self, first_valid_uid: int) -> None:
        self.first_valid_uid = first_valid_uid

    def recipient(self, name: str) -> Account | None:
        """Any account of that exact name (system accounts too: mail for root is delivered)."""
        if not name or "\0" in name:
            return None
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        return Account(name=name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)

    def lookup(self, name: str) -> Account | None:
        """The account ``name`` if it may log in (uid >= first_valid_uid), else None."""
        account = self.recipient(name)
        if account is None or account.uid < self.first_valid_uid:
            return None
        return account


@implementer(ICredentialsChecker)
class PamChecker:
    """Username/password logins through the PAM service ``service``; accounts from ``accounts``
    (an ``NssAccounts``, or any object with a blocking ``lookup(name)``).

    ``blocking`` (mailsuite.threads) runs the PAM conversation off the reactor thread.
    ``confdir``: a directory of PAM service files to use instead of /etc/pam.d (tests).
    A credentials object may carry ``client_ip`` (``auth.policy.GuardedPortal`` sets it); it
    becomes ``PAM_RHOST`` for modules such as pam_access.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, service: str, accounts: Any, blocking: Blocking,
                 confdir: str | None = None) -> None:
        library()  # fail at start-up, not at the first login, when libpam is missing
        self.service, self.accounts, self.confdir = service, accounts, confdir
        self.blocking = blocking

    def verify(self, name: str, password: bytes, rhost: str | None = None) -> Account | None:
        """The account if PAM accepts ``password`` and the account may log in; else None.
        Blocking; raises PamUnavailable when PAM cannot decide."""
        code = pam_check(self.service, name.encode("utf-8"), password, rhost, self.confdir)
        if code != PAM_SUCCESS:
            log.debug("PAM refused {name!r}: code {code}", name=name, code=code)
            return None
        return self.accounts.lookup(name)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[AvatarId]:
        try:
            name, password = login_of(credentials)
        except UnauthorizedLogin as e:
            return defer.fail(e)
        rhost = getattr(credentials, "client_ip", None)
        d = self.blocking(self.verify, name, password, rhost)
        return d.addCallbacks(avatar_id, self._failed, callbackArgs=(name,))

    @staticmethod
    def _failed(failure: Failure) -> Failure:
        if failure.check(defer.CancelledError):
            return failure
        if not failure.check(PamUnavailable):
            # An unexpected error (ctypes, OSError) is a refusal like UnixChecker's, so the
            # protocols answer as for a wrong password and the AuthPolicy counts it.
            log.failure("PAM check failed", failure)
            return Failure(UnauthorizedLogin(LOGIN_FAILED))
        log.warn("PAM could not check a password: {error}", error=failure.value)
        return failure
