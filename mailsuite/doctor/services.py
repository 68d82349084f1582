"""``mailsuite doctor``'s checks over the network: each configured port listens (on which
addresses, read from /proc/net/tcp and tcp6) and answers its greeting (SMTP 220, POP3 +OK,
IMAP ``* OK``, HTTP for autoconfig; implicit-TLS ports after a TLS handshake), and the relay
is closed to a client outside ``mynetworks``. Blocking sockets, bounded by a timeout, run in
threads (this is a command, not the server)."""

from __future__ import annotations

import contextlib
import ipaddress
import smtplib
import socket
import ssl
from typing import Any

from twisted.internet import defer, threads

from mailsuite.doctor.context import Context
from mailsuite.doctor.verdict import Result, cannot_run, fail, ok, warn
from mailsuite.net import in_networks
from mailsuite.startup import StartupError

IMPLICIT_TLS = ("smtps", "pop3s", "imaps", "autoconfigs")
GREETINGS = {"smtp": b"220", "submission": b"220", "smtps": b"220", "lmtp": b"220",
             "pop3": b"+OK", "pop3s": b"+OK", "imap": b"* OK", "imaps": b"* OK",
             "autoconfig": b"HTTP/", "autoconfigs": b"HTTP/"}
WILDCARDS = ("0.0.0.0", "::")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def _proc_address(text: str) -> str:
    """``0100007F`` -> 127.0.0.1; tcp6's 32 hex digits (four little-endian words) -> IPv6."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening(port: int, tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")
              ) -> list[str]:
    """The addresses with a listening TCP socket on ``port`` (``::ffff:a.b.c.d`` as a.b.c.d)."""
    found = []
    for table in tables:
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                address, _, hexport = fields[1].partition(":")
                if fields[3] == _LISTEN and int(hexport, 16) == port:
                    ip = ipaddress.ip_address(_proc_address(address))
                    mapped = getattr(ip, "ipv4_mapped", None)
                    found.append(str(mapped or ip))
    return list(dict.fromkeys(found))


def listen_addresses(inet_interfaces: list[str]) -> list[str]:
    """The addresses the server binds (tap.py's rule), imported when needed: the server's
    assembly is not loaded for ``mailsuite --help``."""
    from mailsuite.tap import listen_addresses as bound
    return bound(inet_interfaces)


def _target(address: str) -> str:
    """Where to connect to reach a listener bound to ``address``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)


def greeting(name: str, address: str, port: int, timeout: float, host: str) -> str:
    """The first line the service answers (after a TLS handshake on implicit-TLS ports; an
    HTTP request for autoconfig). OSError/ssl.SSLError when it does not."""
    with socket.create_connection((address, port), timeout=timeout) as raw:
        conn: socket.socket = raw
        if name in IMPLICIT_TLS:
            context = ssl.create_default_context()
            context.check_hostname = False  # the certificate check judges the certificate
            context.verify_mode = ssl.CERT_NONE
            conn = context.wrap_socket(raw, server_hostname=host)
        if name.startswith("autoconfig"):
            conn.sendall(f"HEAD / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while b"\n" not in data and len(data) < 1024:
            chunk = conn.recv(1024)
            if not chunk:
                break
            data += chunk
    return data.partition(b"\n")[0].decode("utf-8", "replace").strip()


def _unix_greeting(path: str, timeout: float) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        return conn.recv(1024).partition(b"\n")[0].decode("utf-8", "replace").strip()


def _ports(ctx: Context) -> list[tuple[str, int | str]]:
    listen = ctx.cfg.listen
    ports: list[tuple[str, int | str]] = list(listen.enabled().items())
    ports += [(n, p) for n in ("autoconfig", "autoconfigs") if (p := getattr(listen, n))]
    return ports


def check_port(ctx: Context, name: str, port: int | str, configured: list[str]) -> Result:
    """(In a thread) one service: its sockets and its greeting on each configured address."""
    host = ctx.cfg.mail.myhostname
    if isinstance(port, str):  # lmtp on a unix socket
        check = f"port {name} {port}"
        try:
            line = _unix_greeting(port, ctx.connect_timeout)
        except OSError as e:
            return fail(check, f"no answer on the socket: {e.strerror or e}",
                        "start mailsuite (systemctl start mailsuite); see its log")
        return _judge(check, name, line, "the socket")
    check = f"port {name} {port}"
    bound = listening(port)
    if not bound:
        return fail(check, "nothing listens", "start mailsuite (systemctl start mailsuite);"
                    " the maillog or journalctl -u mailsuite says why it did not bind")
    wanted = [a for a in configured if a not in bound and not set(WILDCARDS) & set(bound)]
    if wanted:
        return fail(check, f"listening on {', '.join(bound)}, not on {', '.join(wanted)}"
                    " ([mail] inet_interfaces)", "another program holds the port, or restart"
                    " mailsuite after changing inet_interfaces")
    targets = [_target(a) for a in configured] or [_target(bound[0])]
    lines = []
    for address in dict.fromkeys(targets):
        try:
            line = greeting(name, address, port, ctx.connect_timeout, host)
        except (OSError, ssl.SSLError) as e:
            return fail(check, f"listening on {', '.join(bound)}, but {address} does not"
                        f" answer: {e}", "see the maillog; a firewall (nft list ruleset)?")
        verdict = _judge(check, name, line, f"listening on {', '.join(bound)}; {address}")
        if verdict.status != "ok":
            return verdict
        lines.append(verdict.found)
    return ok(check, "; ".join(lines))


def _judge(check: str, name: str, line: str, where: str) -> Result:
    if not line.encode().startswith(GREETINGS[name]):
        shown = line[:80] or "nothing (the connection closed)"
        return fail(check, f"{where} answers {shown!r}, not {GREETINGS[name].decode()}...",
                    "another server (Postfix, Dovecot, a web server?) holds the port: stop it")
    return ok(check, f"{where} answers {line[:60]!r}")


@defer.inlineCallbacks
def check_ports(ctx: Context) -> Any:
    try:
        configured = listen_addresses(ctx.cfg.mail.inet_interfaces)
    except StartupError as e:
        return [fail("ports", str(e), "fix [mail] inet_interfaces")]
    results = []
    for name, port in _ports(ctx):
        results.append((yield threads.deferToThread(check_port, ctx, name, port, configured)))
    return results


def outside_domain(ctx: Context) -> str:
    """A domain that is none of ours (RFC 2606's), for the relay test's recipient."""
    ours = {*ctx.cfg.mail.mydestination, *ctx.cfg.mail.relay_domains, ctx.cfg.mail.mydomain}
    return next(d for d in ("example.net", "example.org", "example.com", "relay-test.invalid")
                if d not in ours)


def relay_attempts(ctx: Context, configured: list[str]) -> list[tuple[str, str]]:
    """(source, destination) pairs for the relay test: this host's addresses outside
    mynetworks (no link-local IPv6, which needs a scope) to a listening address of the same
    family (to the source itself behind a wildcard), loopback to loopback first."""
    outside = [ipaddress.ip_address(a) for a in ctx.local or []
               if not in_networks(a, ctx.cfg.mail.mynetworks)]
    outside = [a for a in outside if not (a.version == 6 and a.is_link_local)]
    pairs = []
    for bound in configured:
        if bound in WILDCARDS:
            families = {4, 6} if bound == "::" else {4}
            pairs += [(str(a), str(a)) for a in outside if a.version in families]
            continue
        target = ipaddress.ip_address(bound)
        same = [a for a in outside if a.version == target.version]
        same.sort(key=lambda a: a.is_loopback != target.is_loopback)
        pairs += [(str(a), bound) for a in same]
    return list(dict.fromkeys(pairs))


def relay_attempt(source: str, target: str, port: int, timeout: float, rcpt: str,
                  helo: str) -> tuple[int, str]:
    """(In a thread) RCPT TO an outside domain from ``source``: the reply (no DATA is sent)."""
    with smtplib.SMTP(timeout=timeout, source_address=(source, 0), local_hostname=helo) as s:
        s.connect(target, port)
        s.ehlo_or_helo_if_needed()
        code, text = s.mail("")
        if code != 250:
            return code, text.decode("utf-8", "replace")
        code, text = s.rcpt(rcpt)
        with contextlib.suppress(smtplib.SMTPException, OSError):
            s.rset()
        return code, text.decode("utf-8", "replace")


@defer.inlineCallbacks
def check_relay(ctx: Context) -> Any:
    check = "relay"
    port = ctx.cfg.listen.smtp
    if port is None:
        return ok(check, "[listen] smtp is off: nothing to relay through")
    if ctx.local is None:
        return cannot_run(check, ctx.local_problem)
    try:
        configured = listen_addresses(ctx.cfg.mail.inet_interfaces)
    except StartupError as e:
        return cannot_run(check, str(e))
    rcpt = f"doctor-relay-test@{outside_domain(ctx)}"
    last = ""
    for source, target in relay_attempts(ctx, configured)[:3]:
        try:
            code, text = yield threads.deferToThread(
                relay_attempt, source, target, port, ctx.connect_timeout, rcpt,
                ctx.cfg.mail.myhostname)
        except (OSError, smtplib.SMTPException) as e:
            last = f"from {source} to {target} port {port}: {e}"
            continue
        return _relay_verdict(code, text, source, rcpt)
    if last:
        return cannot_run(check, last)
    return cannot_run(check, "every address of this host is in mynetworks (trusted to relay):"
                      " test from another host: swaks --server HOST --to someone@example.net")


def _relay_verdict(code: int, text: str, source: str, rcpt: str) -> Result:
    check = "relay"
    said = f"RCPT TO:<{rcpt}> from {source} (not in mynetworks): {code} {text[:60]}"
    if 200 <= code < 400:
        return fail(check, f"{said}: an OPEN RELAY, spammers will use it",
                    "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated,"
                    " reject_unauth_destination, and mynetworks only your own networks")
    if code >= 500 and ("5.7.1" in text or "relay" in text.lower()):
        return ok(check, said)
    return warn(check, f"{said}: refused, but not as relay access", "look at the maillog line")

