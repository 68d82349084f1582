"""What local(8) does beyond the mailbox: expanding a local name, and mail to |command and /file.

``Expander.expand(name)`` follows Postfix's local(8) rules, blocking (it reads files):

- an alias (``alias_maps``) expands to its targets, recursively; ``owner-NAME`` (if it is an
  alias) becomes the envelope sender of NAME's expansion, so delivery errors go there;
- a name that is no alias is a Unix account; its ``~/.forward`` (read as with the user's rights:
  opened from the home directory with O_NOFOLLOW, so never a symlink; a regular file of the user
  or of root that the user may read, not group/world-writable) replaces the mailbox, else the
  mailbox;
- ``\\user`` is the mailbox of user, without aliases or .forward;
- ``user@local-domain`` is ``user``; another domain is a ``Remote`` address (the queue's job);
- ``|command`` and ``/file`` run/append with the privileges of the alias file's owner
  (``[mail] default_privs``, ``nobody``, when that is root), of the user for ``~/.forward``
  (``default_privs`` for root's own). As
  Postfix's allow_mail_to_commands/files = alias, forward: commands and files listed in
  ``:include:`` files are refused;
- ``:include:/path`` reads more targets from a file, opened with the rights of where it is named
  (the user of a ``~/.forward``, the owner of the alias file, root for a root-owned one; then its
  own owner's), also inside another :include: file (``MAX_INCLUDE_DEPTH`` deep; one met again
  inside itself adds nothing); a name met again inside its own expansion
  is its mailbox (``boss: boss, alice``), a loop with no account behind it is refused.

A recipient whose expansion has a target that cannot work (unknown user, refused command, loop)
is refused at RCPT with the reason, so no mail is silently dropped.

``deliver_program`` and ``deliver_file`` are blocking (call them from a thread) and run as the
target's privileges, in a child process (the server's own privileges never change; it is
threaded): /bin/sh for a command; for a file a forked child that drops every id and group and
appends without exec, so the target user needs no access to the server's Python.
"""

from __future__ import annotations

from collections.abc import Callable

import errno
import os
import pwd
import select
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger
from twisted.mail import smtp

from mailsuite.accounts import Account
from mailsuite.mta.aliases import (
    EXPANSION_SIZE_LIMIT,
    MAX_DEPTH,
    AliasLookupError,
    AliasMap,
    Target,
    classify,
    parse_list,
)
from mailsuite.mta.asuser import (
    EX_CANTCREAT,
    EX_TEMPFAIL,
    Privileges,
    append_child,
    as_user,
    open_as,
)
from mailsuite.mta.rewrite import split_extension
from mailsuite.store.mboxformat import make_from_line, to_stored
from mailsuite.store.safepath import MissingAnchor, Place, UnsafePath, open_anchor

log = Logger()

DEFAULT_PRIVS = "nobody"
#: :include: files inside :include: files, at most (Postfix bounds only its recursion, 100)
MAX_INCLUDE_DEPTH = 20
#: Postfix's command_time_limit.
COMMAND_TIME_LIMIT = 1000.0
#: Largest ~/.forward or :include: file read.
LIST_FILE_LIMIT = 1 << 20
#: What Postfix's export_environment keeps of the server's environment.
EXPORTED = ("TZ", "LANG", "LC_ALL")


@dataclass(frozen=True)
class Program:
    """``|command``: the message on its stdin, run by /bin/sh as ``privs``."""

    command: str
    privs: Privileges
    origin: str
    sender: str | None = None  # owner-NAME address replacing the envelope sender

    @property
    def name(self) -> str:
        return f"|{self.command}"


@dataclass(frozen=True)
class File:
    """``/path``: the message appended in mbox format as ``privs``."""

    path: str
    privs: Privileges
    origin: str
    sender: str | None = None

    @property
    def name(self) -> str:
        return self.path


@dataclass(frozen=True)
class Remote:
    """An address in another domain: forwarded through the queue."""

    address: str
    origin: str
    sender: str | None = None

    @property
    def name(self) -> str:
        return self.address


Destination = Account | Program | File | Remote


class Refused(smtp.SMTPServerError):
    """The recipient's expansion cannot be delivered; ``code``/``resp`` are the RCPT reply."""

    def __init__(self, code: int, address: str, reason: str, kind: str = "other") -> None:
        self.address = address
        self.reason = reason
        self.kind = kind  # "unknown" (the address itself), "loop" or "other"
        super().__init__(code, f"<{address}>: Recipient address rejected: {reason}")


class TargetFailed(Exception):
    """A command or file delivery failed; ``permanent`` means bounce, else defer."""

    def __init__(self, permanent: bool, dsn: str, text: str) -> None:
        super().__init__(text)
        self.permanent = permanent
        self.dsn = dsn
        self.text = text


@dataclass(frozen=True)
class _Context:
    """Where a target was written: its privileges, what it may do, whose errors it reports."""

    privs: Privileges | None
    origin: str
    commands_and_files: bool
    sender: str | None
    #: where ``privs`` come from (a ~/.forward, an alias file, or the :include: file whose
    #: owner they are) and the :include: files read with them since, in order
    via: tuple[str, ...] = ()


@dataclass
class _Out:
    address: str
    destinations: list[Destination] = field(default_factory=list)

    def add(self, dest: Destination) -> None:
        if dest not in self.destinations:
            if len(self.destinations) >= EXPANSION_SIZE_LIMIT:
                raise Refused(451, self.address, f"4.3.0 expansion exceeds {EXPANSION_SIZE_LIMIT}"
                              " recipients (expansion_size_limit)")
            self.destinations.append(dest)


class Expander:
    """Expands local names as local(8) does. Blocking; thread-safe (no shared state changes).

    ``accounts.recipient(name) -> Account | None`` (AccountDB); ``myorigin`` is the domain of
    ``owner-`` senders; ``local_domains`` are mydestination.
    """

    def __init__(self, aliases: AliasMap, accounts: Any, myorigin: str,
                 local_domains: Any, default_privs: str = DEFAULT_PRIVS,
                 recipient_delimiter: str = "") -> None:
        self.aliases = aliases
        self.recipient_delimiter = recipient_delimiter
        self.accounts = accounts
        self.myorigin = myorigin
        self.local_domains = {d.lower().rstrip(".") for d in local_domains}
        self.default_privs = default_privs
        #: blocking ``(account) -> targets`` of its ~/.forward (privsep: the user's agent reads)
        self.forward_reader: Callable[[Account], list[Target]] = read_forward_file
        #: blocking ``(path, privs, via) -> (st_mode, st_uid, text)`` of an :include: file
        #: read with ``privs`` (None: ours), named in ``via[-1]`` (``via``: _Context.via);
        #: OSError as open(2) (privsep: the agent with those rights reads)
        self.include_reader: Callable[[str, Privileges | None, tuple[str, ...]],
                                      tuple[int, int, str]] = read_include_file

    def expand(self, local: str, address: str | None = None) -> list[Destination]:
        """Every destination of local part ``local``; raises Refused (or AliasLookupError)."""
        table, owners = self.aliases.snapshot()
        out = _Out(address or local)
        top = _Context(None, "", True, None)
        self._name(self.without_extension(local.lower(), table), (), top, out, table, owners)
        return out.destinations

    def without_extension(self, name: str, table: dict[str, list[Target]]) -> str:
        """local(8) with a recipient_delimiter: ``boss+news`` stays itself when it is an alias
        or an account, else it is ``boss`` (the extension is not propagated to alias targets)."""
        user, extension = split_extension(name, self.recipient_delimiter)
        if extension is None or name in table or self.accounts.recipient(name) is not None:
            return name
        return user

    # -- names ---------------------------------------------------------------------------

    def _name(self, name: str, chain: tuple[str, ...], ctx: _Context, out: _Out,
              table: dict[str, list[Target]], owners: dict[str, int]) -> None:
        if len(chain) >= MAX_DEPTH:
            raise Refused(554, out.address, f"5.4.6 alias nesting deeper than {MAX_DEPTH}")
        if name in chain:
            account = self.accounts.recipient(name)
            if account is None:
                raise Refused(554, out.address, "5.4.6 mail forwarding loop", "loop")
            out.add(account)
            return
        targets = table.get(name)
        if targets is not None:
            owner = f"owner-{name}@{self.myorigin}" if f"owner-{name}" in table else ctx.sender
            for target in targets:
                privs = self._owner_privs(owners.get(target.filename, 0))
                here = _Context(privs, f"{target.filename}, line {target.lineno}", True, owner,
                                (target.filename,))
                self._target(target.text, (*chain, name), here, out, table, owners)
            return
        account = self.accounts.recipient(name)
        if account is None:
            if not chain:
                raise Refused(550, out.address, "5.1.1 User unknown in local recipient table",
                              "unknown")
            raise Refused(550, out.address, f"5.1.1 alias target {name!r} ({ctx.origin}):"
                          " user unknown")
        items = self.read_forward(account)
        if not items:
            out.add(account)
            return
        mine = _Context(self._account_privs(account), items[0].filename, True, ctx.sender,
                        (items[0].filename,))
        for item in items:
            self._target(item.text, (*chain, name), mine, out, table, owners)

    def _target(self, text: str, chain: tuple[str, ...], ctx: _Context, out: _Out,
                table: dict[str, list[Target]], owners: dict[str, int]) -> None:
        kind = classify(text)
        if kind == "user":
            account = self.accounts.recipient(text[1:].lower()) or self.accounts.recipient(text[1:])
            if account is None:
                raise Refused(550, out.address, f"5.1.1 {text!r} ({ctx.origin}): user unknown")
            out.add(account)
        elif kind == "name":
            self._name(text.lower(), chain, ctx, out, table, owners)
        elif kind == "address":
            local, _, domain = text.rpartition("@")
            local = local.strip('"')
            if domain.lower().rstrip(".") in self.local_domains and local:
                self._name(local.lower(), chain, ctx, out, table, owners)
            else:
                out.add(Remote(text, ctx.origin, ctx.sender))
        elif kind == "include":
            self._include(text[len(":include:"):].strip(), chain, ctx, out, table, owners)
        else:  # program or file
            if not ctx.commands_and_files:
                what = "command" if kind == "program" else "file"
                raise Refused(550, out.address, f"5.7.1 mail to {what} {text!r} is restricted"
                              f" ({ctx.origin}: not allowed in :include: files)")
            privs = ctx.privs or self._default_privs()
            if privs.uid == 0:  # root's own ~/.forward: Postfix runs these as default_privs
                privs = self._default_privs()
            if kind == "program":
                out.add(Program(text[1:].strip(), privs, ctx.origin, ctx.sender))
            elif text.endswith("/"):
                raise Refused(550, out.address, f"5.3.5 {text!r} ({ctx.origin}): maildir"
                              " delivery is not supported; name an mbox file")
            else:
                out.add(File(os.path.normpath(text), privs, ctx.origin, ctx.sender))

    def _include(self, path: str, chain: tuple[str, ...], ctx: _Context, out: _Out,
                 table: dict[str, list[Target]], owners: dict[str, int]) -> None:
        """As Postfix's local(8): the file is opened with the rights of where it is named (the
        owner of a user's alias file, the user of a ~/.forward; root for a root-owned alias
        file), so nobody reads through it what they could not read themselves. It may be a
        symlink, not a special or a world-writable file. Named in a root-owned alias file, its
        own owner's rights apply to what it includes; named by a user, the user's stay."""
        key = f":include:{path}"
        if key in chain:
            return  # an include file including itself adds nothing new
        if not path.startswith("/"):
            raise Refused(550, out.address, f"5.3.5 :include: {path!r} ({ctx.origin}) is not an"
                          " absolute path")
        if sum(1 for name in chain if name.startswith(":include:")) >= MAX_INCLUDE_DEPTH:
            raise Refused(554, out.address, f"5.4.6 :include: {path} ({ctx.origin}): :include:"
                          f" files nested deeper than {MAX_INCLUDE_DEPTH}")
        try:
            mode, owner, text = self.include_reader(path, ctx.privs, ctx.via)
        except OSError as e:
            code, dsn = (550, "5.3.5") if e.errno == errno.EACCES else (451, "4.3.0")
            who = f" as {ctx.privs.user}" if ctx.privs is not None else ""
            raise Refused(code, out.address, f"{dsn} cannot open :include: file {path}{who}"
                          f" ({ctx.origin}): {e.strerror}") from e
        if not stat.S_ISREG(mode):
            raise Refused(550, out.address, f"5.3.5 :include: {path} is not a regular file")
        if mode & stat.S_IWOTH:
            raise Refused(550, out.address, f"5.3.5 :include: {path} is world writable")
        privs: Privileges | None = ctx.privs
        if privs is not None:
            via: tuple[str, ...] = (*ctx.via, path)
        else:  # named with root's rights: its owner's apply inside (none for root's own)
            privs, via = self._owner_privs(owner), (path,)
        inner = _Context(privs, path, False, ctx.sender, via)
        for item in parse_list(text, path):
            self._target(item.text, (*chain, key), inner, out, table, owners)

    # -- ~/.forward ----------------------------------------------------------------------

    def read_forward(self, account: Account) -> list[Target]:
        """The targets of ``~/.forward``, or [] (no file, empty, or ignored as unsafe)."""
        return self.forward_reader(account)

    # -- privileges ----------------------------------------------------------------------

    def _default_privs(self) -> Privileges:
        account = self.accounts.recipient(self.default_privs)
        if account is not None:
            return self._account_privs(account)
        try:
            pw = pwd.getpwnam(self.default_privs)
            return Privileges(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell)
        except KeyError:
            return Privileges(self.default_privs, 65534, 65534, "/nonexistent")

    def _owner_privs(self, uid: int) -> Privileges | None:
        """The rights of a file's owner; None for root (a |command or /file then runs as
        default_privs, an :include: is opened as root)."""
        if uid == 0:
            return None
        try:
            pw = pwd.getpwuid(uid)
            return Privileges(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell)
        except KeyError:
            return Privileges(str(uid), uid, uid, "/")

    @staticmethod
    def _account_privs(account: Account) -> Privileges:
        return Privileges(account.name, account.uid, account.gid, account.home)


def default_privs_uid(name: str) -> int:
    """The uid of ``[mail] default_privs`` (65534 when no such user, as Expander's)."""
    try:
        return pwd.getpwnam(name or DEFAULT_PRIVS).pw_uid
    except KeyError:
        return 65534


# -- reading list files with their reader's rights -------------------------------------


def read_include_file(path: str, privs: Privileges | None,
                      via: tuple[str, ...] = ()) -> tuple[int, int, str]:
    """(st_mode, st_uid, text) of an :include: file opened with ``privs``' rights."""
    fd = open_as(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, privs)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        text = b"" if not stat.S_ISREG(st.st_mode) else f.read(LIST_FILE_LIMIT)
    return st.st_mode, st.st_uid, text.decode("utf-8", "surrogateescape")


def read_forward_file(account: Account) -> list[Target]:
    """The targets of ``~/.forward``, or [] (no file, empty, or ignored as unsafe).

    The file is opened as the store opens a mailbox: from the home
    directory (owned by the user or root) with O_NOFOLLOW, and what was opened is checked
    (``forward_problem``), so a file swapped in at any moment is never read through a link.
    """
    path = os.path.join(account.home, ".forward")
    try:
        with open_anchor(Place(account.home, (), account.uid, account.gid)) as home:
            fd = home.open_nofollow(".forward", os.O_RDONLY)
    except (FileNotFoundError, MissingAnchor):
        return []
    except UnsafePath as e:
        log.warn("{error}; delivering to the mailbox", error=str(e))
        return []
    except OSError as e:
        log.warn("{path}: cannot open: {error}; delivering to the mailbox",
                 path=path, error=e.strerror)
        return []
    with os.fdopen(fd, "rb") as f:
        problem = forward_problem(os.fstat(f.fileno()), account)
        if problem:
            log.warn("{path}: {problem}; ignored, delivering to the mailbox",
                     path=path, problem=problem)
            return []
        os.set_blocking(f.fileno(), True)
        text = f.read(LIST_FILE_LIMIT).decode("utf-8", "surrogateescape")
    return parse_list(text, path)


def forward_problem(st: os.stat_result, account: Account) -> str | None:
    """Why the opened ~/.forward ``st`` must be ignored, or None. As Postfix's local(8), it is
    read with the user's rights: a regular file of the user or of root, not group or world
    writable, that the user could read (mode bits, primary group, as Postfix's open_as);
    a root-owned one with more than one link may be a hard link to any file of root's."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid not in (account.uid, 0):
        return f"owned by uid {st.st_uid}, not by {account.name}"
    if st.st_mode & 0o022:
        return "group or world writable"
    if st.st_uid != account.uid and st.st_nlink != 1:
        return f"owned by root with {st.st_nlink} hard links"
    if not _readable_by(st, account.uid, account.gid):
        return f"not readable by {account.name}"
    return None


def _readable_by(st: os.stat_result, uid: int, gid: int) -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


# -- delivery to commands and files (blocking: run through a threads.Blocking) ----------



def envelope_copy(data: bytes, sender: str, original: str, final: str, when: float) -> bytes:
    """What a command reads on stdin: From_ line, Return-Path, X-Original-To, Delivered-To,
    then the message (LF line ends), as Postfix local(8) pipes it."""
    top = (f"Return-Path: <{sender}>\nX-Original-To: {original}\nDelivered-To: {final}\n")
    return make_from_line(sender, int(when)) + top.encode("utf-8", "replace") + data


def command_environment(privs: Privileges, sender: str, recipient: str,
                        original: str) -> dict[str, str]:
    """The environment local(8) gives a command."""
    local, _, domain = recipient.rpartition("@")
    if not _:
        local, domain = recipient, ""
    env = {k: os.environ[k] for k in EXPORTED if k in os.environ}
    env.update(
        PATH="/usr/bin:/bin", HOME=privs.home, LOGNAME=privs.user, USER=privs.user,
        SHELL=privs.shell, SENDER=sender, RECIPIENT=recipient, LOCAL=local, DOMAIN=domain,
        EXTENSION="", ORIGINAL_RECIPIENT=original,
    )
    return env


def _short(output: bytes) -> str:
    text = " ".join(output.decode("utf-8", "replace").split())
    return text[:200]


def deliver_program(program: Program, message: bytes, env: dict[str, str],
                    time_limit: float = COMMAND_TIME_LIMIT) -> str:
    """Run the command with the message on stdin. Returns Postfix's status text; raises
    TargetFailed: exit 75 (EX_TEMPFAIL), a signal or the time limit defer, other codes bounce."""
    cwd = program.privs.home if os.path.isdir(program.privs.home) else "/"
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", program.command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, cwd=cwd, close_fds=True,
            start_new_session=True, **as_user(program.privs),
        )
    except OSError as e:
        raise TargetFailed(False, "4.3.0", f"cannot run command: {e.strerror}") from e
    try:
        output, _ = proc.communicate(message, timeout=time_limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise TargetFailed(
            False, "4.3.0", f"Command time limit exceeded: {program.command!r}") from None
    code = proc.returncode
    if code == 0:
        return f"delivered to command: {program.command}"
    said = f". Command output: {_short(output)}" if output.strip() else ""
    if code < 0:
        raise TargetFailed(False, "4.3.0", f"Command died with signal {-code}:"
                           f" {program.command!r}{said}")
    if code == EX_TEMPFAIL:
        raise TargetFailed(False, "4.3.0", f"temporary failure{said}")
    raise TargetFailed(True, "5.3.0", f"Command died with status {code}:"
                       f" {program.command!r}{said}")


#: How long a /file delivery may take (locks included) before its child is killed.
FILE_TIME_LIMIT = 120.0



def mbox_entry(data: bytes, sender: str, original: str, final: str, when: float) -> bytes:
    """The message as appended to a /file target: From_ line, envelope headers, >From quoting,
    a blank line after it (Postfix local(8) file delivery)."""
    top = (f"Return-Path: <{sender}>\nX-Original-To: {original}\nDelivered-To: {final}\n")
    return (
        make_from_line(sender, int(when)) + to_stored(top.encode("utf-8", "replace") + data) + b"\n"
    )


def deliver_file(target: File, entry: bytes, time_limit: float = FILE_TIME_LIMIT) -> str:
    """Append ``entry`` (see mbox_entry) as the target's privileges, in a forked child that
    never execs. Blocking (call it from a thread): the reactor is not held. Raises
    TargetFailed."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(read_end)
        os.close(write_end)
        raise TargetFailed(False, "4.3.0", f"cannot append to {target.path}: {e.strerror}") from e
    if pid == 0:
        append_child(target.privs, target.path, entry, write_end)
    os.close(write_end)
    said, timed_out = _read_report(read_end, time_limit)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if timed_out:
        raise TargetFailed(False, "4.2.0", f"cannot append message to file {target.path}:"
                           " time limit exceeded")
    if code == 0:
        return f"delivered to file: {target.path}"
    permanent = code == EX_CANTCREAT
    raise TargetFailed(permanent, "5.2.0" if permanent else "4.2.0",
                       f"{said or f'status {code}'} ({target.path}, as {target.privs.user})")


def _read_report(fd: int, time_limit: float) -> tuple[str, bool]:
    """What the child wrote until it closed the pipe (by exiting); True when it took longer
    than ``time_limit``."""
    deadline = time.monotonic() + time_limit
    chunks: list[bytes] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return _short(b"".join(chunks)), True
            chunk = os.read(fd, 4096)
            if not chunk:
                return _short(b"".join(chunks)), False
            chunks.append(chunk)
    finally:
        os.close(fd)


def deliver_special(dest: Program | File, data: bytes, sender: str, original: str,
                    final: str, now: float | None = None) -> str:
    """Deliver one copy to a command or a file (blocking). Returns the status text."""
    when = time.time() if now is None else now
    if dest.sender and sender:  # owner-NAME; a null sender stays null (no bounce loops)
        sender = dest.sender
    if isinstance(dest, Program):
        env = command_environment(dest.privs, sender, final, original)
        return deliver_program(dest, envelope_copy(data, sender, original, final, when), env)
    return deliver_file(dest, mbox_entry(data, sender, original, final, when))


__all__ = [
    "AliasLookupError", "Destination", "Expander", "File", "Program", "Refused",
    "Remote", "TargetFailed", "deliver_special",
]
