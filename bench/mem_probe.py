"""Memory probe: what the per-user agent holds for a big INBOX, step by step, without the network.

    PYTHONPATH=. python bench/mem_probe.py --mailbox /tmp/bw/cache/big-100000.mbox \\
                                           [--dir /tmp/memprobe] [--trace]

Copies the mailbox, opens it through ``MboxStore`` from scratch (full parse, index written), as
the agent does at the first SELECT, then does what ``imap-big`` does to it: the header listing
(``header_fields`` of FROM TO SUBJECT DATE, 256 messages a call, twice), a STORE of ``\\Seen``
on 1,000 random messages, an EXPUNGE of 10 random ones and the compaction after it; then the
file is replaced by a copy of itself and parsed again against the index. After each step it
prints a JSON line: the process's VmRSS / VmHWM (peak) in MB and, with ``--trace``,
tracemalloc's current / peak traced MB (tracemalloc slows the run several-fold and adds its own
memory to the RSS: compare RSS figures from runs without it). ``PROBE_TRIM=1``: glibc's
malloc_trim before each figure. glibc's mmap threshold is fixed first, as in the server's
processes (``heap.fixed_mmap_threshold``); ``PROBE_DYNAMIC_MMAP=1`` leaves glibc's default.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
import tracemalloc

from twisted.internet import defer, task

from mailsuite import heap
from mailsuite.accounts import Account
from mailsuite.imap import sortkeys, thread
from mailsuite.imap.mailbox import ImapMailboxView
from mailsuite.store.mbox import MboxStore
from mailsuite.threads import InPool
from store_bench import Config  # bench/ is the script's directory

TRIM = os.environ.get("PROBE_TRIM") == "1"  # (glibc only)
FIELDS = [b"FROM", b"TO", b"SUBJECT", b"DATE"]


def status() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def report(step: str, started: float, **extra: object) -> None:
    if TRIM:  # what the figures would be with the free heap given back at each step
        heap.release()
    fields: dict[str, object] = {"step": step, "s": round(time.perf_counter() - started, 2)}
    fields.update(status())
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        fields.update(traced_MB=round(current / 2**20, 1), traced_peak_MB=round(peak / 2**20, 1))
    fields.update(extra)
    print(json.dumps(fields), flush=True)


@defer.inlineCallbacks
def sort_steps(box):
    """The keys ``UID SORT (DATE)``, ``SORT (SUBJECT)`` and ``THREAD REFERENCES`` read and keep
    for the view, and the thread list, as the bench's imap-ext makes them; the view is given
    back, to be held as a selected session holds its own (what is kept for it goes with it)."""
    view = ImapMailboxView(box, readonly=True)  # (no account: no \\Recent tracker)
    for label, groups in (("sort keys DATE", sortkeys.DATE),
                          ("sort keys SUBJECT", sortkeys.SUBJECT),
                          ("thread keys", sortkeys.THREAD_KEYS)):
        t = time.perf_counter()
        found = yield defer.ensureDeferred(sortkeys.records(view, groups))
        report(label, t, records=len(found))
    t = time.perf_counter()
    yield defer.ensureDeferred(sortkeys.off_reactor(
        len(found), thread.ALGORITHMS[b"REFERENCES"], found, lambda seq, rec: seq))
    report("THREAD REFERENCES", t)
    return view


@defer.inlineCallbacks
def run(reactor, args):
    root = os.path.abspath(args.dir)
    spool, home = os.path.join(root, "spool"), os.path.join(root, "home", "bench1")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(spool)
    os.makedirs(home)
    account = Account("bench1", os.getuid(), os.getgid(), home)
    shutil.copyfile(args.mailbox, os.path.join(spool, "bench1"))
    if os.environ.get("PROBE_DYNAMIC_MMAP") != "1":
        heap.fixed_mmap_threshold()
    report("start", time.perf_counter())
    if args.trace:
        tracemalloc.start()
    store = MboxStore(Config(spool), InPool(reactor))
    t = time.perf_counter()
    box = yield store.open(account)
    report("first open (parse + index)", t, messages=len(box.messages))
    uids = [m.uid for m in box.messages]
    for label in ("header_fields 1:*", "header_fields 1:* again"):
        t = time.perf_counter()
        n = 0
        for i in range(0, len(uids), 256):
            found = yield box.header_fields(uids[i : i + 256], FIELDS)
            n += len(found)
        report(label, t, records=n)
    view = (yield sort_steps(box)) if args.sort else None
    rng = random.Random(15)
    t = time.perf_counter()
    yield box.change_flags(rng.sample(uids, 1000), add=frozenset({"\\Seen"}))
    report("STORE +FLAGS \\Seen 1000", t)
    victims = rng.sample(uids, 10)
    t = time.perf_counter()
    yield box.change_flags(victims, add=frozenset({"\\Deleted"}))
    gone = yield box.expunge(victims)
    report("EXPUNGE 10 (answer)", t, expunged=len(gone))
    yield box.settled()
    report("EXPUNGE 10 (compaction done)", t, messages=len(box.messages))
    # another program puts a copy in its place (a new inode): parsed whole again, matched
    # against the index by fingerprint
    inbox = os.path.join(spool, "bench1")
    shutil.copyfile(inbox, inbox + ".new")
    os.rename(inbox + ".new", inbox)
    t = time.perf_counter()
    yield box.refresh()
    report("file replaced by a copy: refresh (reparse + reconcile)", t,
           messages=len(box.messages))
    if args.trace:
        snap = tracemalloc.take_snapshot()
        for stat in snap.statistics("lineno")[: args.top]:
            print(f"  {stat.size / 2**20:7.1f} MB {stat.count:8d}  {stat.traceback}", flush=True)
    del view
    box.close()
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mailbox", required=True, help="the mbox to copy (never changed)")
    parser.add_argument("--dir", default="/tmp/memprobe")
    parser.add_argument("--trace", action="store_true", help="tracemalloc figures too (slow)")
    parser.add_argument("--sort", action="store_true",
                        help="after the listing: the SORT and THREAD keys and a THREAD")
    parser.add_argument("--top", type=int, default=12, help="with --trace: lines listed at the end")
    parser.add_argument("--keep", action="store_true", help="leave the copy and its index")
    task.react(run, [parser.parse_args()])


if __name__ == "__main__":
    main()
