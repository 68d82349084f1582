"""Store benchmark: the mbox store on a big INBOX, without the network.

    PYTHONPATH=. python bench/store_bench.py [--count 100000] [--dir /tmp/storebench]
                                             [--mailbox FILE]

Makes (or copies) a mailbox with ``../shared/bench/mailbench.py gen-mailbox`` and prints, as
JSON lines: first open (full parse + index write), a later open in the same process, an open
after a restart (index read), a flag change on one and on 1,000 messages, an expunge of 10
random messages (its answer, then the compaction of the file), and the longest the reactor went without running while the first parse ran
(what another session's NOOP would wait).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

from twisted.internet import defer, task

from mailsuite.accounts import Account
from mailsuite.store.mbox import MboxStore
from mailsuite.threads import InPool

GEN = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "bench", "mailbench.py")


class Config:
    def __init__(self, spool: str) -> None:
        self.spool = spool

    def inbox_path(self, account: Account) -> str:
        return os.path.join(self.spool, account.name)

    def folder_root(self, account: Account) -> str:
        return os.path.join(account.home, "mail")


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


@defer.inlineCallbacks
def timed(name: str, d_factory, **extra):
    start = time.perf_counter()
    result = yield d_factory()
    report(step=name, seconds=round(time.perf_counter() - start, 4), **extra)
    return result


@defer.inlineCallbacks
def run(reactor, args):
    root = os.path.abspath(args.dir)
    spool, home = os.path.join(root, "spool"), os.path.join(root, "home", "bench1")
    shutil.rmtree(os.path.join(home, "mail"), ignore_errors=True)
    os.makedirs(spool, exist_ok=True)
    os.makedirs(home, exist_ok=True)
    account = Account("bench1", os.getuid(), os.getgid(), home)
    inbox = os.path.join(spool, "bench1")
    if args.mailbox:
        shutil.copyfile(args.mailbox, inbox)
    elif not os.path.exists(inbox) or args.regenerate:
        gen = os.environ.get("MAILBENCH", os.path.abspath(GEN))
        subprocess.run(
            [sys.executable, gen, "gen-mailbox", "--user", "bench1", "-k", str(args.count),
             "--path-template", os.path.join(spool, "{user}"), "--no-chown", "--seed", "1"],
            check=True, stdout=subprocess.DEVNULL,
        )
    os.sync()  # let the copy reach the disk first: a real mailbox was not written just now
    report(mailbox=inbox, bytes=os.path.getsize(inbox))
    config = Config(spool)

    # the reactor's longest stall while the first parse runs in a thread
    ticks, worst = [time.perf_counter()], [0.0]

    def tick():
        now = time.perf_counter()
        worst[0] = max(worst[0], now - ticks[0])
        ticks[0] = now

    loop = task.LoopingCall(tick)
    loop.start(0.01)
    store = MboxStore(config, InPool(reactor))
    box = yield timed("first open (parse + index)", lambda: store.open(account))
    loop.stop()
    report(step="reactor stall during first open", seconds=round(worst[0] - 0.01, 4),
           messages=len(box.messages))
    box2 = yield timed("later open, same process", lambda: store.open(account))
    box2.close()
    box.close()
    box = yield timed("open after every close, same process", lambda: store.open(account))
    box.close()
    box = yield timed("open after restart (index read)",
                      lambda: MboxStore(config, InPool(reactor)).open(account))
    uids = [m.uid for m in box.messages]
    yield timed("set_flags 1 message", lambda: box.set_flags({uids[5]: frozenset({"\\Seen"})}))
    sample = random.Random(2).sample(uids, 1000)
    yield timed("set_flags 1000 messages",
                lambda: box.set_flags({u: frozenset({"\\Flagged"}) for u in sample}))
    gone = random.Random(3).sample(uids, 10)
    yield timed("expunge 10 random messages (answer)", lambda: box.expunge(gone),
                messages=len(uids))
    yield timed("expunge 10: compaction of the file", box.settled, messages=len(uids))
    box.close()
    box = yield timed("open after restart (index read)",
                      lambda: MboxStore(config, InPool(reactor)).open(account))
    report(step="check", messages=len(box.messages),
           flagged=sum("\\Flagged" in m.flags for m in box.messages))
    box.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100000)
    parser.add_argument("--dir", default="/tmp/storebench")
    parser.add_argument("--mailbox", help="copy this mbox file instead of generating one")
    parser.add_argument("--regenerate", action="store_true")
    args = parser.parse_args()
    task.react(run, [args])


if __name__ == "__main__":
    main()
