"""The commands local programs use: ``sendmail``, ``mailq``, ``newaliases``, ``mailsuite-queue``.

Each finds mail.ini through ``--config PATH`` / ``-C PATH``, else ``$MAILSUITE_CONFIG``, else
``/etc/mailsuite/mail.ini``. They never need the daemon running: ``sendmail`` writes the message
into ``queue_directory/maildrop/`` (fsync'ed) and pokes the daemon, which picks it up at once or
at its next start; ``mailq`` and ``mailsuite-queue -d`` read and change the queue files.

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
from typing import Any, BinaryIO, TextIO

from mailsuite.config import Config, ConfigError, config_path, load_config
from mailsuite.maillog import new_queue_id
from mailsuite.mta import control, maildrop
from mailsuite.mta.aliases import validate
from mailsuite.smtp.reader import Reader, split_command

EX_OK, EX_USAGE, EX_DATAERR, EX_SOFTWARE = 0, 64, 65, 70
EX_TEMPFAIL, EX_NOPERM, EX_CONFIG = 75, 77, 78


class Fatal(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


class Help(Exception):
    """``--help``: the program's usage goes to stdout, exit 0."""


_CONFIG = ("  -C PATH, --config PATH  mail.ini (else $MAILSUITE_CONFIG, else"
           " /etc/mailsuite/mail.ini)\n")
USAGE = {
    "sendmail": (
        "usage: sendmail [options] [--] [recipient ...]\n"
        "Queue the message on stdin for the recipients (Postfix-compatible options).\n"
        "  -t            also take recipients from To:, Cc:, Bcc: (Bcc: is removed)\n"
        "  -i, -oi       a line with a single dot does not end the message\n"
        "  -f SENDER     envelope sender (-r the same; -f '<>' the null sender)\n"
        "  -F NAME       full name for the From: line added when there is none\n"
        + _CONFIG +
        "  -bm           queue the message on stdin (the default)\n"
        "  -bs           speak SMTP on stdin and stdout\n"
        "  -bp           list the queue (as mailq)\n"
        "  -bi           check the alias files (as newaliases)\n"
        "  -q            deliver the queue now\n"
        "Exit status: 0 queued, 64 usage, 75 temporary failure (try again later),"
        " 78 configuration error."),
    "mailq": "usage: mailq [-C|--config mail.ini]\nList the mail queue and maildrop/.\n"
             + _CONFIG.rstrip("\n"),
    "newaliases": ("usage: newaliases [-C|--config mail.ini]\nCheck every alias_maps file;"
                   " errors name file and line, exit 1 on error.\n" + _CONFIG.rstrip("\n")),
    "mailsuite-queue": (
        "usage: mailsuite-queue [-C mail.ini] -p | -f | -d ID|ALL\n"
        "  -p          list the queue (mailq; the default)\n"
        "  -f          deliver the queue now (postqueue -f)\n"
        "  -d ID|ALL   delete one message, or all (postsuper -d)\n" + _CONFIG.rstrip("\n")),
}


def _load(path: str | None) -> Any:
    try:
        return load_config(config_path(path))
    except ConfigError as e:
        raise Fatal(EX_CONFIG, f"configuration refused:\n{e}") from e


def _run(program: str, main: Callable[[], int]) -> int:
    try:
        return main()
    except Fatal as e:
        print(f"{program}: fatal: {e}", file=sys.stderr)
        return e.code
    except Help:
        print(USAGE[program])
        return EX_OK
    except BrokenPipeError:
        return EX_OK


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


def _config_only(program: str, argv: list[str] | None) -> str | None:
    argv = sys.argv[1:] if argv is None else argv
    path = None
    i = 0
    while i < len(argv):
        if argv[i] in ("-C", "--config") and i + 1 < len(argv):
            path = argv[i + 1]
            i += 2
        elif argv[i].startswith("-C") and len(argv[i]) > 2:
            path = argv[i][2:]
            i += 1
        elif argv[i] in ("-h", "--help"):
            raise Help()
        else:
            raise Fatal(EX_USAGE, f"usage: {program} [-C|--config mail.ini]")
    return path


def newaliases_main(argv: list[str] | None = None) -> int:
    return _run("newaliases", lambda: newaliases_report(
        _load(_config_only("newaliases", argv)), sys.stderr))


# -- the queue: mailq, flush, delete -------------------------------------------------------


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
        cfg = _load(config)
        if action == "-p" or action is None:
            return mailq_report(cfg, sys.stdout)
        if action == "-f":
            return flush(cfg)
        assert target is not None
        return delete(cfg, target, sys.stderr)

    return _run("mailsuite-queue", main)


def mailq_main(argv: list[str] | None = None) -> int:
    return _run("mailq", lambda: mailq_report(_load(_config_only("mailq", argv)), sys.stdout))


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
