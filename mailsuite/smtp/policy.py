"""The client side of Postfix's policy delegation protocol (SMTPD_POLICY_README), for
``check_policy_service inet:host:port`` / ``unix:/path`` in the SMTP restrictions.

A request is ``name=value`` lines and an empty line (``request=smtpd_access_policy``,
``protocol_state``, ``client_address``, ``sender``, ``recipient``, ``instance``, ...); the
reply is ``action=ACTION`` (any access(5) action, smtp/access.py) and an empty line.
Connections are kept and reused, one request at a time each: a session that asks while every
connection is busy gets a new one. A connection idle for ``smtpd_policy_service_max_idle`` or
used ``smtpd_policy_service_request_limit`` times (0: no limit) is closed. A request that gets
no reply within ``smtpd_policy_service_timeout``, a refused connection or a reply without an
action is tried again once on a new connection after a second
(``smtpd_policy_service_try_limit`` = 2, ``smtpd_policy_service_retry_delay`` = 1s); then the
answer is ``smtpd_policy_service_default_action`` (``451 4.3.5 Server configuration
problem``), logged ``warning: problem talking to server ...``. Everything runs on the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints, protocol, task
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from mailsuite.smtp.access import Action, parse_action

TRY_LIMIT = 2
RETRY_DELAY = 1.0
MAX_ATTRIBUTE = 8192


class PolicyError(Exception):
    pass


def parse_endpoint(spec: str) -> tuple[str, str, int]:
    """``inet:host:port`` (``host:port``) -> ('inet', host, port); ``unix:/path`` ->
    ('unix', path, 0); ValueError otherwise."""
    kind, _, rest = spec.partition(":")
    if kind == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"{spec!r}: a unix socket needs an absolute path")
        return "unix", rest, 0
    if kind != "inet":
        rest = spec
    host, colon, port = rest.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{spec!r} is not inet:host:port or unix:/path")
    return "inet", host, int(port)


class _Connection(LineOnlyReceiver):
    transport: Any
    delimiter = b"\n"
    MAX_LENGTH = MAX_ATTRIBUTE

    def __init__(self) -> None:
        self.used = 0
        self.idle_timer: Any = None
        self._waiting: defer.Deferred[dict[str, str]] | None = None
        self._answer: dict[str, str] = {}
        self.lost = False

    def ask(self, attributes: dict[str, str]) -> defer.Deferred[dict[str, str]]:
        self._answer = {}
        self._waiting = defer.Deferred()
        lines = [f"{k}={v}\n" for k, v in attributes.items()]
        self.transport.write(("".join(lines) + "\n").encode("utf-8", "replace"))
        return self._waiting

    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if text:
            name, _, value = text.partition("=")
            self._answer[name.strip()] = value.strip()
            return
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(self._answer)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fail(PolicyError("reply line too long"))
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = True
        self._fail(PolicyError(reason.getErrorMessage()))

    def _fail(self, e: Exception) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(e)


class PolicyService:
    """One policy server, shared by every session. ``mail`` is the MailConfig (the
    smtpd_policy_service_* keys), ``warn(text)`` the maillog line writer."""

    def __init__(self, spec: str, mail: Any, reactor: Any, warn: Callable[[str], None]) -> None:
        self.spec = spec
        kind, where, port = parse_endpoint(spec)
        self.name = where if kind == "unix" else f"{where}:{port}"
        self.reactor = reactor
        self.timeout: float = mail.smtpd_policy_service_timeout
        self.max_idle: float = mail.smtpd_policy_service_max_idle
        self.request_limit: int = mail.smtpd_policy_service_request_limit
        self.default_action: Action = mail.smtpd_policy_service_default_action
        self.warn = warn
        if kind == "unix":
            self._endpoint: Any = endpoints.UNIXClientEndpoint(
                reactor, where, timeout=int(self.timeout))
        else:
            self._endpoint = endpoints.HostnameEndpoint(
                reactor, where, port, timeout=int(self.timeout))
        self._idle: list[_Connection] = []

    def query(self, attributes: dict[str, str]) -> defer.Deferred[Action]:
        """The action for one request; never errbacks (the default action instead)."""
        return defer.ensureDeferred(self._query(attributes))

    async def _query(self, attributes: dict[str, str]) -> Action:
        for attempt in range(1, TRY_LIMIT + 1):
            try:
                reply = await self._ask(attributes, fresh=attempt > 1)
                if "action" not in reply:
                    raise PolicyError("missing action in reply")
                return parse_action(reply["action"])
            except Exception as e:  # a refused or lost connection, a timeout, a bad reply
                if attempt == TRY_LIMIT:
                    why = f"timeout after {self.timeout:g}s" if isinstance(
                        e, defer.TimeoutError) else str(e) or type(e).__name__
                    self.warn(f"warning: problem talking to server {self.name}: {why}")
                    break
                await task.deferLater(self.reactor, RETRY_DELAY, lambda: None)
        return self.default_action

    async def _ask(self, attributes: dict[str, str], fresh: bool) -> dict[str, str]:
        conn = None if fresh else self._take_idle()
        if conn is None:
            d = self._endpoint.connect(protocol.Factory.forProtocol(_Connection))
            d.addTimeout(self.timeout, self.reactor)
            conn = await d
        assert conn is not None
        asked = conn.ask(attributes)
        asked.addTimeout(self.timeout, self.reactor)
        try:
            reply = await asked
        except BaseException:
            conn.transport.abortConnection()
            raise
        conn.used += 1
        self._put_idle(conn)
        return reply

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_timer is not None and conn.idle_timer.active():
                conn.idle_timer.cancel()
            if not conn.lost:
                return conn
        return None

    def _put_idle(self, conn: _Connection) -> None:
        if conn.lost or (self.request_limit and conn.used >= self.request_limit):
            conn.transport.loseConnection()
            return
        conn.idle_timer = self.reactor.callLater(self.max_idle, self._expire, conn)
        self._idle.append(conn)

    def _expire(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)
        conn.transport.loseConnection()
