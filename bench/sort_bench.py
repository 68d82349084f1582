"""SORT and THREAD benchmark: the IMAP server on loopback over an mbox INBOX with threads in it.

    PYTHONPATH=. python bench/sort_bench.py [--count 100000] [--dir /tmp/sortbench]
                                            [--imap HOST:PORT --user U --password P]

Writes an mbox of ``--count`` messages (about one in three a reply with References and a
``Re:`` subject, some with tags and ``Fwd:``, dates out of arrival order), serves it with
mailsuite's IMAP server on 127.0.0.1 (or, with ``--imap``, talks to another server, which must
already hold the same mailbox: ``--dir``'s ``spool/bench1`` file, for Dovecot), and prints as
JSON lines how long each command takes the first time (the header fields read) and the second
(the view's cached answer), then once in a new session (the keys kept for the mailbox):
``UID SORT (DATE) UTF-8 ALL``, ``SORT (SUBJECT) UTF-8 ALL``,
``THREAD REFERENCES UTF-8 ALL``, and the longest the reactor went without running meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import time
from dataclasses import replace
from email.utils import formatdate
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, task, threads
from zope.interface import implementer

from mailsuite.accounts import Account
from mailsuite.config import parse_config
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.imap.mailbox import ImapAccount
from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.store.mbox import MboxStore
from mailsuite.threads import InPool

COMMANDS = (b"UID SORT (DATE) UTF-8 ALL", b"SORT (SUBJECT) UTF-8 ALL",
            b"THREAD REFERENCES UTF-8 ALL")
WORDS = ["alpha", "beta", "gamma", "delta", "budget", "meeting", "report", "lunch", "plan",
         "review", "release", "notes"]


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def write_mbox(path: str, count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    base = 1_700_000_000
    with open(path, "wb") as out:
        for n in range(1, count + 1):
            when = base + n * 60 + rng.randint(-7200, 7200)
            subject = " ".join(rng.sample(WORDS, 3)) + f" {n // 3}"
            refs = ""
            if n > 3 and rng.random() < 0.35:
                parent = rng.randint(max(1, n - 200), n - 1)
                refs = f"References: <p{parent - 1}@bench> <p{parent}@bench>\n"
                subject = rng.choice(["Re: ", "RE: ", "Re: [list] ", "Fwd: "]) + subject
            out.write((
                f"From bench@example.org {time.asctime(time.gmtime(when))}\n"
                f"From: User {n % 97} <u{n % 97}@example.org>\nTo: bench1@example.com\n"
                f"Subject: {subject}\nDate: {formatdate(when)}\n"
                f"Message-ID: <p{n}@bench>\n{refs}\n"
                f"Body of message {n}.\n\n").encode())


@implementer(IRealm)
class _Realm:
    def __init__(self, store: Any) -> None:
        self.store = store

    def requestAvatar(self, avatar_id: bytes, mind: object, *interfaces: object) -> Any:
        avatar = ImapAccount(self.store, Account(avatar_id.decode(), os.getuid(), os.getgid(),
                                                 self.home))
        return IImapAccount, avatar, avatar.logout


class _Config:
    def __init__(self, spool: str, home: str) -> None:
        self.spool, self.home = spool, home

    def inbox_path(self, account: Account) -> str:
        return os.path.join(self.spool, account.name)

    def folder_root(self, account: Account) -> str:
        return os.path.join(self.home, "mail")


def _until(sock: socket.socket, tag: bytes) -> bytes:
    """Everything up to the tagged reply (only the last line is looked at: a 600 KB answer
    scanned whole at every read would cost the client more than the server)."""
    chunks: list[bytes] = []
    tail = b"\r\n"
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed")
        chunks.append(chunk)
        tail = (tail + chunk)[-4096:]
        if tail.endswith(b"\r\n"):
            last = tail[:-2].rsplit(b"\r\n", 1)[-1]
            if last.startswith(tag + b" "):
                return b"".join(chunks)


def client(host: str, port: int, user: str, password: str) -> list[dict[str, Any]]:
    """Each command twice in one session, then once more in a new session."""
    return (_session(host, port, user, password, ("first", "second"))
            + _session(host, port, user, password, ("new session",)))


def _session(host: str, port: int, user: str, password: str,
             runs: tuple[str, ...]) -> list[dict[str, Any]]:
    results = []
    with socket.create_connection((host, port), timeout=600) as sock:
        sock.recv(4096)
        sock.sendall(b"l LOGIN %s %s\r\n" % (user.encode(), password.encode()))
        _until(sock, b"l")
        start = time.perf_counter()
        sock.sendall(b"s SELECT INBOX\r\n")
        _until(sock, b"s")
        results.append({"step": "SELECT INBOX", "seconds": round(time.perf_counter() - start, 3)})
        for i, command in enumerate(COMMANDS):
            for run in runs:
                tag = b"c%d%s" % (i, run[0].encode())
                start = time.perf_counter()
                sock.sendall(tag + b" " + command + b"\r\n")
                answer = _until(sock, tag)
                results.append({"step": command.decode(), "run": run,
                                "seconds": round(time.perf_counter() - start, 3),
                                "bytes": len(answer),
                                "ok": (b"\r\n" + tag + b" OK") in answer})
        sock.sendall(b"z LOGOUT\r\n")
    return results


@defer.inlineCallbacks
def run(reactor: Any, args: Any) -> Any:
    root = os.path.abspath(args.dir)
    spool, home = os.path.join(root, "spool"), os.path.join(root, "home", "bench1")
    os.makedirs(spool, exist_ok=True)
    os.makedirs(home, exist_ok=True)
    inbox = os.path.join(spool, "bench1")
    if not os.path.exists(inbox) or args.regenerate:
        write_mbox(inbox, args.count)
    report(mailbox=inbox, bytes=os.path.getsize(inbox), messages=args.count)
    if args.imap:
        host, _, port = args.imap.rpartition(":")
        out = yield threads.deferToThread(client, host, int(port), args.user, args.password)
        for line in out:
            report(server=args.imap, **line)
        return
    store = MboxStore(_Config(spool, home), InPool(reactor))
    realm = _Realm(store)
    realm.home = home  # type: ignore[attr-defined]
    portal = Portal(realm, [InMemoryUsernamePasswordDatabaseDontUse(bench1=b"bench")])
    config = _server_config()
    factory = IMAPFactory(config, portal, MailLog(None, "bench"), reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    ticks, worst = [time.perf_counter()], [0.0]

    def tick() -> None:
        now = time.perf_counter()
        worst[0] = max(worst[0], now - ticks[0])
        ticks[0] = now

    loop = task.LoopingCall(tick)
    loop.start(0.01)
    try:
        out = yield threads.deferToThread(client, "127.0.0.1", port.getHost().port,
                                          "bench1", "bench")
    finally:
        loop.stop()
        yield port.stopListening()
    for line in out:
        report(server="mailsuite", **line)
    report(step="longest reactor stall", seconds=round(worst[0] - 0.01, 3))


def _server_config() -> Any:
    """The default configuration (an empty mail.ini), plaintext login allowed."""
    base = parse_config("", "mail.ini", hostname=lambda: "bench.example.com")
    return replace(base, auth=replace(base.auth, disable_plaintext_auth=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--count", type=int, default=100000)
    parser.add_argument("--dir", default="/tmp/sortbench")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--imap", help="HOST:PORT of another server holding the mailbox")
    parser.add_argument("--user", default="bench1")
    parser.add_argument("--password", default="bench")
    args = parser.parse_args()
    task.react(run, [args])


if __name__ == "__main__":
    main()
