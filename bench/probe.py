"""NOOP latency on one IMAP connection while another SELECTs a big mailbox with no index.

Issue 3 asks that "while one session parses a huge mailbox, other sessions keep answering (a NOOP
on another connection within 100 ms)"; mailbench has no workload for that, so this is it. Plain
blocking sockets, standard library only; every wait is bounded by ``timeout``.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time


class ImapLine:
    """A tiny IMAP client for commands whose responses hold no literals (LOGIN/SELECT/NOOP)."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.tag = 0
        greeting = self.file.readline()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"bad greeting {greeting!r}")

    def send(self, command: str) -> bytes:
        self.tag += 1
        tag = b"p%d" % self.tag
        self.sock.sendall(tag + b" " + command.encode() + b"\r\n")
        return tag

    def wait(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError("connection closed")
            lines.append(line)
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"command failed: {line!r}")
                return lines

    def command(self, command: str) -> list[bytes]:
        return self.wait(self.send(command))

    def close(self) -> None:
        try:
            self.command("LOGOUT")
        except (OSError, RuntimeError):
            pass
        self.sock.close()


def noop_during_select(
    port: int, busy_user: str, other_user: str, password: str,
    interval: float = 0.05, timeout: float = 600.0,
) -> dict:
    """``busy_user`` SELECTs its INBOX while ``other_user``'s selected session sends NOOPs.

    Returns the SELECT time, the NOOP round trips (ms) measured while the SELECT ran, and the
    EXISTS count the SELECT announced.
    """
    other = ImapLine(port, timeout)
    busy = ImapLine(port, timeout)
    try:
        other.command(f"LOGIN {other_user} {password}")
        other.command("SELECT INBOX")
        busy.command(f"LOGIN {busy_user} {password}")
        done = threading.Event()
        outcome: dict = {}

        def select() -> None:
            t0 = time.monotonic()
            try:
                lines = busy.command("SELECT INBOX")
                outcome["select_s"] = time.monotonic() - t0
                outcome["exists"] = next(
                    (int(x.split()[1]) for x in lines if x.rstrip().endswith(b"EXISTS")), None)
            except (OSError, RuntimeError) as e:
                outcome["error"] = f"{type(e).__name__}: {e}"
            finally:
                done.set()

        thread = threading.Thread(target=select, daemon=True)
        thread.start()
        noops: list[float] = []
        while not done.is_set():
            t0 = time.monotonic()
            other.command("NOOP")
            noops.append((time.monotonic() - t0) * 1000)
            done.wait(interval)
        thread.join(timeout)
        if "error" in outcome:
            raise RuntimeError(outcome["error"])
        return {
            "select_cold_s": round(outcome["select_s"], 3),
            "exists": outcome["exists"],
            "noop_count": len(noops),
            "noop_p50_ms": round(statistics.median(noops), 2) if noops else None,
            "noop_max_ms": round(max(noops), 2) if noops else None,
        }
    finally:
        busy.close()
        other.close()
