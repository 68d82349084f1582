"""The queue commands: ``mailq`` (``postqueue -p``) and ``mailsuite-queue`` (``postqueue -p/-f``,
``postsuper -h/-H/-r/-d``, ``postcat -q``).

They read the queue files themselves (root, or mail_owner), and change the queue through the
running daemon's control socket (mailsuite.mta.control) when it runs, so that its queue manager
knows at once (a released message is tried at once, a held one no more); without a daemon they
change the files (mailsuite.mta.queuefile: the same crash-safe renames and records), and the
daemon finds them so at its start. As Postfix's ``mailq``, a held message has ``!`` after its
queue id, one not tried yet ``*``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import BinaryIO, NamedTuple, TextIO

from mailsuite.cmdbase import (
    CONFIG_HELP,
    EX_DATAERR,
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
from mailsuite.mta.queuefile import CorruptQueueFile, Envelope, QueueDirectory

USAGE = {
    "mailq": "usage: mailq [-C|--config mail.ini]\nList the mail queue and maildrop/.\n"
             + CONFIG_HELP.rstrip("\n"),
    "mailsuite-queue": (
        "usage: mailsuite-queue [-C mail.ini] -p | -f | -s ID | -h|-H|-r|-d ID|ALL\n"
        "  -p          list the queue (mailq; the default): ! after the id = on hold\n"
        "  -f          deliver the queue now (postqueue -f); held mail stays held\n"
        "  -s ID       show one message: envelope and the whole message (postcat -q)\n"
        "  -h ID|ALL   put on hold: not delivered, not expired (postsuper -h)\n"
        "  -H ID|ALL   release from hold, deliver now (postsuper -H)\n"
        "  -r ID|ALL   requeue: recipients looked up again, deliver now (postsuper -r)\n"
        "  -d ID|ALL   delete one message, or all, held ones too (postsuper -d)\n"
        + CONFIG_HELP.rstrip("\n")),
}


EX_NOINPUT = 66  # sysexits(3): postcat -q of a message that is not there


class Listed(NamedTuple):
    """One message of the listing: where it is (``active``, ``hold``, ``maildrop``), its flag
    for mailq (``*`` not tried yet, ``!`` on hold), size, arrival, sender, the recipients still
    to deliver, and a note for mailq (why it is held, or why its last attempt was deferred)."""

    queue_id: str
    where: str
    flag: str
    size: int
    arrival: float
    sender: str
    recipients: list[str]
    note: str = ""

    @property
    def deferred(self) -> bool:
        """In Postfix's deferred queue: queued, tried, not delivered yet."""
        return self.where == "active" and not self.flag


def queue_entries(queue_directory: str) -> list[Listed]:
    """The queue, the hold queue, then maildrop/."""
    out = []
    queue = QueueDirectory(queue_directory)
    for held in (False, True) if os.path.isdir(queue.active) else ():
        for queue_id in queue.ids(held):
            try:
                env, _ = queue.load(queue_id, held=held)
            except FileNotFoundError:
                continue  # delivered (or moved) meanwhile
            except (CorruptQueueFile, OSError, ValueError):
                continue
            flag = "!" if held else ("" if env.attempts else "*")
            note = f"held: {env.hold_reason or 'on hold'}" if held else env.last_reason
            out.append(Listed(queue_id, "hold" if held else "active", flag, env.size,
                              env.arrival, env.sender, [r.address for _, r in env.pending()],
                              note))
    for queue_id in maildrop.ids(queue_directory):
        try:
            d = maildrop.read(queue_directory, queue_id)
        except (OSError, ValueError, KeyError):
            continue
        out.append(Listed(queue_id, "maildrop", "", len(d.data), d.arrival, d.sender,
                          d.recipients))
    return out


def _listing(queue_directory: str) -> list[Listed]:
    try:
        return queue_entries(queue_directory)
    except PermissionError as e:
        raise Fatal(EX_NOPERM, f"{e.filename}: permission denied (the queue is root's)") from e


def mailq_report(cfg: Config, out: TextIO) -> int:
    """Postfix's mailq listing: why a message is deferred (its last attempt's reply), or why
    it is held, in parentheses under its line, as Postfix shows the deferral reason."""
    entries = _listing(cfg.mail.queue_directory)
    if not entries:
        print("Mail queue is empty", file=out)
        return EX_OK
    print("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------", file=out)
    total = 0
    for e in entries:
        when = time.strftime("%a %b %d %H:%M:%S", time.localtime(e.arrival))
        print(f"{e.queue_id + e.flag:<11} {e.size:>8} {when}  {e.sender or 'MAILER-DAEMON'}",
              file=out)
        if e.note:
            print(f"{'':41}({e.note})", file=out)
        for r in e.recipients:
            print(f"{'':41}{r}", file=out)
        print(file=out)
        total += e.size
    n = len(entries)
    print(f"-- {(total + 1023) // 1024} Kbytes in {n} Request{'s' if n != 1 else ''}.", file=out)
    return EX_OK


def json_report(cfg: Config, out: TextIO) -> int:
    """postqueue -j: one JSON object a message, Postfix's fields (``queue_name`` active,
    deferred, hold or maildrop; ``delay_reason`` the last attempt's reply, or the hold
    reason)."""
    for e in _listing(cfg.mail.queue_directory):
        name = "deferred" if e.deferred else e.where
        print(json.dumps({
            "queue_name": name, "queue_id": e.queue_id, "arrival_time": int(e.arrival),
            "message_size": e.size, "forced_expire": False, "sender": e.sender,
            "recipients": [{"address": r, **({"delay_reason": e.note} if e.note else {})}
                           for r in e.recipients]}, ensure_ascii=False), file=out)
    return EX_OK


def flush(cfg: Config) -> int:
    try:
        answer = control.ask(cfg.mail.queue_directory, "flush")
    except control.MailSystemDown as e:
        raise Fatal(EX_TEMPFAIL, f"Cannot flush mail queue - mail system is down ({e})") from e
    if not answer.startswith("ok"):
        raise Fatal(EX_SOFTWARE, f"flush refused: {answer}")
    return EX_OK


# -- postsuper's verbs: through the daemon when it runs, else on the files --------------------


def _hold_file(queue_directory: str, queue_id: str) -> bool:
    return QueueDirectory(queue_directory).move(queue_id, {"hold": "mailsuite queue hold"}, True)


def _release_file(queue_directory: str, queue_id: str) -> bool:
    return QueueDirectory(queue_directory).move(queue_id, {"released": time.time()}, False)


def _requeue_file(queue_directory: str, queue_id: str) -> bool:
    return QueueDirectory(queue_directory).requeue(queue_id, time.time())


def _delete_file(queue_directory: str, queue_id: str) -> bool:
    return maildrop.remove(queue_directory, queue_id) or \
        QueueDirectory(queue_directory).remove(queue_id)


class Verb(NamedTuple):
    command: str  # on the control socket
    done: str  # the daemon's answer when it did it: "ok DONE"
    report: str  # postsuper's count line
    on_files: Callable[[str, str], bool]  # without a daemon
    every: tuple[str, ...]  # what ALL takes (Listed.where)


VERBS = {
    "-h": Verb("hold", "held", "Placed on hold", _hold_file, ("active",)),
    "-H": Verb("release", "released", "Released from hold", _release_file, ("hold",)),
    "-r": Verb("requeue", "requeued", "Requeued", _requeue_file, ("active", "hold")),
    "-d": Verb("delete", "removed", "Deleted", _delete_file, ("active", "hold", "maildrop")),
}


def postsuper(cfg: Config, flag: str, which: str | list[str], err: TextIO,
              program: str = "postsuper") -> int:
    """``postsuper -h/-H/-r/-d ID|ALL|deferred ...`` (``ALL``: every message the verb takes;
    ``deferred``: those of them tried and not delivered yet, Postfix's deferred queue); the
    count line on ``err``, as Postfix's."""
    verb = VERBS[flag]
    queue_directory = cfg.mail.queue_directory
    ids: list[str] = []
    for target in [which] if isinstance(which, str) else which:
        if target in ("ALL", "deferred"):
            ids += [e.queue_id for e in _listing(queue_directory) if e.where in verb.every
                    and (target == "ALL" or e.deferred)]
        elif not target.isalnum():
            raise Fatal(EX_USAGE, f"bad queue id {target!r}")
        else:
            ids.append(target)
    count = sum(_apply(queue_directory, verb, queue_id) for queue_id in dict.fromkeys(ids))
    print(f"{program}: {verb.report}: {count} message{'s' if count != 1 else ''}", file=err)
    return EX_OK


def _apply(queue_directory: str, verb: Verb, queue_id: str) -> bool:
    try:
        answer = control.ask(queue_directory, f"{verb.command} {queue_id}", timeout=60)
    except control.MailSystemDown:
        try:
            return verb.on_files(queue_directory, queue_id)
        except PermissionError as e:
            raise Fatal(EX_NOPERM, f"{e.filename}: permission denied (the queue is root's)") from e
    except OSError as e:
        raise Fatal(EX_TEMPFAIL, f"the daemon did not answer: {e}") from e
    if answer.startswith("error"):
        code = EX_NOPERM if "permission denied" in answer else EX_SOFTWARE
        raise Fatal(code, f"{verb.command} {queue_id}: {answer.removeprefix('error ')}")
    return answer == f"ok {verb.done}"


# -- postcat -q ----------------------------------------------------------------------------


def show(cfg: Config, queue_id: str, out: BinaryIO) -> int:
    """``postcat -q ID``: the envelope, then the whole message, of a queued, held or dropped
    message."""
    if not queue_id.isalnum():
        raise Fatal(EX_USAGE, f"bad queue id {queue_id!r}")
    queue_directory = cfg.mail.queue_directory
    queue = QueueDirectory(queue_directory)
    try:
        for held in (False, True):
            try:
                env, data = queue.load(queue_id, with_body=True, held=held)
            except FileNotFoundError:
                continue
            _write_message(out, f"{'hold' if held else 'active'}/{queue_id}",
                           _envelope_lines(env), data or b"")
            return EX_OK
        try:
            d = maildrop.read(queue_directory, queue_id)
        except FileNotFoundError:
            raise Fatal(EX_NOINPUT, f"{queue_id}: no such message in the queue") from None
    except PermissionError as e:
        raise Fatal(EX_NOPERM, f"{e.filename}: permission denied (the queue is root's)") from e
    except (CorruptQueueFile, OSError, ValueError, KeyError) as e:
        raise Fatal(EX_DATAERR, f"{queue_id}: unreadable: {e}") from e
    lines = [f"message_arrival_time: {time.ctime(d.arrival)}", f"sender: {d.sender}",
             f"submitted_by_uid: {d.uid}", *(f"recipient: {r}" for r in d.recipients)]
    _write_message(out, f"maildrop/{queue_id}", lines, d.data)
    return EX_OK


def _envelope_lines(env: Envelope) -> list[str]:
    lines = [f"message_size: {env.size}", f"message_arrival_time: {time.ctime(env.arrival)}",
             f"sender: {env.sender}"]
    if env.client:
        lines.append(f"client: {env.client}")
    if env.hold_reason:
        lines.append(f"hold_reason: {env.hold_reason}")
    if env.attempts:
        lines.append(f"delivery_attempts: {env.attempts}, next: {time.ctime(env.next_attempt)}")
    if env.last_reason:
        lines.append(f"deferred: {env.last_reason}")
    for r in env.recipients:
        state = "done" if r.done else ("to be looked up" if not r.resolved else "pending")
        to = f" (local: {r.user})" if r.user else ""
        lines.append(f"recipient: {r.address}{to} [{state}]")
    return lines


def _write_message(out: BinaryIO, where: str, envelope: list[str], data: bytes) -> None:
    """postcat's layout: the envelope records, the message, the end mark."""
    text = [f"*** ENVELOPE RECORDS {where} ***", *envelope, f"*** MESSAGE CONTENTS {where} ***"]
    out.write("\n".join(text).encode("utf-8", "replace") + b"\n")
    out.write(data if data.endswith(b"\n") or not data else data + b"\n")
    out.write(f"*** MESSAGE FILE END {where} ***\n".encode())
    out.flush()


def _parse(argv: list[str]) -> tuple[str | None, str, str | None]:
    """(config, action, its queue id or ALL) of mailsuite-queue's arguments."""
    config, action, target = None, "-p", None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-C", "--config") and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
            continue
        if arg == "--help" or (arg == "-h" and i + 1 == len(argv)):
            raise Help()
        if arg in ("-p", "-f"):
            action = arg
        elif arg in (*VERBS, "-s") and i + 1 < len(argv):
            action, target = arg, argv[i + 1]
            i += 1
        else:
            raise Fatal(EX_USAGE, USAGE["mailsuite-queue"].split("\n")[0])
        i += 1
    return config, action, target


def queue_main(argv: list[str] | None = None) -> int:
    """``mailsuite-queue``: see USAGE."""
    args = sys.argv[1:] if argv is None else argv

    def main() -> int:
        config, action, target = _parse(args)
        cfg = load(config)
        if action == "-p":
            return mailq_report(cfg, sys.stdout)
        if action == "-f":
            return flush(cfg)
        assert target is not None
        if action == "-s":
            return show(cfg, target, sys.stdout.buffer)
        return postsuper(cfg, action, target, sys.stderr)

    return run("mailsuite-queue", main, USAGE["mailsuite-queue"])


def mailq_main(argv: list[str] | None = None) -> int:
    return run("mailq", lambda: mailq_report(load(config_only("mailq", argv)), sys.stdout),
               USAGE["mailq"])
