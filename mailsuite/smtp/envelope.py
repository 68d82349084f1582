"""SMTP MAIL FROM and RCPT TO: one mail transaction's envelope, checked by the session's avatar.

A mixin of ``mailsuite.smtp.server.SMTPServer``: parses the paths and their ESMTP parameters
(SIZE, BODY, SMTPUTF8, RET, ENVID; NOTIFY, ORCPT), asks the ``smtp.IMessageDelivery`` avatar
(mta/accept.py's DeliveryAvatar: sender ownership, relay control, the recipient look-up) and
keeps the accepted recipients as mailsuite.mta.transaction Recipients, for the accept pipeline
after DATA. A cached look-up answers without a Deferred (``recipient_now``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.cred import credentials
from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from mailsuite.maillog import new_queue_id
from mailsuite.mta import address as addr
from mailsuite.mta.quota import rcpt_check
from mailsuite.mta.transaction import Recipient
from mailsuite.smtp.restrictions import Outcome, request_of

#: the lists evaluated at RCPT (smtpd_delay_reject = yes)
RCPT_STAGES = ("client", "helo", "sender", "relay", "recipient")

log = Logger()

_PATH = rb'(<(?:"(?:[^"\\]|\\.)*"|[^<>"])*>|[^ \t<>]+)'  # <...> may hold a quoted "a>b"
_MAIL_RE = re.compile(rb"^FROM:[ \t]*" + _PATH + rb"(?:[ \t]+(.*))?$", re.IGNORECASE)
_instances = itertools.count()  # the policy ``instance``: one per mail transaction
_RCPT_RE = re.compile(rb"^TO:[ \t]*" + _PATH + rb"(?:[ \t]+(.*))?$", re.IGNORECASE)


def printable(raw: bytes, limit: int = 255) -> str:
    """Client bytes for a reply or the log: ASCII, unprintable characters as ``?``."""
    return "".join(c if c.isprintable() else "?" for c in raw.decode("ascii", "replace"))[:limit]


class SmtpEnvelope:
    """MAIL and RCPT for ``SMTPServer`` (which provides what is declared here)."""

    factory: Any
    client_ip: str
    size_limit: int
    _helo_name: str | None
    _proto: str
    _avatar: Any
    _logout: Callable[[], None] | None
    _sender: str | None
    _mail_params: addr.MailParams
    _recipients: list[Recipient]
    _rcpt_attempts: int
    _queue_id: str | None
    _instance: str
    _prepend: list[str]
    _arrival: float
    _reply: Callable[[int, str], None]
    _log: Callable[[str], None]
    sasl_log: Callable[[], str]
    limits_mail: Callable[[], bool]
    limits_rcpt: Callable[[], bool]
    milters_then: Callable[..., Any]
    milters_mail: Callable[[str, str | None], Any]
    milters_rcpt: Callable[[Recipient], Any]

    if TYPE_CHECKING:
        @property
        def client(self) -> str: ...

    def _get_avatar(self) -> defer.Deferred[Any]:
        if self._avatar is not None:
            return defer.succeed(self._avatar)
        if self.factory.portal is None:
            self._avatar = self.factory.delivery.avatar(None)
            return defer.succeed(self._avatar)
        d = self.factory.portal.login(credentials.Anonymous(), None, smtp.IMessageDelivery)

        def got(result: tuple[Any, Any, Callable[[], None]]) -> Any:
            _, self._avatar, self._logout = result
            return self._avatar

        return d.addCallback(got)

    def _helo_tuple(self) -> tuple[bytes, bytes]:
        return ((self._helo_name or "").encode("ascii", "replace"), self.client_ip.encode("ascii"))

    def _server_error(self, failure: Failure, what: str) -> None:
        if failure.check(smtp.SMTPServerError):
            self._reply(failure.value.code, str(failure.value.resp))
        else:
            log.failure("SMTP {what} failed", failure, what=what)
            self._reply(451, "4.3.0 Error: internal error")

    def _cmd_mail(self, arg: bytes) -> Any:
        if self._sender is not None:
            self._reply(503, "5.5.1 Error: nested MAIL command")
            return None
        if not self.limits_mail():  # smtpd_client_message_rate_limit
            return None
        m = _MAIL_RE.match(arg)
        if not m:
            self._reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
            return None
        params = self._mail_params_of(m.group(2) or b"")
        if params is None:
            return None
        try:
            path = addr.parse_path(m.group(1), params.smtputf8, allow_bare_local=True)
        except addr.PathError as e:
            if e.needs_utf8:
                self._reply(553, "5.6.7 Must declare SMTPUTF8 to send unicode address")
            else:
                self._reply(501, "5.1.7 Bad sender address syntax")
            return None
        if path and "@" not in path:
            path = f"{path}@{self.factory.config.mail.myorigin}"  # Postfix append_at_myorigin
        if self._avatar is not None:  # no Deferred when the avatar answers at once
            try:
                origin = self._avatar.validateFrom(self._helo_tuple(), _Path(path))
            except Exception:  # as an errback of the Deferred path would
                self._server_error(Failure(), "MAIL")
                return None
            if not isinstance(origin, defer.Deferred):
                return self._mail_ok(origin, params)
            origin.addCallbacks(self._mail_ok, self._server_error, callbackArgs=(params,),
                                errbackArgs=("MAIL",))
            return origin
        d = self._get_avatar()
        d.addCallback(lambda avatar: avatar.validateFrom(self._helo_tuple(), _Path(path)))
        d.addCallbacks(self._mail_ok, self._server_error, callbackArgs=(params,),
                       errbackArgs=("MAIL",))
        return d

    def _mail_params_of(self, text: bytes) -> addr.MailParams | None:
        """MAIL FROM's parameters (SIZE, BODY, SMTPUTF8, RET, ENVID); None once refused."""
        params = addr.MailParams()
        for param in text.split():
            key, _, value = param.partition(b"=")
            key = key.upper()
            if key == b"SIZE":
                if not value.isdigit():
                    self._reply(501, "5.5.4 Bad message size syntax")
                    return None
                if self.size_limit and int(value) > self.size_limit:
                    self._reply(552, "5.3.4 Message size exceeds fixed limit")
                    return None
                params.size = int(value)
            elif key == b"BODY":
                if value.upper() not in (b"7BIT", b"8BITMIME"):
                    self._reply(501, "5.5.4 Bad BODY keyword syntax")
                    return None
                params.body = value.upper().decode()
            elif key == b"SMTPUTF8" and not value:
                params.smtputf8 = True
            elif key == b"RET" and value.upper() in (b"FULL", b"HDRS") and params.ret is None:
                params.ret = value.upper().decode()
            elif key == b"ENVID" and value and params.envid is None:
                try:
                    params.envid = addr.xtext_decode(value)
                except ValueError:
                    self._reply(501, "5.5.4 Bad ENVID parameter syntax")
                    return None
            else:
                self._reply(555, f"5.5.4 Unsupported option: {printable(param)}")
                return None
        return params

    def _mail_ok(self, address: Any, params: addr.MailParams) -> Any:
        return self.milters_then(self.milters_mail(str(address), self._queue_id),
                                 self._mail_taken, address, params)

    def _mail_taken(self, address: Any, params: addr.MailParams) -> None:
        self._sender = str(address)
        self._mail_params = params
        self._arrival = self.factory.clock.seconds()
        self._instance = f"{id(self) & 0xffffff:x}.{int(self._arrival):x}.{next(_instances)}"
        self._reply(250, "2.1.0 Ok")

    def _cmd_rcpt(self, arg: bytes) -> Any:
        if self._sender is None:
            self._reply(503, "5.5.1 Error: need MAIL command")
            return None
        m = _RCPT_RE.match(arg)
        if not m:
            self._reply(501, "5.5.4 Syntax: RCPT TO:<address>")
            return None
        params = addr.RcptParams()
        for param in (m.group(2) or b"").split():
            key, _, value = param.partition(b"=")
            key = key.upper()
            try:
                if key == b"NOTIFY" and params.notify is None:
                    params.notify = addr.parse_notify(value)
                elif key == b"ORCPT" and params.orcpt is None:
                    params.orcpt = addr.parse_orcpt(value)
                else:
                    self._reply(555, f"5.5.4 Unsupported option: {printable(param)}")
                    return None
            except ValueError:
                self._reply(501, f"5.5.4 Bad {key.decode('ascii', 'replace')} parameter syntax")
                return None
        if not self.limits_rcpt():  # smtpd_client_recipient_rate_limit
            return None
        if len(self._recipients) >= self.factory.config.mail.smtpd_recipient_limit:
            self._reply(452, "4.5.3 Error: too many recipients")
            return None
        try:
            path = addr.parse_path(m.group(1), self._mail_params.smtputf8, allow_bare_local=True)
        except addr.PathError as e:
            if e.needs_utf8:
                self._reply(553, "5.6.7 Must declare SMTPUTF8 to send unicode address")
            else:
                self._reply(501, "5.1.3 Bad recipient address syntax")
            return None
        if not path:
            self._reply(501, "5.1.3 Bad recipient address syntax")
            return None
        self._rcpt_attempts += 1
        user = _Rcpt(_Path(path), self._helo_tuple(), self, _Path(self._sender or ""))
        outcome = self.factory.restrictions.check(RCPT_STAGES, request_of(self, "RCPT", path))
        if isinstance(outcome, defer.Deferred):  # a policy service, a DNS look-up
            outcome.addCallback(self._rcpt_checked, user, params)
            return outcome.addErrback(self._rcpt_refused, path)
        return self._rcpt_checked(outcome, user, params)

    def _rcpt_checked(self, outcome: Outcome, user: _Rcpt, params: addr.RcptParams) -> Any:
        """After the restriction lists (smtp/restrictions.py): refused, or on to the avatar."""
        path = str(user.dest)
        self.log_restrictions(outcome, "RCPT", path)
        if outcome.reply is not None:
            self._rcpt_refused(Failure(smtp.SMTPServerError(*outcome.reply)), path)
            return None
        user.relay_permitted = outcome.relay_permitted
        self._prepend.extend(h for h in outcome.prepend if h not in self._prepend)
        now = getattr(self._avatar, "recipient_now", None)
        if now is not None:  # a busy MX: cached look-ups answer without a Deferred
            try:
                recipient = now(user)
            except Exception:  # as an errback of the Deferred path would
                self._rcpt_refused(Failure(), path)
                return None
            if recipient is not None:
                return self._rcpt_ok(recipient, path, params)
        d = defer.maybeDeferred(self._avatar.validateTo, user)
        d.addCallbacks(
            self._rcpt_ok, self._rcpt_refused, callbackArgs=(path, params), errbackArgs=(path,)
        )
        return d

    def log_restrictions(self, outcome: Outcome, command: str, rcpt: str = "") -> None:
        """The reject_warning / warn / info lines of the lists, as Postfix logs them."""
        to = f" to=<{rcpt}>" if rcpt else ""
        for kind, text in outcome.logs:
            self._log(f"{self._queue_id or 'NOQUEUE'}: {kind}: {command} from {self.client}:"
                      f" {text}; from=<{self._sender}>{to} proto={self._proto}"
                      f" helo=<{self._helo_name or ''}>")

    def _rcpt_ok(self, recipient: Any, address: str, params: addr.RcptParams) -> Any:
        full = rcpt_check(self.factory, recipient, self._mail_params.size, address)
        if full is not None:  # [mailbox] quota_rule (mta/quota.py)
            return full.addCallbacks(lambda _: self._rcpt_quota_ok(recipient, address, params),
                                     self._rcpt_refused, errbackArgs=(address,))
        return self._rcpt_quota_ok(recipient, address, params)

    def _rcpt_quota_ok(self, recipient: Any, address: str, params: addr.RcptParams) -> Any:
        if self._queue_id is None:
            self._queue_id = new_queue_id()
            self._log(f"{self._queue_id}: client={self.client}{self.sasl_log()}")
        rcpt = Recipient(address, params, recipient)
        return self.milters_then(self.milters_rcpt(rcpt), self._rcpt_taken, rcpt)

    def _rcpt_taken(self, rcpt: Recipient) -> None:
        self._recipients.append(rcpt)
        self._reply(250, "2.1.5 Ok")

    def _rcpt_refused(self, failure: Failure, address: str) -> None:
        self._server_error(failure, "RCPT")
        if failure.check(smtp.SMTPServerError):
            self._log(
                f"{self._queue_id or 'NOQUEUE'}: reject: RCPT from {self.client}: "
                f"{failure.value.code} {failure.value.resp}; from=<{self._sender}> "
                f"to=<{address}> proto={self._proto} helo=<{self._helo_name or ''}>"
            )


class _Path(str):
    """An address as the IMessageDelivery avatar sees it (``str()`` gives it back)."""

    @property
    def local(self) -> bytes:
        return addr.split(self)[0].encode("utf-8")

    @property
    def domain(self) -> bytes:
        return addr.split(self)[1].encode("utf-8")


class _Rcpt:
    """What ``validateTo`` gets, shaped like ``smtp.User``: dest, helo, protocol, orig."""

    def __init__(self, dest: _Path, helo: tuple[bytes, bytes], proto: Any, orig: _Path) -> None:
        self.dest, self.helo, self.protocol, self.orig = dest, helo, proto, orig
        self.relay_permitted = False  # smtpd_relay_restrictions ended in a permit

    def __str__(self) -> str:
        return str(self.dest)
