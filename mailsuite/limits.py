"""Per-client and per-service limits, shared by the SMTP, IMAP and POP3 factories of one server.

What Postfix's anvil(8) and master(8) and Dovecot's anvil keep, for one process:

- ``Anvil``: per (service, client address) the connections open now and the rates of events
  (connections, messages, recipients, new TLS sessions) in the current window of
  ``anvil_rate_time_unit`` seconds. As anvil(8), a client's window starts at its first event
  after the previous window ran out, and all its counters start again from zero then.
- ``Counter``: sessions open per key: per service (Postfix's process limit, Dovecot's
  ``process_limit``) and per (protocol, user, client address) (``mail_max_userip_connections``).
- ``Limits``: the one object a server shares (tap.py makes it), with the log of the events
  over a limit, each logged at most once per key per ``LOG_PERIOD`` (one line per client per
  minute, not one per refused connection).
- ``Slot``: what one IMAP or POP3 connection holds of them, released at connectionLost.

State lives on the reactor thread only; every map is swept of entries that ran out, so a flood
from many addresses costs memory for one window at most. Time is the injected clock's.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from mailsuite.net import in_networks

LOG_PERIOD = 60.0  # an over-limit event is logged at most once per client (or service) per minute


def userip_exceeded(limit: int) -> str:
    """Dovecot's words for a login past mail_max_userip_connections (reply and log)."""
    return ("Maximum number of connections from user+IP exceeded"
            f" (mail_max_userip_connections={limit})")


class _Client:
    __slots__ = ("count", "rates", "start")

    def __init__(self, start: float) -> None:
        self.count = 0
        self.start = start
        self.rates: dict[str, int] = {}


class Anvil:
    """Connection counts and event rates per (service, client), as Postfix's anvil(8)."""

    def __init__(self, clock: Any, time_unit: float = 60.0) -> None:
        self.clock = clock
        self.time_unit = time_unit
        self._clients: dict[tuple[str, str], _Client] = {}
        self._swept = clock.seconds()

    def _client(self, service: str, ip: str) -> _Client:
        now = self.clock.seconds()
        if now - self._swept >= self.time_unit:
            self._sweep(now)
        entry = self._clients.get((service, ip))
        if entry is None:
            entry = self._clients[(service, ip)] = _Client(now)
        elif now - entry.start >= self.time_unit:
            entry.start, entry.rates = now, {}
        return entry

    def _sweep(self, now: float) -> None:
        """Forget the clients with no connection whose window ran out."""
        self._swept = now
        for key in [k for k, c in self._clients.items()
                    if c.count == 0 and now - c.start >= self.time_unit]:
            del self._clients[key]

    def connect(self, service: str, ip: str) -> tuple[int, int]:
        """A new connection: (connections of the client open now, connections in its window)."""
        entry = self._client(service, ip)
        entry.count += 1
        return entry.count, self._bump(entry, "connect")

    def disconnect(self, service: str, ip: str) -> None:
        entry = self._clients.get((service, ip))
        if entry is not None and entry.count > 0:
            entry.count -= 1

    def event(self, kind: str, service: str, ip: str) -> int:
        """One more event ``kind`` (message, recipient, tls) of the client: its rate now."""
        return self._bump(self._client(service, ip), kind)

    @staticmethod
    def _bump(entry: _Client, kind: str) -> int:
        entry.rates[kind] = rate = entry.rates.get(kind, 0) + 1
        return rate

    def __len__(self) -> int:
        return len(self._clients)


class Counter:
    """How many sessions each key has open (keys with none are dropped)."""

    def __init__(self) -> None:
        self._counts: dict[Hashable, int] = {}

    def add(self, key: Hashable) -> int:
        self._counts[key] = count = self._counts.get(key, 0) + 1
        return count

    def remove(self, key: Hashable) -> None:
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)

    def __getitem__(self, key: Hashable) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        return len(self._counts)

    def items(self) -> list[tuple[Hashable, int]]:
        return list(self._counts.items())


class OncePer:
    """``allow(key)`` is True at most once per ``period`` seconds for each key."""

    def __init__(self, clock: Any, period: float = LOG_PERIOD) -> None:
        self.clock, self.period = clock, period
        self._last: dict[Hashable, float] = {}
        self._swept = clock.seconds()

    def allow(self, key: Hashable) -> bool:
        now = self.clock.seconds()
        if now - self._swept >= self.period:  # keys of one period kept at most
            self._swept = now
            self._last = {k: t for k, t in self._last.items() if now - t < self.period}
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            return False
        self._last[key] = now
        return True

    def __len__(self) -> int:
        return len(self._last)


class Limits:
    """The limits state of one server: tap.py makes one and gives it to every factory, so
    143 and 993 (or 110 and 995) count together, as one Dovecot service, and user+IP counts
    hold across both ports. ``mail``: the [mail] section (anvil_rate_time_unit and
    smtpd_client_event_limit_exceptions); ``maillog`` gets the over-limit lines."""

    def __init__(self, mail: Any, maillog: Any, clock: Any) -> None:
        self.maillog = maillog
        self.clock = clock
        self.exceptions = mail.smtpd_client_event_limit_exceptions
        self.anvil = Anvil(clock, mail.anvil_rate_time_unit)
        self.sessions = Counter()  # per service
        self.userip = Counter()  # per (protocol, user, ip)
        self._once = OncePer(clock)

    def exempt(self, ip: str) -> bool:
        """Postfix's smtpd_client_event_limit_exceptions ($mynetworks): no anvil limits."""
        return in_networks(ip, self.exceptions)

    def warn(self, key: Hashable, program: str, text: str) -> None:
        """Log ``text`` unless a line for ``key`` was logged in the last minute."""
        if self._once.allow(key):
            self.maillog.write(program, text)

    def enter(self, service: str, limit: int) -> bool:
        """A new session of ``service``: False (not counted) when ``limit`` are open (0: none)."""
        if limit and self.sessions[service] >= limit:
            return False
        self.sessions.add(service)
        return True


class Slot:
    """What one IMAP or POP3 connection holds: its place among the sessions of its service
    and, once logged in, among its user's from its address. ``release`` at connectionLost."""

    def __init__(self, limits: Limits, service: str, ip: str) -> None:
        self.limits, self.service, self.ip = limits, service, ip
        self._entered = False
        self._user: tuple[str, str, str] | None = None

    def enter(self, process_limit: int) -> bool:
        self._entered = self.limits.enter(self.service, process_limit)
        if not self._entered:
            self.limits.warn(("process_limit", self.service), "master",
                             f"Warning: service({self.service}): process_limit ({process_limit})"
                             " reached, client connections are being dropped")
        return self._entered

    def login(self, user: str, limit: int) -> bool:
        """Count the session for ``user`` from this address; False (not counted) when ``limit``
        sessions of the user from it are open already (0: no limit)."""
        key = (self.service, user, self.ip)
        if limit and self.limits.userip[key] >= limit:
            return False
        self.limits.userip.add(key)
        self._user = key
        return True

    def release(self) -> None:
        if self._entered:
            self._entered = False
            self.limits.sessions.remove(self.service)
        if self._user is not None:
            self.limits.userip.remove(self._user)
            self._user = None
