"""The IMAP workloads of issue 15 at the big INBOX (``--big-k``), beside Dovecot: ``imap-ext``.

mailbench has no such workload; this one is ours, in the standard library only (``imaplib``, every
wait bounded by ``timeout``). One run on bench1's INBOX of K messages (``run.py`` installs the big
mailbox, index removed, before it), in this order:

- a first SELECT (the parse of a cold index, not reported: ``imap-big`` has it) and a header FETCH
  of 1:* (FROM TO SUBJECT DATE), then the same FETCH again: ``hdr_refetch_s``;
- ``UID SORT (DATE) UTF-8 ALL``, ``SORT (SUBJECT) UTF-8 ALL``, ``THREAD REFERENCES UTF-8 ALL``
  (each "unsupported" when the server does not advertise SORT / THREAD=REFERENCES);
- 100 random ``UID FETCH n (BODY.PEEK[])``: ``body_p50_ms``;
- the server's memory with that session open (``--server-pid``; run.py gives the roots, the
  twistd process or Dovecot's master): RSS (``rss_open_mb``, what mailbench's peak sums, a page
  shared by forked processes counted in each) and PSS (``pss_open_mb``, each shared page split
  between the processes that map it) summed over every process of the tree;
- QRESYNC resync: session A, QRESYNC enabled, SELECTs and notes UIDVALIDITY and HIGHESTMODSEQ,
  logs out; session B sets \\Flagged on 10 random messages and expunges 10 others; A comes back:
  ``SELECT INBOX (QRESYNC (uidvalidity modseq))`` timed (``qresync_select_s``), checked to report
  the 10 in ``VANISHED (EARLIER)`` and the 10 flag changes (skipped without QRESYNC);
- EXPUNGE of 10 random messages: ``expunge_s`` (the answer) and ``expunge_done_s`` (the answer
  and a following ``UID STORE`` of one message: mailsuite answers EXPUNGE before it compacts the
  file, and a flag change waits for the compaction, so this one is the whole cost).

Each step is timed on its own; the JSON line has ``results`` (seconds or ms) and ``unsupported``
(the steps skipped). ``python3 bench/imap_ext.py --port 2143 --user bench1 --password benchpass``
runs it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import os
import random
import re
import statistics
import sys
import time
from typing import Any

if __package__:
    from bench.report import Metric, path
else:  # run as a script (bench/ on sys.path)
    from report import Metric, path  # type: ignore[no-redef]

imaplib._MAXLINE = 200_000_000  # SORT/THREAD of 100,000 messages is one long line

STEPS = [  # (result key, label, format)
    ("sort_date_s", "UID SORT (DATE) s", "{:,.3f}"),
    ("sort_subject_s", "SORT (SUBJECT) s", "{:,.3f}"),
    ("thread_references_s", "THREAD REFERENCES s", "{:,.3f}"),
    ("qresync_select_s", "QRESYNC SELECT s", "{:,.3f}"),
    ("hdr_refetch_s", "hdr FETCH again s", "{:,.3f}"),
    ("body_p50_ms", "BODY.PEEK[] p50 ms", "{:,.2f}"),
    ("expunge_s", "EXPUNGE 10 s (answer)", "{:,.3f}"),
    ("expunge_done_s", "EXPUNGE 10 s (+ compaction)", "{:,.3f}"),
    ("rss_open_mb", "server RSS, INBOX open MB", "{:,.0f}"),
    ("pss_open_mb", "server PSS, INBOX open MB", "{:,.0f}"),
]
METRICS = [Metric(label, path("results", key), fmt, False) for key, label, fmt in STEPS]


class Session:
    def __init__(self, port: int, user: str, password: str, timeout: float) -> None:
        self.c = imaplib.IMAP4("127.0.0.1", port, timeout=timeout)
        self.c.login(user, password)
        _, data = self.c.capability()  # after LOGIN: Dovecot's greeting lists fewer
        self.caps = {c.upper() for c in data[-1].decode().split()}

    def ok(self, typ: str, data: Any, what: str) -> Any:
        if typ != "OK":
            raise RuntimeError(f"{what}: {typ} {data!r}")
        return data

    def timed(self, what: str, *command: str) -> tuple[float, Any]:
        t = time.perf_counter()
        typ, data = self.c._simple_command(*command)
        took = time.perf_counter() - t
        name = command[0].split()[0] if command[0] != "UID" else command[1]
        self.ok(typ, data, what)
        return took, self.c._untagged_response(typ, data, name)[1]

    def untagged(self, name: str) -> list[Any]:
        return self.c.untagged_responses.pop(name, [])

    def close(self) -> None:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            self.c.logout()


def _uids(s: Session) -> list[int]:
    _, data = s.timed("UID SEARCH", "UID", "SEARCH", "ALL")
    return [int(x) for x in b" ".join(d for d in data if d).split()]


def _sorts(s: Session, r: dict, unsupported: list[str], k: int) -> None:
    for key, cap, command in (
        ("sort_date_s", "SORT", ("UID", "SORT", "(DATE)", "UTF-8", "ALL")),
        ("sort_subject_s", "SORT", ("SORT", "(SUBJECT)", "UTF-8", "ALL")),
        ("thread_references_s", "THREAD=REFERENCES", ("THREAD", "REFERENCES", "UTF-8", "ALL")),
    ):
        if cap not in s.caps:
            unsupported.append(key)
            continue
        took, data = s.timed(" ".join(command), *command)
        r[key] = round(took, 4)
        text = b" ".join(d for d in data if d)
        found = len(re.findall(rb"\d+", text))
        if found != k:
            raise RuntimeError(f"{' '.join(command)}: {found} numbers in the answer, expected {k}")


def _bodies(s: Session, r: dict, uids: list[int], rng: random.Random) -> None:
    lat = []
    for uid in rng.sample(uids, min(100, len(uids))):
        took, data = s.timed("BODY.PEEK[]", "UID", "FETCH", str(uid), "(BODY.PEEK[])")
        if not any(isinstance(d, tuple) and d[1] for d in data):
            raise RuntimeError(f"UID {uid}: no body")
        lat.append(took * 1000)
    r["body_p50_ms"] = round(statistics.median(lat), 3)


def _qresync(args: argparse.Namespace, r: dict, unsupported: list[str], uids: list[int],
             rng: random.Random) -> list[int]:
    """The resync of a client that was away while another session changed 10 flags and
    expunged 10 messages; the UIDs left."""
    a = Session(args.port, args.user, args.password, args.timeout)
    if "QRESYNC" not in a.caps:
        a.close()
        unsupported.append("qresync_select_s")
        return uids
    a.ok(*a.c._simple_command("ENABLE", "QRESYNC"), "ENABLE QRESYNC")
    a.ok(*a.c.select("INBOX"), "SELECT")
    validity = int(a.untagged("UIDVALIDITY")[-1])
    modseq = int(a.untagged("HIGHESTMODSEQ")[-1])
    a.close()
    b = Session(args.port, args.user, args.password, args.timeout)
    b.ok(*b.c.select("INBOX"), "SELECT")
    picked = rng.sample(uids, 20)
    flagged, gone = picked[:10], picked[10:]
    b.timed("STORE", "UID", "STORE", ",".join(map(str, flagged)), "+FLAGS.SILENT", "(\\Flagged)")
    b.timed("STORE", "UID", "STORE", ",".join(map(str, gone)), "+FLAGS.SILENT", "(\\Deleted)")
    b.timed("EXPUNGE", "EXPUNGE")
    b.close()
    a = Session(args.port, args.user, args.password, args.timeout)
    a.ok(*a.c._simple_command("ENABLE", "QRESYNC"), "ENABLE QRESYNC")
    t = time.perf_counter()
    a.ok(*a.c._simple_command("SELECT", f"INBOX (QRESYNC ({validity} {modseq}))"), "SELECT")
    r["qresync_select_s"] = round(time.perf_counter() - t, 4)
    vanished = b" ".join(x for x in a.untagged("VANISHED") if isinstance(x, bytes))
    fetched = a.untagged("FETCH")
    a.close()
    if not vanished.startswith(b"(EARLIER)"):
        raise RuntimeError(f"QRESYNC SELECT: no VANISHED (EARLIER), got {vanished[:80]!r}")
    if len(fetched) < 10:
        raise RuntimeError(f"QRESYNC SELECT: {len(fetched)} FETCH responses, expected 10")
    left = set(gone)
    return [u for u in uids if u not in left]


def _expunge(s: Session, r: dict, uids: list[int], rng: random.Random) -> int:
    victims = rng.sample(uids, 10)
    s.timed("STORE", "UID", "STORE", ",".join(map(str, victims)), "+FLAGS.SILENT", "(\\Deleted)")
    took, data = s.timed("EXPUNGE", "EXPUNGE")
    if len(data) != 10:
        raise RuntimeError(f"EXPUNGE: {len(data)} EXPUNGE responses, expected 10")
    left = [u for u in uids if u not in set(victims)]
    more, _ = s.timed("STORE", "UID", "STORE", str(left[0]), "+FLAGS.SILENT", "(\\Seen)")
    r["expunge_s"], r["expunge_done_s"] = round(took, 4), round(took + more, 4)
    return len(left)


def _tree(roots: list[int]) -> set[int]:
    """``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
                children.setdefault(int(data[data.rfind(b")") + 2:].split()[1]), []).append(
                    int(name))
    found, stack = set(), list(roots)
    while stack and len(found) < 100_000:
        p = stack.pop()
        if p not in found:
            found.add(p)
            stack.extend(children.get(p, ()))
    return found


def _memory(r: dict, unsupported: list[str], roots: list[int]) -> None:
    """RSS and PSS (MB) summed over the server's processes (smaps_rollup)."""
    if not roots:
        unsupported.extend(["rss_open_mb", "pss_open_mb"])
        return
    kb = {"Rss:": 0, "Pss:": 0}
    for p in _tree(roots):
        with contextlib.suppress(OSError), open(f"/proc/{p}/smaps_rollup") as f:
            for line in f:
                key = line.split(None, 1)[0]
                if key in kb:
                    kb[key] += int(line.split()[1])
    r["rss_open_mb"] = round(kb["Rss:"] / 1024, 1)
    r["pss_open_mb"] = round(kb["Pss:"] / 1024, 1)


def run(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    r: dict[str, float] = {}
    unsupported: list[str] = []
    s = Session(args.port, args.user, args.password, args.timeout)
    s.ok(*s.c.select("INBOX"), "SELECT")  # cold: the index is made here
    uids = _uids(s)
    fields = "(BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])"
    s.timed("FETCH headers", "UID", "FETCH", "1:*", fields)
    took, data = s.timed("FETCH headers again", "UID", "FETCH", "1:*", fields)
    r["hdr_refetch_s"] = round(took, 4)
    if sum(1 for d in data if isinstance(d, tuple)) != len(uids):
        raise RuntimeError("header FETCH again: not one record per message")
    _sorts(s, r, unsupported, len(uids))
    _bodies(s, r, uids, rng)
    _memory(r, unsupported, getattr(args, "server_pid", None) or [])
    s.close()
    uids = _qresync(args, r, unsupported, uids, rng)
    s = Session(args.port, args.user, args.password, args.timeout)
    s.ok(*s.c.select("INBOX"), "SELECT")
    left = _expunge(s, r, uids, rng)
    s.close()
    s = Session(args.port, args.user, args.password, args.timeout)
    _, data = s.c.select("INBOX")
    s.close()
    if int(data[0]) != left:
        raise RuntimeError(f"after the expunges SELECT says {data[0]!r}, expected {left}")
    return {"workload": "imap-ext", "label": args.label, "ok": True,
            "variant": f"K={args.expect or len(uids)}", "results": r,
            "unsupported": unsupported}


def ratio_lines(groups: list[Any], ours: str, peer: str) -> list[str]:
    """mailsuite / Dovecot per step of the imap-ext groups (below 1: mailsuite is faster)."""
    out = []
    for g in groups:
        if g.workload != "imap-ext":
            continue
        mine_runs, theirs_runs = g.runs.get(ours, []), g.runs.get(peer, [])
        for (key, label, _), m in zip(STEPS, METRICS, strict=True):
            a = [v for v in map(m.get, mine_runs) if v is not None]
            b = [v for v in map(m.get, theirs_runs) if v is not None]
            if a and b and statistics.median(b):
                text = f"{statistics.median(a) / statistics.median(b):.2f}"
            elif any(key in r.get("unsupported", []) for r in mine_runs):
                text = f"unsupported by {ours}"
            else:
                text = "-"
            out.append(f"imap-ext {g.variant} {label}: {ours}/{peer} = {text}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=2143)
    p.add_argument("--user", default="bench1")
    p.add_argument("--password", default="benchpass")
    p.add_argument("--label", default="server")
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--server-pid", type=int, action="append",
                   help="a root process of the server, for its memory (repeatable)")
    args = p.parse_args(argv)
    try:
        line = run(args)
    except (OSError, RuntimeError, imaplib.IMAP4.error) as e:
        line = {"workload": "imap-ext", "label": args.label, "ok": False,
                "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(line), flush=True)
    return 0 if line["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
