"""The attacker of test_brute_force: logins sent at once, run inside a network namespace.

    python brute_client.py PROTO HOST PORT MODE SOURCE PASSWORD...

PROTO is imap, pop3 or smtp; MODE ``parallel`` (one connection per password, all sent at once;
the last password only after the others are under way) or ``pipelined`` (one connection, every
login in one write). SOURCE is the address to connect from. Prints one JSON line per password:
``{"i": index, "reply": final reply line or null, "t": seconds since the start}``.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import threading
import time

TIMEOUT = 60.0


class Conn:
    def __init__(self, host: str, port: int, source: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT,
                                             source_address=(source, 0))
        self.buf = b""

    def line(self) -> str | None:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def until(self, done) -> str | None:
        """Read lines until ``done(line)``; that line (None if the server closed first)."""
        while True:
            line = self.line()
            if line is None or done(line):
                return line


def greet(proto: str, conn: Conn) -> None:
    if proto == "smtp":
        conn.until(lambda line: line.startswith("220 "))
        conn.sock.sendall(b"EHLO attacker.example\r\n")
        conn.until(lambda line: line.startswith("250 "))
    else:
        conn.line()


def login(proto: str, tag: str, password: str) -> bytes:
    if proto == "imap":
        return f"{tag} LOGIN boss {password}\r\n".encode()
    if proto == "pop3":
        return f"USER boss\r\nPASS {password}\r\n".encode()
    plain = base64.b64encode(b"\0boss\0" + password.encode()).decode()
    return f"AUTH PLAIN {plain}\r\n".encode()


def final(proto: str, tag: str):
    """Is this line the final reply to the login tagged ``tag``?"""
    if proto == "imap":
        return lambda line: line.startswith(tag + " ")
    if proto == "pop3":
        return lambda line: line.startswith("-ERR") or line == "+OK Logged in."
    return lambda line: line[:3].isdigit() and line[3:4] == " "


def parallel(proto: str, host: str, port: int, source: str, passwords: list[str]) -> list[dict]:
    results: list[dict] = [{"i": i, "reply": None, "t": None} for i in range(len(passwords))]
    conns = []
    for _ in passwords:
        conn = Conn(host, port, source)
        greet(proto, conn)
        conns.append(conn)
    start = time.monotonic()

    def one(i: int) -> None:
        conns[i].sock.sendall(login(proto, "a", passwords[i]))
        try:
            results[i]["reply"] = conns[i].until(final(proto, "a"))
        except OSError as e:
            results[i]["reply"] = f"error: {e}"
        results[i]["t"] = round(time.monotonic() - start, 3)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(passwords))]
    for t in threads[:-1]:
        t.start()
    time.sleep(0.3)  # the others are queued first: the right password comes last
    threads[-1].start()
    for t in threads:
        t.join(TIMEOUT)
    return results


def pipelined(proto: str, host: str, port: int, source: str, passwords: list[str]) -> list[dict]:
    conn = Conn(host, port, source)
    greet(proto, conn)
    start = time.monotonic()
    conn.sock.sendall(b"".join(login(proto, f"a{i}", p) for i, p in enumerate(passwords)))
    results = []
    for i in range(len(passwords)):
        try:
            reply = conn.until(final(proto, f"a{i}"))
        except OSError as e:
            reply = f"error: {e}"
        results.append({"i": i, "reply": reply, "t": round(time.monotonic() - start, 3)})
        if reply is None:
            break
    return results


def main(argv: list[str]) -> None:
    proto, host, port, mode, source, *passwords = argv
    run = parallel if mode == "parallel" else pipelined
    for result in run(proto, host, int(port), source, passwords):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
