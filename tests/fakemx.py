"""A little Internet on loopback for MTA tests: a twisted.names DNS server and receiving SMTP
servers on 127.0.0.x that accept, defer (4xx) or reject (5xx), with optional STARTTLS and AUTH.

Everything runs on the reactor of the test (trial tests return Deferreds); nothing blocks.
"""

from __future__ import annotations

import base64
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.error import CannotListenError
from twisted.names import common, dns, error, server
from twisted.protocols.basic import LineReceiver

CERT = os.path.join(os.path.dirname(__import__("twisted.test").test.__file__), "server.pem")


class ZoneResolver(common.ResolverBase):
    """Answers from ``records``: {(name, type): [payload, ...]}; unknown names are NXDOMAIN."""

    def __init__(self, records: dict[tuple[str, int], list[Any]]) -> None:
        super().__init__()
        self.records = records
        self.queries: list[tuple[str, int]] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:
        text = name.decode().lower().rstrip(".")
        self.queries.append((text, type))
        if not any(key[0] == text for key in self.records):
            return defer.fail(error.DomainError(text))
        answers = [dns.RRHeader(name=name, type=type, payload=p, ttl=60, auth=True)
                   for p in self.records.get((text, type), [])]
        return defer.succeed((answers, [], []))


def zone(
    mx: dict[str, list[tuple[int, str]]], a: dict[str, str]
) -> dict[tuple[str, int], list[Any]]:
    """Records for MX {domain: [(pref, host)]} (host "." = null MX) and A {name: ip}."""
    records: dict[tuple[str, int], list[Any]] = {}
    for domain, hosts in mx.items():
        records[(domain, dns.MX)] = [dns.Record_MX(pref, b"" if h == "." else h.encode())
                                     for pref, h in hosts]
    for name, ip in a.items():
        records.setdefault((name, dns.A), []).append(dns.Record_A(ip))
    return records


def start_dns(records: dict[tuple[str, int], list[Any]]) -> tuple[Any, ZoneResolver, list[Any]]:
    """(port number, resolver, listening ports) of a DNS server on 127.0.0.1 (UDP and TCP)."""
    resolver = ZoneResolver(records)
    factory = server.DNSServerFactory(authorities=[resolver])
    # The UDP port the kernel picks may be taken for TCP by another test process: try again
    # with a new UDP port a bounded number of times.
    for attempt in range(20):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        port = udp.getHost().port
        try:
            tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
        except CannotListenError:
            udp.stopListening()
            if attempt == 19:
                raise
            continue
        return port, resolver, [udp, tcp]
    raise AssertionError("no free DNS port")


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    mail_line: str
    rcpt_lines: list[str]
    tls: bool
    auth: str | None


@dataclass
class Behaviour:
    """How one receiving server answers. ``rcpt``: {address: "250 ..."}; default 250."""

    greeting: str = "220 mx ESMTP fakemx"
    rcpt: dict[str, str] = field(default_factory=dict)
    data_reply: str = "250 2.0.0 Ok: queued as FAKE"
    starttls: bool = False
    auth: tuple[str, str] | None = None
    dsn: bool = True
    hang_after_data: bool = False


class SinkProtocol(LineReceiver):
    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 20

    def connectionMade(self) -> None:
        self.f: SinkFactory = self.factory  # type: ignore[assignment]
        self.f.connections += 1
        self.f.open += 1
        self.tls = False
        self.auth_user: str | None = None
        self.reset()
        self.sendLine(self.f.behaviour.greeting.encode())
        if self.f.behaviour.greeting[0] in "45":
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.f.open -= 1

    def reset(self) -> None:
        self.sender: str | None = None
        self.rcpts: list[str] = []
        self.rcpt_lines: list[str] = []
        self.mail_line = ""
        self.lines: list[bytes] | None = None

    def lineReceived(self, line: bytes) -> None:
        if self.lines is not None:
            if line == b".":
                self.end_of_data()
            else:
                self.lines.append(line)
            return
        text = line.decode("utf-8", "replace")
        verb = text.split(" ", 1)[0].upper()
        b = self.f.behaviour
        if verb == "EHLO":
            ext = ["mx", "PIPELINING", "8BITMIME", "SIZE 10000000", "SMTPUTF8"]
            if b.dsn:
                ext.append("DSN")
            if b.starttls and not self.tls:
                ext.append("STARTTLS")
            if b.auth:
                ext.append("AUTH PLAIN")
            lines = [f"250-{e}" for e in ext[:-1]] + [f"250 {ext[-1]}"]
            self.sendLine("\r\n".join(lines).encode())
        elif verb == "STARTTLS":
            self.sendLine(b"220 2.0.0 Ready to start TLS")
            with open(CERT, "rb") as f:
                pem = f.read()
            self.transport.startTLS(ssl.PrivateCertificate.loadPEM(pem).options())
            self.tls = True
        elif verb == "AUTH":
            token = text.split(" ")[2] if len(text.split(" ")) > 2 else ""
            _, user, password = base64.b64decode(token).decode().split("\0")
            if b.auth == (user, password):
                self.auth_user = user
                self.sendLine(b"235 2.7.0 Authentication successful")
            else:
                self.sendLine(b"535 5.7.8 Error: authentication failed")
        elif verb == "MAIL":
            self.sender = text[10:].split(">")[0].lstrip("<")
            self.mail_line = text
            self.sendLine(b"250 2.1.0 Ok")
        elif verb == "RCPT":
            address = text[8:].split(">")[0].lstrip("<")
            reply = b.rcpt.get(address, "250 2.1.5 Ok")
            if reply.startswith("2"):
                self.rcpts.append(address)
                self.rcpt_lines.append(text)
            self.sendLine(reply.encode())
        elif verb == "DATA":
            if not self.rcpts:
                self.sendLine(b"554 5.5.1 Error: no valid recipients")
                return
            self.lines = []
            self.sendLine(b"354 End data with <CR><LF>.<CR><LF>")
        elif verb == "RSET":
            self.reset()
            self.sendLine(b"250 2.0.0 Ok")
        elif verb == "QUIT":
            self.sendLine(b"221 2.0.0 Bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"502 5.5.2 Error: command not recognized")

    def end_of_data(self) -> None:
        assert self.lines is not None
        data = b"".join((line[1:] if line.startswith(b".") else line) + b"\n"
                        for line in self.lines)
        b = self.f.behaviour
        if b.hang_after_data:
            self.f.hung.append(data)
            self.transport.abortConnection()
            return
        if b.data_reply.startswith("2"):
            self.f.received.append(Received(self.sender or "", self.rcpts, data, self.mail_line,
                                            self.rcpt_lines, self.tls, self.auth_user))
        self.sendLine(b.data_reply.encode())
        self.reset()


class SinkFactory(protocol.ServerFactory):
    protocol = SinkProtocol

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.received: list[Received] = []
        self.hung: list[bytes] = []
        self.connections = 0
        self.open = 0  # connections not yet lost: what they sent may still be unread


def free_port_on(addresses: list[str]) -> int:
    """A TCP port free on every one of ``addresses``."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = s.getsockname()[1]
        ok = True
        for address in addresses[1:]:
            with socket.socket() as t:
                try:
                    t.bind((address, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no common free port")


def start_sinks(
    behaviours: dict[str, Behaviour], port: int
) -> tuple[dict[str, SinkFactory], list[Any]]:
    """One receiving server per address (127.0.0.x), all on ``port``."""
    factories, ports = {}, []
    for address, behaviour in behaviours.items():
        factories[address] = SinkFactory(behaviour)
        ports.append(reactor.listenTCP(port, factories[address], interface=address))
    return factories, ports
