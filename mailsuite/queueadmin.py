"""``mailsuite queue``: the mail queue, with Postfix's postqueue, postsuper and postcat verbs::

    mailsuite queue [list [--json]]             mailq, postqueue -p (-j)
    mailsuite queue flush                       postqueue -f: the daemon retries deferred mail now
    mailsuite queue hold ID...|ALL|deferred     postsuper -h
    mailsuite queue release ID...|ALL           postsuper -H: out of hold, tried at once
    mailsuite queue requeue ID...|ALL|deferred  postsuper -r: recipients looked up again, tried now
    mailsuite queue delete ID...|ALL|deferred   postsuper -d (held mail too)
    mailsuite queue show ID                     postcat -q: envelope, header and body

``deferred`` is Postfix's deferred queue: queued mail tried at least once; ``-`` reads the
queue ids from stdin, one a line (postsuper's ``-``, for ``... | mailsuite queue delete -``).
The work is mailsuite.queuecmd's, which ``mailq`` and the older ``mailsuite-queue -p/-f/-h/-H/
-r/-d/-s`` run too: the changes go through the running daemon's control socket, or to the files
when it is down; the count lines are postsuper's, on stderr.
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import TextIO

from mailsuite.cmdbase import ArgParser, load, parse_args
from mailsuite.queuecmd import flush, json_report, mailq_report, postsuper, show

PROGRAM = "mailsuite queue"

#: verb -> (mailsuite-queue's flag, help)
CHANGES = {
    "hold": ("-h", "put on hold: not delivered, not expired (postsuper -h)"),
    "release": ("-H", "release from hold, deliver now (postsuper -H)"),
    "requeue": ("-r", "look the recipients up again and deliver now (postsuper -r)"),
    "delete": ("-d", "delete, held mail too (postsuper -d)"),
}


def parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    config = ArgParser(add_help=False)
    config.add_argument("-C", "--config", default=argparse.SUPPRESS, help="mail.ini (else"
                        " $MAILSUITE_CONFIG, else /etc/mailsuite/mail.ini)")
    top = ArgParser(prog=prog, parents=[config], description="The mail queue: Postfix's"
                    " postqueue, postsuper and postcat verbs.")
    sub = top.add_subparsers(dest="verb", metavar="VERB", parser_class=ArgParser)
    listing = sub.add_parser("list", parents=[config], help="list the queue, as mailq (the"
                             " default): ! after the id = on hold, * = not tried yet")
    listing.add_argument("-j", "--json", action="store_true", help="one JSON object a"
                         " message, as postqueue -j")
    sub.add_parser("flush", parents=[config], help="ask the running daemon to retry every"
                   " deferred message now (postqueue -f); held mail stays held")
    for verb, (_, text) in CHANGES.items():
        p = sub.add_parser(verb, parents=[config], help=text)
        p.add_argument("ids", nargs="+", metavar="ID", help="queue ids; ALL: every message;"
                       " deferred: those tried and not delivered yet; -: ids from stdin")
    show_parser = sub.add_parser("show", parents=[config], help="print one message: envelope,"
                                 " header and body (postcat -q)")
    show_parser.add_argument("id", metavar="ID")
    return top


def _ids(given: list[str]) -> list[str]:
    """The ids of the command line, ``-`` the words of stdin."""
    ids: list[str] = []
    for word in given:
        ids += sys.stdin.read().split() if word == "-" else [word]
    return ids


def main(argv: list[str], out: TextIO) -> int:
    """``mailsuite queue ...``: its exit status."""
    args = parse_args(parser(), argv, out)
    if isinstance(args, int):
        return args
    cfg = load(getattr(args, "config", None))  # -C before or after the verb
    args.verb = args.verb or "list"
    if args.verb == "list":
        return json_report(cfg, out) if getattr(args, "json", False) else mailq_report(cfg, out)
    if args.verb == "flush":
        return flush(cfg)
    if args.verb == "show":
        binary = getattr(out, "buffer", None)
        if binary is not None:
            return show(cfg, args.id, binary)
        buffer = io.BytesIO()
        status = show(cfg, args.id, buffer)
        out.write(buffer.getvalue().decode("utf-8", "replace"))
        return status
    return postsuper(cfg, CHANGES[args.verb][0], _ids(args.ids), sys.stderr, PROGRAM)
