"""Probes mailbench has no workload for. Plain blocking sockets, standard library only; every
wait is bounded by ``timeout``.

- ``noop_during_select``: NOOP latency on one IMAP connection while another SELECTs a big
  mailbox with no index (issue 3: "while one session parses a huge mailbox, other sessions keep
  answering (a NOOP on another connection within 100 ms)");
- ``logins_under_crowd``: IMAP login latency while 1,000 slow clients hold connections, and
  whether each of them was closed by its deadline (issue 11 item 3).
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
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


def _login_ms(port: int, user: str, password: str, timeout: float) -> float:
    """One normal IMAP login on a new connection: connect, greeting, LOGIN answered (ms)."""
    t0 = time.monotonic()
    conn = ImapLine(port, timeout)
    try:
        conn.command(f"LOGIN {user} {password}")
        return (time.monotonic() - t0) * 1000
    finally:
        conn.close()


def _ms_stats(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
            "max_ms": round(ordered[-1], 2)}


def logins_under_crowd(
    ports: dict[str, int], user: str, password: str, crowd: list[str],
    deadlines: dict[str, float], logins: int = 100, interval: float = 0.2, timeout: float = 30.0,
) -> dict:
    """Issue 11 item 3: IMAP login latency before and while a crowd of slow clients
    (tests/integration/slow_client.py, started by the command ``crowd``) holds its connections,
    and when each crowd connection was closed against its deadline (``deadlines``: kind ->
    seconds from its starting point).

    ``logins`` logins one after another before the crowd, and ``logins`` more while it is in
    place (from its ``ready`` line on), ``interval`` apart."""
    before = [_login_ms(ports["imap"], user, password, timeout) for _ in range(logins)]
    proc = subprocess.Popen(crowd, stdout=subprocess.PIPE, text=True)
    held: list[int] = []
    during: list[float] = []
    held_during: list[int] = []
    results: list[dict] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = json.loads(raw)
            if line["event"] == "held":
                held.append(line["open"])
            elif line["event"] == "ready":
                held_during.append(line["open"])
                for _ in range(logins):
                    during.append(_login_ms(ports["imap"], user, password, timeout))
                    time.sleep(interval)
                held_during.append(held[-1] if held else line["open"])
            elif line["event"] == "done":
                results = line["results"]
    finally:
        proc.wait(60)
    by_kind: dict[str, list[float]] = {}
    late = never = 0
    for r in results:
        if r["ready"] is None or r["closed"] is None or r["error"]:
            never += 1
            continue
        seconds = r["closed"] - r["ready"]
        by_kind.setdefault(r["kind"], []).append(seconds)
        late += seconds > deadlines[r["kind"]] + 2
    return {
        "crowd": len(results), "held_max": max(held, default=0),
        "held_while_logging_in_min": min(held_during, default=0),
        "login_before": _ms_stats(before), "login_during": _ms_stats(during),
        "closed_late": late, "not_closed_or_failed": never, "late_or_never": late + never,
        "held_s": {k: {"min": round(min(v), 1), "max": round(max(v), 1)}
                   for k, v in sorted(by_kind.items())},
        "deadlines_s": deadlines,
    }
