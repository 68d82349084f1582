"""The queue commands: ``mailq`` (``postqueue -p``) and ``mailsuite-queue`` (``postqueue -f``,
``postsuper -d``).

They read the queue files themselves (``mailq`` needs root, or mail_owner), and change the queue
through the running daemon's control socket (mailsuite.mta.control) when it runs, so that its
queue manager knows at once; without a daemon they change the files.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from mailsuite.cmdbase import (
    CONFIG_HELP,
    EX_NOPERM,
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
    Fatal,
    Help,
    config_only,
    load,
    run,
)
from mailsuite.config import Config
from mailsuite.mta import control, maildrop

USAGE = {
    "mailq": "usage: mailq [-C|--config mail.ini]\nList the mail queue and maildrop/.\n"
             + CONFIG_HELP.rstrip("\n"),
    "mailsuite-queue": (
        "usage: mailsuite-queue [-C mail.ini] -p | -f | -d ID|ALL\n"
        "  -p          list the queue (mailq; the default)\n"
        "  -f          deliver the queue now (postqueue -f)\n"
        "  -d ID|ALL   delete one message, or all (postsuper -d)\n" + CONFIG_HELP.rstrip("\n")),
}


def queue_entries(queue_directory: str) -> list[tuple[str, str, int, float, str, list[str]]]:
    """(queue id, flag, size, arrival, sender, pending recipients): the queue, then maildrop/."""
    out = []
    try:
        from mailsuite.mta.queuefile import QueueDirectory
    except ImportError:  # pragma: no cover - the queue module is part of the package
        QueueDirectory = None  # type: ignore[assignment,misc]
    if QueueDirectory is not None and os.path.isdir(os.path.join(queue_directory, "active")):
        queue = QueueDirectory(queue_directory)
        for queue_id in queue.ids():
            try:
                env, _ = queue.load(queue_id)
            except (OSError, ValueError):
                continue
            flag = "" if env.attempts else "*"
            out.append((queue_id, flag, env.size, env.arrival, env.sender,
                        [r.address for _, r in env.pending()]))
    for queue_id in maildrop.ids(queue_directory):
        try:
            d = maildrop.read(queue_directory, queue_id)
        except (OSError, ValueError, KeyError):
            continue
        out.append((queue_id, "", len(d.data), d.arrival, d.sender, d.recipients))
    return out


def mailq_report(cfg: Config, out: TextIO) -> int:
    """Postfix's mailq listing."""
    try:
        entries = queue_entries(cfg.mail.queue_directory)
    except PermissionError as e:
        raise Fatal(EX_NOPERM, f"{e.filename}: permission denied (mailq needs root)") from e
    if not entries:
        print("Mail queue is empty", file=out)
        return EX_OK
    print("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------", file=out)
    total = 0
    for queue_id, flag, size, arrival, sender, recipients in entries:
        when = time.strftime("%a %b %d %H:%M:%S", time.localtime(arrival))
        print(f"{queue_id + flag:<11} {size:>8} {when}  {sender or 'MAILER-DAEMON'}", file=out)
        for r in recipients:
            print(f"{'':41}{r}", file=out)
        print(file=out)
        total += size
    n = len(entries)
    print(f"-- {(total + 1023) // 1024} Kbytes in {n} Request{'s' if n != 1 else ''}.", file=out)
    return EX_OK


def flush(cfg: Config) -> int:
    try:
        answer = control.ask(cfg.mail.queue_directory, "flush")
    except control.MailSystemDown as e:
        raise Fatal(EX_TEMPFAIL, f"Cannot flush mail queue - mail system is down ({e})") from e
    if not answer.startswith("ok"):
        raise Fatal(EX_SOFTWARE, f"flush refused: {answer}")
    return EX_OK


def delete(cfg: Config, which: str, err: TextIO) -> int:
    """``postsuper -d ID|ALL``: through the daemon when it runs (it forgets the message too),
    else on the files."""
    queue_directory = cfg.mail.queue_directory
    ids = [e[0] for e in queue_entries(queue_directory)] if which == "ALL" else [which]
    removed = 0
    for queue_id in ids:
        if not queue_id.isalnum():
            raise Fatal(EX_USAGE, f"bad queue id {queue_id!r}")
        try:
            answer = control.ask(queue_directory, f"delete {queue_id}", timeout=10)
            if answer == "ok removed":
                removed += 1
                continue
        except (control.MailSystemDown, OSError):
            pass
        if maildrop.remove(queue_directory, queue_id):
            removed += 1
            continue
        path = os.path.join(queue_directory, "active", queue_id)
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
    print(f"postsuper: Deleted: {removed} message{'s' if removed != 1 else ''}", file=err)
    return EX_OK


def queue_main(argv: list[str] | None = None) -> int:
    """``mailsuite-queue -p`` (mailq), ``-f`` (postqueue -f), ``-d ID|ALL`` (postsuper -d)."""
    argv = sys.argv[1:] if argv is None else argv

    def main() -> int:
        config, action, target = None, None, None
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg in ("-C", "--config") and i + 1 < len(argv):
                config, i = argv[i + 1], i + 2
                continue
            if arg in ("-h", "--help"):
                raise Help()
            if arg in ("-p", "-f"):
                action = arg
            elif arg == "-d" and i + 1 < len(argv):
                action, target = "-d", argv[i + 1]
                i += 1
            else:
                raise Fatal(EX_USAGE, "usage: mailsuite-queue [-C mail.ini] -p | -f | -d ID|ALL")
            i += 1
        cfg = load(config)
        if action == "-p" or action is None:
            return mailq_report(cfg, sys.stdout)
        if action == "-f":
            return flush(cfg)
        assert target is not None
        return delete(cfg, target, sys.stderr)

    return run("mailsuite-queue", main, USAGE["mailsuite-queue"])


def mailq_main(argv: list[str] | None = None) -> int:
    return run("mailq", lambda: mailq_report(load(config_only("mailq", argv)), sys.stdout),
               USAGE["mailq"])
