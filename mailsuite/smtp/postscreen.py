"""The front door of port 25, shaped like Postfix's postscreen(8) (issue 11 item 4).

Postfix puts postscreen in front of smtpd when master.cf says so; mailsuite screens every
connection to the ``smtp`` listener (port 25, never 587 or 465) unless ``postscreen_greet_wait
= 0s``:

- The host itself (loopback) is not screened. A client that ``postscreen_access_list`` permits
  (``permit_mynetworks``: one in mynetworks) passes at once, logged ``ALLOWLISTED [ip]:port``,
  as does one that passed the test within ``postscreen_greet_ttl`` (``PASS OLD [ip]:port``).
- Any other client gets the first line of a multi-line greeting, ``220-HOST ESMTP mailsuite``,
  and then ``postscreen_greet_wait`` seconds in which it must say nothing: an SMTP client waits
  for the greeting's last line. One that talks is logged ``PREGREET 11 after 0.23 from
  [ip]:port: EHLO x\\r\\n`` and, per ``postscreen_greet_action``: ``drop``, ``521 5.5.1 Protocol
  error`` and the connection is closed; ``enforce``, the session goes on but every RCPT gets
  ``550 5.5.1 Protocol error`` (logged ``NOQUEUE: reject: RCPT from ...``); ``ignore``, the
  session goes on as usual (what it sent is read as its commands, as postscreen hands the
  unread bytes to smtpd). Either way the test is repeated at its next connection.
- A client that waited gets the greeting's last line (``220 HOST ESMTP mailsuite``), is logged
  ``PASS NEW [ip]:port`` (``PASS OLD`` when it had an expired entry still kept, as postscreen
  does for ``postscreen_cache_retention_time``) and goes straight through for
  ``postscreen_greet_ttl``.

- With ``postscreen_dnsbl_sites`` (``zen.example*3, b.example=127.0.0.[2..11]*2``) the
  client's address is looked up in each DNSBL while it waits (smtp/dnsbl.py, through our
  resolver); the weights of the listings that answered within the wait are summed, and a score
  of ``postscreen_dnsbl_threshold`` or more is logged ``DNSBL rank N for [ip]:port`` and, per
  ``postscreen_dnsbl_action``: ``ignore`` (Postfix's default), nothing more; ``enforce``, every
  RCPT gets ``550 5.7.1 Service unavailable; client [ip] blocked using DOMAIN`` (the heaviest
  listing's); ``drop``, ``521`` with that text and the connection is closed. A client that
  fails it is not cached; a pass is kept for the shorter of the greet and the
  ``postscreen_dnsbl_ttl``. A DNSBL that does not answer lists nobody.

The cache lives in memory (postscreen's is a btree file): a restart forgets it. It holds at most
CACHE_LIMIT addresses (the oldest go first) and is swept of dead entries once an hour.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer

from mailsuite.config import MailConfig
from mailsuite.net import in_networks, parse_ip
from mailsuite.smtp import dnsbl

CACHE_LIMIT = 100_000
SWEEP_EVERY = 3600.0
PREGREET_REPLY = b"521 5.5.1 Protocol error\r\n"
ENFORCE_REPLY = "5.5.1 Protocol error"
_RCPT_ADDRESS = re.compile(rb"^TO:\s*<([^>]*)>", re.IGNORECASE)


def escape(data: bytes, limit: int = 100) -> str:
    """Bytes as postscreen logs them: printable ASCII as it is, ``\\r`` ``\\n`` ``\\t``, other
    bytes as ``\\ooo``; at most ``limit`` characters."""
    out = []
    for byte in data:
        char = chr(byte)
        if char in "\r\n\t":
            out.append({"\r": "\\r", "\n": "\\n", "\t": "\\t"}[char])
        elif char == "\\":
            out.append("\\\\")
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)[:limit]


class FrontDoor:
    """The settings and the allow cache of port 25, shared by its sessions; ``clock`` is an
    IReactorTime, ``maillog`` a MailLog (lines under ``postscreen``)."""

    def __init__(self, mail: MailConfig, hostname: str, maillog: Any, clock: Any,
                 blocklists: dnsbl.Blocklists | None = None) -> None:
        """``blocklists``: the DNSBL look-ups (needed for postscreen_dnsbl_sites)."""
        self.action = mail.postscreen_greet_action
        self.wait = mail.postscreen_greet_wait
        self.sites = mail.postscreen_dnsbl_sites if blocklists is not None else []
        self.blocklists = blocklists
        self.threshold = mail.postscreen_dnsbl_threshold
        self.dnsbl_action = mail.postscreen_dnsbl_action
        self.ttl = min(mail.postscreen_greet_ttl, mail.postscreen_dnsbl_ttl) if self.sites \
            else mail.postscreen_greet_ttl
        self.retention = mail.postscreen_cache_retention_time
        self.mynetworks = mail.mynetworks if "permit_mynetworks" in mail.postscreen_access_list \
            else []
        self.teaser = f"220-{hostname} ESMTP mailsuite\r\n".encode()
        self.maillog = maillog
        self.clock = clock
        self._passed: dict[str, float] = {}  # client IP -> when its pass expires
        self._swept = clock.seconds()

    def log(self, text: str) -> None:
        self.maillog.write("postscreen", text)

    def begin(self, transport: Any, ip: str, port: int) -> Screening | None:
        """Screen a new connection: None when the client passes at once (loopback, the access
        list, a pass in the cache), else the Screening under way (the teaser is sent)."""
        if self.wait <= 0 or parse_ip(ip) is None or in_networks(ip, [], loopback=True):
            return None
        who = f"[{ip}]:{port}"
        if in_networks(ip, self.mynetworks):
            self.log(f"ALLOWLISTED {who}")
            return None
        expires = self._passed.get(ip)
        now = self.clock.seconds()
        if expires is not None and now < expires:
            self.log(f"PASS OLD {who}")
            return None
        host = transport.getHost()
        self.log(f"CONNECT from {who} to [{getattr(host, 'host', '')}]:{getattr(host, 'port', '')}")
        return Screening(self, transport, ip, who, known=expires is not None)

    def passed(self, ip: str) -> None:
        now = self.clock.seconds()
        self._passed.pop(ip, None)  # re-inserted last: the dict is oldest first
        self._passed[ip] = now + self.ttl
        if len(self._passed) > CACHE_LIMIT:
            del self._passed[next(iter(self._passed))]
        if now - self._swept >= SWEEP_EVERY:
            self._swept = now
            for old in [k for k, t in self._passed.items() if t + self.retention <= now]:
                del self._passed[old]


class Screening:
    """The pregreet test of one connection. ``done`` fires (with None) when the session may be
    greeted: after ``postscreen_greet_wait``, or at once for ``drop`` (the connection is then
    closing: nothing more may be written)."""

    def __init__(self, door: FrontDoor, transport: Any, ip: str, who: str, known: bool) -> None:
        self.door, self.transport, self.ip, self.who, self.known = door, transport, ip, who, known
        self.started = door.clock.seconds()
        self.done: defer.Deferred[None] = defer.Deferred()
        self.enforce: tuple[int, str] | None = None  # failed under ``enforce``: RCPT's reply
        self.failed = False
        self.listed: dict[str, list[str]] = {}  # DNSBL domain -> its answer, once it came
        transport.write(door.teaser)
        self._timer: Any = door.clock.callLater(door.wait, self._waited)
        if door.blocklists is not None:
            for domain in dict.fromkeys(site.domain for site in door.sites):
                name = dnsbl.reversed_name(ip, domain)
                if name is not None:
                    door.blocklists.listed(name, domain).addCallback(self._answer, domain)

    def _answer(self, found: dnsbl.Listing, domain: str) -> None:
        if self.waiting:  # an answer after the wait does not count, as in postscreen
            self.listed[domain] = found.addresses

    @property
    def waiting(self) -> bool:
        return self._timer is not None

    def pregreet(self, data: bytes) -> None:
        """The client talked before its turn (the first bytes of it; called while waiting)."""
        if self.failed or not self.waiting:
            return
        self.failed = True
        after = self.door.clock.seconds() - self.started
        self.door.log(f"PREGREET {len(data)} after {after:.2f} from {self.who}: {escape(data)}")
        if self.door.action == "drop":
            self._stop()
            self.transport.write(PREGREET_REPLY)
            self.transport.loseConnection()
            self.door.log(f"DISCONNECT {self.who}")
            self.done.callback(None)
        elif self.door.action == "enforce":
            self.enforce = (550, ENFORCE_REPLY)

    def lost(self) -> None:
        """The connection went away while waiting."""
        if self.waiting:
            after = self.door.clock.seconds() - self.started
            self.door.log(f"HANGUP after {after:.2f} from {self.who} in tests before SMTP"
                          " handshake")
            self.door.log(f"DISCONNECT {self.who}")
            self._stop()

    def refuse_rcpt(self, arg: bytes, sender: str | None, helo: str | None,
                    reply: Any) -> bool:
        """Under ``enforce``, after a failed test: RCPT (with a sender) gets 550, logged as
        postscreen does; True when it was refused."""
        if self.enforce is None or sender is None:
            return False
        m = _RCPT_ADDRESS.match(arg)
        rcpt = m.group(1).decode("utf-8", "replace") if m else ""
        code, text = self.enforce
        reply(code, text)
        self.door.log(f"NOQUEUE: reject: RCPT from {self.who}: {code} {text};"
                      f" from=<{sender}>, to=<{rcpt}>, proto=ESMTP, helo=<{helo or ''}>")
        return True

    def _waited(self) -> None:
        score, domain = dnsbl.score(self.listed, self.door.sites)
        self._timer = None
        if score >= self.door.threshold:
            self.door.log(f"DNSBL rank {score} for {self.who}")
            text = f"5.7.1 Service unavailable; client [{self.ip}] blocked using {domain}"
            if self.door.dnsbl_action == "drop":
                self.transport.write(f"521 {text}\r\n".encode())
                self.transport.loseConnection()
                self.door.log(f"DISCONNECT {self.who}")
            elif self.door.dnsbl_action == "enforce" and self.enforce is None:
                self.enforce = (550, text)
            self.failed = True
        if not self.failed:
            self.door.log(f"PASS {'OLD' if self.known else 'NEW'} {self.who}")
            self.door.passed(self.ip)
        self.done.callback(None)

    def _stop(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
