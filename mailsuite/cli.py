"""The commands local programs use: ``sendmail``, ``mailq``, ``newaliases``, ``mailsuite-queue``.

Each finds mail.ini through ``--config PATH`` / ``-C PATH``, else ``$MAILSUITE_CONFIG``, else
``/etc/mailsuite/mail.ini``. They never need the daemon running: ``sendmail`` writes the message
into ``queue_directory/maildrop/`` (fsync'ed) and pokes the daemon, which picks it up at once or
at its next start; ``mailq`` and ``mailsuite-queue`` (mailsuite.queuecmd) read and change the
queue files.

``sendmail`` understands what Postfix's does for local programs: ``-t -i -oi -f -r -F -bs -bp
-bi -bm -q``, recipients as arguments; other ``-o`` options, ``-v``, ``-N``, ``-R``, ``-B`` and
``-U`` are accepted and ignored. Invoked as ``mailq`` it lists, as ``newaliases`` it checks.
Exit codes are sysexits(3): 64 usage, 75 temporary failure, 78 configuration error.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import pwd
import sys
import time
from collections.abc import Callable
from typing import BinaryIO, TextIO

from mailsuite.cmdbase import (
    CONFIG_HELP,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    Fatal,
    Help,
    config_only,
    run,
)
from mailsuite.cmdbase import load as _load
from mailsuite.config import Config, config_path
from mailsuite.maillog import new_queue_id
from mailsuite.mta import control, maildrop
from mailsuite.mta.aliases import validate
from mailsuite.queuecmd import flush, mailq_main, mailq_report, queue_main
from mailsuite.smtp.reader import Reader, split_command

__all__ = ["Fatal", "Help", "config_path", "main", "prepare", "sendmail_main"]

USAGE = {
    "sendmail": (
        "usage: sendmail [options] [--] [recipient ...]\n"
        "Queue the message on stdin for the recipients (Postfix-compatible options).\n"
        "  -t            also take recipients from To:, Cc:, Bcc: (Bcc: is removed)\n"
        "  -i, -oi       a line with a single dot does not end the message\n"
        "  -f SENDER     envelope sender (-r the same; -f '<>' the null sender)\n"
        "  -F NAME       full name for the From: line added when there is none\n"
        + CONFIG_HELP +
        "  -bm           queue the message on stdin (the default)\n"
        "  -bs           speak SMTP on stdin and stdout\n"
        "  -bp           list the queue (as mailq)\n"
        "  -bi           check the alias files (as newaliases)\n"
        "  -q            deliver the queue now\n"
        "Exit status: 0 queued, 64 usage, 75 temporary failure (try again later),"
        " 78 configuration error."),
    "newaliases": ("usage: newaliases [-C|--config mail.ini]\nCheck every alias_maps file;"
                   " errors name file and line, exit 1 on error.\n" + CONFIG_HELP.rstrip("\n")),
}


def _run(program: str, main: Callable[[], int]) -> int:
    return run(program, main, USAGE[program])


# -- message preparation (what Postfix's cleanup adds to locally submitted mail) -------------


def split_header(data: bytes) -> tuple[list[bytes], bytes]:
    """(header lines with their continuation lines joined, body) of an LF message."""
    lines = data.split(b"\n")
    header: list[bytes] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line == b"":
            i += 1
            break
        if line[:1] in (b" ", b"\t") and header:
            header[-1] += b"\n" + line
        elif b":" in line and not line.startswith(b"From ") and b" " not in line.split(b":")[0]:
            header.append(line)
        else:
            break
        i += 1
    return header, b"\n".join(lines[i:])


def _name(line: bytes) -> str:
    return line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def _value(line: bytes) -> str:
    return line.split(b":", 1)[1].decode("utf-8", "replace").replace("\n", " ").strip()


def prepare(data: bytes, sender: str, full_name: str | None, extract: bool, myorigin: str,
            myhostname: str, queue_id: str, now: float) -> tuple[bytes, list[str]]:
    """Add From:/Date:/Message-ID: when missing; with ``extract`` (-t) take To/Cc/Bcc
    recipients. Bcc: is always removed. Returns (message, header recipients)."""
    header, body = split_header(data.replace(b"\r\n", b"\n"))
    found: list[str] = []
    if extract:
        fields = [_value(h) for h in header if _name(h) in ("to", "cc", "bcc")]
        found = [addr for _, addr in email.utils.getaddresses(fields) if addr]
    kept = [h for h in header if _name(h) != "bcc"]
    names = {_name(h) for h in kept}
    add = []
    if "from" not in names:
        address = sender if "@" in sender or not sender else f"{sender}@{myorigin}"
        who = email.utils.formataddr((full_name or "", address or f"MAILER-DAEMON@{myorigin}"))
        add.append(f"From: {who}")
    if "date" not in names:
        add.append(f"Date: {email.utils.formatdate(now, localtime=True)}")
    if "message-id" not in names:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
        add.append(f"Message-ID: <{stamp}.{queue_id}@{myhostname}>")
    lines = kept + [a.encode("utf-8") for a in add]
    message = b"\n".join(lines) + b"\n\n" + body
    if not message.endswith(b"\n"):
        message += b"\n"
    return message, found


def read_message(stream: BinaryIO, dot_ends: bool) -> bytes:
    """stdin up to EOF, or (without -i/-oi) up to a line holding a single dot."""
    if not dot_ends:
        return stream.read()
    out = []
    for line in stream:
        if line.rstrip(b"\r\n") == b".":
            break
        out.append(line)
    return b"".join(out)


# -- sendmail ------------------------------------------------------------------------------


class SendmailArgs:
    def __init__(self) -> None:
        self.config: str | None = None
        self.mode = "m"  # -bm (deliver), -bs, -bp, -bi
        self.sender: str | None = None
        self.full_name: str | None = None
        self.extract = False
        self.dot_ends = True
        self.flush = False
        self.recipients: list[str] = []


def parse_sendmail_args(argv: list[str]) -> SendmailArgs:
    """Postfix sendmail's option syntax (values attached or separate)."""
    a = SendmailArgs()
    takes_value = {"-f", "-r", "-F", "-C", "-N", "-R", "-V", "-X", "-B", "-L", "-O"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            a.recipients.extend(argv[i + 1:])
            break
        if arg == "--help":
            raise Help()
        if arg == "--config":
            if i + 1 >= len(argv):
                raise Fatal(EX_USAGE, "--config needs a path")
            a.config = argv[i + 1]
            i += 2
            continue
        if not arg.startswith("-") or arg == "-":
            a.recipients.append(arg)
            i += 1
            continue
        flag, value = arg[:2], arg[2:]
        if flag in takes_value and not value:
            if i + 1 >= len(argv):
                raise Fatal(EX_USAGE, f"option {flag} requires a value")
            i += 1
            value = argv[i]
        if flag in ("-f", "-r"):
            a.sender = "" if value in ("<>", "") else value.strip("<>")
        elif flag == "-F":
            a.full_name = value
        elif flag == "-C":
            a.config = value
        elif flag == "-t":
            a.extract = True
        elif flag == "-i":
            a.dot_ends = False
        elif flag == "-o":
            if value == "i":
                a.dot_ends = False
        elif flag == "-b":
            if value not in ("s", "p", "i", "m", "d"):
                raise Fatal(EX_USAGE, f"unsupported: -b{value}")
            a.mode = value
        elif flag == "-q":
            a.flush = True
        elif flag in takes_value or flag in ("-v", "-U", "-n", "-G", "-A", "-h", "-e", "-d"):
            pass
        else:
            raise Fatal(EX_USAGE, f"illegal option {arg}")
        i += 1
    return a


def _login_name() -> tuple[str, str]:
    try:
        pw = pwd.getpwuid(os.getuid())
        return pw.pw_name, pw.pw_gecos.split(",")[0]
    except KeyError:
        return f"uid{os.getuid()}", ""


def submit(cfg: Config, sender: str, recipients: list[str], data: bytes) -> str:
    """Drop one message into maildrop/ and poke the daemon; returns the queue id."""
    queue_directory = cfg.mail.queue_directory
    if not os.path.isdir(maildrop.maildrop_dir(queue_directory)) and os.geteuid() != 0:
        raise Fatal(EX_TEMPFAIL, f"{maildrop.maildrop_dir(queue_directory)}: does not exist"
                    " (start mailsuite once, as root, to create it)")
    try:
        queue_id = maildrop.drop(queue_directory, sender, recipients, data)
    except OSError as e:
        raise Fatal(EX_TEMPFAIL, f"cannot write to {maildrop.maildrop_dir(queue_directory)}:"
                    f" {e.strerror}") from e
    with contextlib.suppress(control.MailSystemDown, OSError):  # picked up when it starts
        control.ask(queue_directory, "pickup", timeout=5)
    return queue_id


def _compose(cfg: Config, a: SendmailArgs, raw: bytes, recipients: list[str]) -> tuple[str, bytes,
                                                                                      list[str]]:
    login, gecos = _login_name()
    sender = login if a.sender is None else a.sender
    full_name = a.full_name
    if full_name is None and a.sender is None:  # the From: is the user's own
        full_name = os.environ.get("NAME") or gecos or None
    queue_id = new_queue_id()
    message, found = prepare(raw, sender, full_name, a.extract, cfg.mail.myorigin,
                             cfg.mail.myhostname, queue_id, time.time())
    everyone = recipients + [r for r in found if r not in recipients]
    return sender, message, everyone


def sendmail_main(argv: list[str] | None = None, stdin: BinaryIO | None = None,
                  stdout: BinaryIO | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer

    def main() -> int:
        a = parse_sendmail_args(argv)
        if a.mode == "p":
            return mailq_report(_load(a.config), sys.stdout)
        if a.mode == "i":
            return newaliases_report(_load(a.config), sys.stderr)
        if a.flush:
            return flush(_load(a.config))
        if a.mode == "d":
            raise Fatal(EX_USAGE, "-bd: run the daemon with twistd mailsuite")
        cfg = _load(a.config)
        if a.mode == "s":
            return smtp_session(cfg, a, stdin, stdout)
        raw = read_message(stdin, a.dot_ends)
        sender, message, recipients = _compose(cfg, a, raw, a.recipients)
        if not recipients:
            raise Fatal(EX_USAGE, "no recipients specified")
        submit(cfg, sender, recipients, message)
        return EX_OK

    return _run("sendmail", main)


#: ``sendmail -bs`` commands whose reply never changes.
_FIXED_REPLIES = {"NOOP": "250 2.0.0 Ok", "VRFY": "252 2.0.0 Send some mail, I'll try my best"}


def smtp_session(cfg: Config, a: SendmailArgs, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """``sendmail -bs``: SMTP on stdin/stdout, read by the SMTP doors' reader (smtp/reader.py) a
    line at a time, no line limit, LF . LF ending DATA too; each message goes to maildrop/."""

    def reply(text: str) -> None:
        stdout.write(text.encode("utf-8") + b"\r\n")
        stdout.flush()

    reader = Reader(line_limit=None, lf_ends_data=True)
    reply(f"220 {cfg.mail.myhostname} ESMTP mailsuite")
    sender: str | None = None
    rcpts: list[str] = []
    while True:
        line = _next_command(reader, stdin)
        if line is None:
            return EX_OK
        verb, arg = (w.decode("utf-8", "surrogateescape") for w in split_command(line))
        if verb == "HELO":
            reply(f"250 {cfg.mail.myhostname}")
        elif verb == "EHLO":
            reply(f"250-{cfg.mail.myhostname}\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                  "250 ENHANCEDSTATUSCODES")
        elif verb == "MAIL" and arg.upper().startswith("FROM:"):
            path = arg[5:].strip().split(" ")[0]
            sender = path.strip("<>")
            rcpts = []
            reply("250 2.1.0 Ok")
        elif verb == "RCPT" and arg.upper().startswith("TO:"):
            if sender is None:
                reply("503 5.5.1 Error: need MAIL command")
                continue
            address = arg[3:].strip().split(" ")[0].strip("<>")
            if not address:
                reply("501 5.1.3 Bad recipient address syntax")
                continue
            rcpts.append(address)
            reply("250 2.1.5 Ok")
        elif verb == "DATA":
            if sender is None or not rcpts:
                reply("503 5.5.1 Error: need RCPT command")
                continue
            reply("354 End data with <CR><LF>.<CR><LF>")
            body = _read_data(reader, stdin)
            if body is None:
                return EX_TEMPFAIL
            a.sender = sender
            reply(_queue_message(cfg, a, body or b"\n", rcpts))
            sender, rcpts = None, []
        elif verb == "RSET":
            sender, rcpts = None, []
            reply("250 2.0.0 Ok")
        elif verb in _FIXED_REPLIES:
            reply(_FIXED_REPLIES[verb])
        elif verb == "QUIT":
            reply("221 2.0.0 Bye")
            return EX_OK
        else:
            reply("502 5.5.2 Error: command not recognized")


def _next_command(reader: Reader, stdin: BinaryIO) -> bytes | None:
    """The next command line; None at the end of stdin (a last line without LF counts)."""
    while True:
        line = reader.command()
        if isinstance(line, bytes):
            return line
        raw = stdin.readline()
        if not raw:
            if not reader.buffer:
                return None
            raw = b"\n"
        reader.feed(raw)


def _read_data(reader: Reader, stdin: BinaryIO) -> bytes | None:
    """The message of DATA, up to the lone dot, dot-unstuffed; None when stdin ends first."""
    reader.start_data(0)
    while True:
        body = reader.data()
        if body is not None:
            return body.data
        raw = stdin.readline()
        if not raw:
            return None
        reader.feed(raw)


def _queue_message(cfg: Config, a: SendmailArgs, raw_message: bytes, rcpts: list[str]) -> str:
    """The message of one DATA into maildrop/; the reply to it."""
    envelope_sender, message, _ = _compose(cfg, a, raw_message, rcpts)
    try:
        queue_id = submit(cfg, envelope_sender, rcpts, message)
    except Fatal as e:
        return f"451 4.3.0 Error: {e}"
    return f"250 2.0.0 Ok: queued as {queue_id}"


# -- newaliases ----------------------------------------------------------------------------


def newaliases_report(cfg: Config, err: TextIO) -> int:
    """Check every alias_maps file; errors (file, line) and warnings to ``err``; exit 1 on
    error. The running daemon re-reads a changed file at its next look-up: nothing to signal."""
    _, errors, warnings = validate(cfg.mail.alias_maps)
    for text in warnings:
        print(f"newaliases: warning: {text}", file=err)
    for text in errors:
        print(f"newaliases: error: {text}", file=err)
    return 1 if errors else EX_OK


def newaliases_main(argv: list[str] | None = None) -> int:
    return _run("newaliases", lambda: newaliases_report(
        _load(config_only("newaliases", argv)), sys.stderr))


def main() -> None:
    """Console entry for ``sendmail``: as Postfix's, argv[0] ``mailq``/``newaliases`` pick
    those modes."""
    name = os.path.basename(sys.argv[0])
    if name == "mailq":
        sys.exit(mailq_main())
    if name == "newaliases":
        sys.exit(newaliases_main())
    if name == "mailsuite-queue":
        sys.exit(queue_main())
    sys.exit(sendmail_main())


def sendmail_entry() -> None:
    main()


def newaliases_entry() -> None:
    sys.exit(newaliases_main())


def mailq_entry() -> None:
    sys.exit(mailq_main())


def queue_entry() -> None:
    sys.exit(queue_main())


if __name__ == "__main__":
    main()
