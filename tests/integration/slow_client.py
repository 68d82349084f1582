"""A crowd of slow clients (issue 11 item 3): many connections that each send one byte every
INTERVAL seconds and never complete what they started. Standard library only, one thread.

    python slow_client.py HOST SMTP IMAP POP3 --count 1000 --interval 10 --sources A,B,...

The connections are spread over the kinds (SMTP: after EHLO, a command line trickled byte by
byte, or after DATA's 354 the message; IMAP and POP3: before login, a command line) and over the
SOURCES addresses (one after another). Each connection reaches its starting point (``ready``:
the greeting, EHLO's or DATA's reply) and then trickles until the server closes it. Output, JSON
lines on stdout: ``{"event": "ready", "open": N, "t": S}`` once every connection is opened and
ready (or failed), or 90% are ready and open; ``{"event": "held", "open": N, "t": S,
"not_ready": {kind: N}}`` every second; at the end ``{"event": "done", "results": [...]}``,
one result per connection: kind, ready and closed (seconds since the start), the last line the
server sent, error. Every wait is bounded by --max-seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import selectors
import socket
import sys
import time

KINDS = ("smtp-line", "smtp-data", "imap", "pop3")
#: what each kind sends to reach its starting point, and the reply that marks each step
STEPS = {
    "smtp-line": [(b"", b"220 "), (b"EHLO crowd.example\r\n", b"250 ")],
    "smtp-data": [(b"", b"220 "), (b"EHLO crowd.example\r\n", b"250 "),
                  (b"MAIL FROM:<crowd@crowd.example>\r\n", b"250 "),
                  (b"RCPT TO:<boss@example.test>\r\n", b"250 "), (b"DATA\r\n", b"354 ")],
    "imap": [(b"", b"* OK")],
    "pop3": [(b"", b"+OK")],
}
TRICKLE = {"smtp-line": b"N", "smtp-data": b"x", "imap": b"a", "pop3": b"U"}


class Slow:
    """One connection: steps to its starting point, then one byte per interval."""

    def __init__(self, kind: str, sock: socket.socket, started: float) -> None:
        self.kind, self.sock = kind, sock
        self.steps = list(STEPS[kind])
        self.buf = b""
        self.last_line = ""
        self.ready: float | None = None
        self.closed: float | None = None
        self.error = ""
        self.next_byte = 0.0
        self.connecting = True
        self.started = started

    def result(self, t0: float) -> dict:
        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - t0, 3)

        return {"kind": self.kind, "ready": rel(self.ready), "closed": rel(self.closed),
                "last_line": self.last_line, "error": self.error}

    def received(self, data: bytes, now: float, interval: float) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.last_line = line.rstrip(b"\r").decode("utf-8", "replace")
            if self.ready is None and self.steps and line.startswith(self.steps[0][1]):
                self.steps.pop(0)
                if self.steps:
                    self.sock.send(self.steps[0][0])
                else:
                    self.ready = now
                    self.next_byte = now + interval


class Opener:
    """Opens the crowd a number at a time: at most OPENING connections not yet established,
    so a full accept queue (a listen backlog of 50) does not turn the crowd's own SYNs into
    retransmissions seconds apart (a slow client holds connections; it need not flood)."""

    OPENING = 40

    def __init__(self, args: argparse.Namespace, sel: selectors.BaseSelector) -> None:
        ports = {"smtp-line": args.smtp, "smtp-data": args.smtp, "imap": args.imap,
                 "pop3": args.pop3}
        self.args, self.sel, self.ports = args, sel, ports
        self.kinds = [k for k in KINDS if ports[k]]
        self.sources = args.sources.split(",") if args.sources else [""]
        self.crowd: list[Slow] = []

    def more(self) -> None:
        opening = sum(1 for s in self.crowd if s.connecting and s.closed is None)
        while opening < self.OPENING and len(self.crowd) < self.args.count:
            self.crowd.append(self._open(len(self.crowd)))
            opening += 1

    def _open(self, i: int) -> Slow:
        kind = self.kinds[i % len(self.kinds)]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        source = self.sources[i % len(self.sources)]
        if source:
            sock.bind((source, 0))
        err = sock.connect_ex((self.args.host, self.ports[kind]))
        slow = Slow(kind, sock, time.monotonic())
        if err not in (0, errno.EINPROGRESS):
            slow.error, slow.closed = f"connect: {errno.errorcode.get(err, err)}", slow.started
            sock.close()
        else:
            self.sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, slow)
        return slow


def close(sel: selectors.BaseSelector, slow: Slow, now: float, error: str = "") -> None:
    sel.unregister(slow.sock)
    slow.sock.close()
    slow.closed, slow.error = now, error


def run(args: argparse.Namespace) -> list[dict]:
    t0 = time.monotonic()
    sel = selectors.DefaultSelector()
    opener = Opener(args, sel)
    crowd = opener.crowd
    said_ready = False
    next_report = t0 + 1
    end = t0 + args.max_seconds
    while time.monotonic() < end:
        opener.more()
        open_ = [s for s in crowd if s.closed is None]
        if not open_:
            break
        now = time.monotonic()
        if not said_ready and len(crowd) == args.count and (
                all(s.ready is not None or s.closed is not None for s in crowd)
                or sum(1 for s in open_ if s.ready is not None) >= 0.9 * args.count):
            said_ready = True
            emit({"event": "ready", "open": len(open_), "t": round(now - t0, 3)})
        if now >= next_report:
            next_report += 1
            waiting = {}
            for s in open_:
                if s.ready is None:
                    waiting[s.kind] = waiting.get(s.kind, 0) + 1
            emit({"event": "held", "open": len(open_), "t": round(now - t0, 3),
                  "not_ready": waiting})
        for key, mask in sel.select(timeout=0.05):
            slow: Slow = key.data
            now = time.monotonic()
            if slow.connecting and mask & selectors.EVENT_WRITE:
                err = slow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    close(sel, slow, now, f"connect: {errno.errorcode.get(err, err)}")
                    continue
                slow.connecting = False
                sel.modify(slow.sock, selectors.EVENT_READ, slow)
            if mask & selectors.EVENT_READ:
                try:
                    data = slow.sock.recv(65536)
                except OSError as e:
                    close(sel, slow, now, f"recv: {e}")
                    continue
                if not data:
                    close(sel, slow, now)
                    continue
                slow.received(data, now, args.interval)
        now = time.monotonic()
        for slow in crowd:
            if slow.closed is None and slow.ready is not None and now >= slow.next_byte:
                slow.next_byte = now + args.interval
                with contextlib.suppress(OSError):  # closed by the server: the read says so
                    slow.sock.send(TRICKLE[slow.kind])
    now = time.monotonic()
    for slow in crowd:
        if slow.closed is None:
            slow.error = "still open at --max-seconds"
            slow.sock.close()
    return [s.result(t0) for s in crowd]


def emit(line: dict) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("host")
    p.add_argument("smtp", type=int, help="SMTP port, 0: none")
    p.add_argument("imap", type=int, help="IMAP port, 0: none")
    p.add_argument("pop3", type=int, help="POP3 port, 0: none")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--sources", default="", help="addresses to connect from, comma-separated")
    p.add_argument("--max-seconds", type=float, default=600.0)
    args = p.parse_args(argv)
    emit({"event": "done", "results": run(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
