"""Start-up failures of ``twistd mailsuite``: one line each, naming what failed and where.

Everything that can refuse a start (the configuration, TLS files, the maillog, the queue
directory, another instance, the listening sockets) is done in ``Options.postOptions`` and
``makeService``, before twistd starts logging or daemonizing: a failure then prints
``mailsuite: WHAT: WHY`` on stderr, never a traceback or twistd's usage text, and the process
exits non-zero (78, sysexits' EX_CONFIG, for a refused configuration; 1 for the others).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from twisted.internet.error import CannotListenError

EX_FAILURE = 1
EX_CONFIG = 78


class StartupError(Exception):
    """A start-up failure; ``str()`` is one line for the user."""


def fatal(lines: list[str], code: int) -> NoReturn:
    """Print each line as ``mailsuite: LINE`` on stderr and end the process with ``code``."""
    for line in lines:
        print(f"mailsuite: {line}", file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(code)


@contextmanager
def step(what: str) -> Iterator[None]:
    """An OSError inside becomes a StartupError ``WHAT: FILE: REASON``."""
    try:
        yield
    except OSError as e:
        raise StartupError(f"{what}: {describe_os_error(e)}") from None


def describe_os_error(e: OSError) -> str:
    reason = e.strerror or str(e)
    return f"{e.filename}: {reason}" if e.filename else reason


def check_twistd_files(twistd_options: Any) -> None:
    """twistd's --pidfile and --logfile are written after makeService, where a failure is a
    traceback: try them here (a pidfile made by the try is removed, twistd writes it)."""
    if twistd_options is None:
        return
    for option in ("pidfile", "logfile"):
        path = twistd_options.get(option)
        if not path or path == "-":
            continue
        existed = os.path.exists(path)
        with step(f"twistd --{option}"):
            open(path, "ab").close()
            if not existed and option == "pidfile":
                os.unlink(path)


# -- listening sockets -------------------------------------------------------------------------

#: Who else may hold a service's port, for the hint after "address in use".
_USUAL_HOLDERS = {
    "smtp": "Postfix or exim", "submission": "Postfix or exim", "smtps": "Postfix or exim",
    "pop3": "Dovecot", "pop3s": "Dovecot", "imap": "Dovecot", "imaps": "Dovecot",
    "lmtp": "Dovecot's LMTP", "autoconfig": "a web server", "autoconfigs": "a web server",
}


def listen_failure(service_name: str, error: CannotListenError) -> str:
    """``cannot listen on [::]:25 (smtp): address in use (is Postfix or exim running?)``."""
    service = service_name.partition("@")[0]
    if error.interface is None:  # a unix socket: the path is in .port
        path = os.fsdecode(error.port)
        where = f"unix socket {path}"
    else:
        address = error.interface or "0.0.0.0"
        where = f"[{address}]:{error.port}" if ":" in address else f"{address}:{error.port}"
    return f"cannot listen on {where} ({service}): {_listen_reason(service, error)}"


def _listen_reason(service: str, error: CannotListenError) -> str:
    cause = error.socketError
    if not isinstance(cause, OSError):
        return str(cause)
    port = error.port if isinstance(error.port, int) else None
    if cause.errno == errno.EADDRINUSE:
        holder = _USUAL_HOLDERS.get(service, "another server")
        return f"address in use (is {holder} running?)"
    if cause.errno in (errno.EACCES, errno.EPERM):
        if port is not None and 0 < port < 1024:
            return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        return "permission denied"
    if cause.errno == errno.EADDRNOTAVAIL:
        return "address not available (no interface of this host has it: see [mail]" \
               " inet_interfaces)"
    return describe_os_error(cause)


def remove_stale_socket(path: str, service: str) -> None:
    """Before binding a unix socket: a socket file nobody answers on (left by a crash or a
    kill -9) is removed; one that answers belongs to a running program: StartupError."""
    where = f"cannot listen on unix socket {path} ({service})"
    with step(where):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise StartupError(f"{where}: the file exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)
                return
    raise StartupError(f"{where}: in use by another running program")


# -- one instance per queue directory ----------------------------------------------------------


class InstanceLock:
    """``queue_directory/pid/master.pid`` (Postfix's file), flock()ed for the life of the
    process: a second mailsuite on the same queue refuses to start before it touches anything.
    An flock survives twistd's daemonizing fork (the child holds the same open file)."""

    def __init__(self, queue_directory: str) -> None:
        self.path = os.path.join(queue_directory, "pid", "master.pid")
        self.fd: int | None = None

    def acquire(self) -> None:
        with step("[mail] queue_directory"):
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StartupError(f"cannot lock {self.path}: {describe_os_error(e)}") from None
            running = f" (pid {holder})" if holder.isdigit() else ""
            queue_directory = os.path.dirname(os.path.dirname(self.path))
            raise StartupError(f"the mail system is already running{running} on the queue"
                               f" directory {queue_directory} ({self.path} is locked)") from None
        self.fd = fd
        self.write_pid()

    def write_pid(self) -> None:
        """Record this process (again after twistd's fork, when the pid changed)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def mail_owner(cfg: Any) -> tuple[int, int]:
    """(uid, gid) of ``[mail] mail_owner``; a StartupError as Postfix words it when the user
    is missing or is root."""
    import pwd
    name = cfg.mail.mail_owner
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise StartupError(f"{cfg.path}: [mail] mail_owner: unknown user name value: {name}"
                           " (setup-debian.sh install makes it)") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise StartupError(f"{cfg.path}: [mail] mail_owner: {name} has root privileges")
    return entry.pw_uid, entry.pw_gid


def check_default_privs(cfg: Any) -> None:
    """``[mail] default_privs`` names a user that is not root (Postfix's fatal errors)."""
    import pwd
    name = cfg.mail.default_privs
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise StartupError(f"{cfg.path}: [mail] default_privs: unknown user name value:"
                           f" {name!r}") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0 or name == cfg.mail.mail_owner:
        raise StartupError(f"{cfg.path}: [mail] default_privs: {name} has privileges (root"
                           " or mail_owner)")


#: what mail_owner writes in the queue directory (tmp, active, corrupt: the queue files;
#: maildrop: sendmail's files, mode 1733). public/ (the control socket) stays root's: root
#: binds the socket there, and Twisted's chmod of it follows a link mail_owner could plant
QUEUE_SUBDIRS = {"tmp": 0o700, "active": 0o700, "hold": 0o700, "corrupt": 0o700,
                 "maildrop": 0o1733,
                 "mta-sts": 0o700, "tlsrpt": 0o700}  # MTA-STS policy cache, TLS-RPT counts


def give_queue(queue_directory: str, owner: tuple[int, int]) -> None:
    """Postfix's set-permissions: the queue directory itself is root's (mode 0755), so that
    mail_owner cannot swap what is in it (pid/, master.pid and public/ stay root's); its working
    directories and what is in them are mail_owner's (maildrop/'s files stay their writers').
    Walked through directory descriptors, never following a symbolic link."""
    uid, gid = owner
    os.chown(queue_directory, 0, 0, follow_symlinks=False)
    os.chmod(queue_directory, 0o755, follow_symlinks=False)
    top = os.open(queue_directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name in ("pid", "public"):  # root's (a mail_owner of an older start had them)
            with contextlib.suppress(FileNotFoundError):
                os.chown(name, 0, 0, dir_fd=top, follow_symlinks=False)
        for name, mode in QUEUE_SUBDIRS.items():
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=top)
            os.chown(name, uid, gid, dir_fd=top, follow_symlinks=False)
            os.chmod(name, mode, dir_fd=top, follow_symlinks=False)
            if name == "maildrop":
                continue
            for _, dirs, files, fd in os.fwalk(name, dir_fd=top, follow_symlinks=False):
                for entry in dirs + files:
                    os.chown(entry, uid, gid, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(top)


def unreadable_by(paths: list[str], uid: int, gid: int) -> dict[str, str]:
    """``{path: why}`` for the files a process of ``uid``/``gid`` (the network process's
    rights) cannot open (asked in a child that takes those rights)."""
    if not paths or os.geteuid() != 0:
        return {}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.close(r)
            os.setgroups([gid])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            for path in paths:
                try:
                    os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
                except OSError as e:
                    os.write(w, f"{path}\0{e.strerror}\n".encode("utf-8", "surrogateescape"))
        finally:
            os._exit(0)
    os.close(w)
    with open(r, "rb") as f:
        answer = f.read().decode("utf-8", "surrogateescape")
    os.waitpid(pid, 0)
    return dict(line.split("\0", 1) for line in answer.splitlines() if "\0" in line)


def stop_on_early_sigterm(reactor: Any) -> None:
    """A SIGTERM before the reactor runs (twistd installs its handlers then) stops the server
    as one after it does, once it has started: the processes a privileged master starts
    are ended in order. The default action killed the master at once, and the listening
    sockets it had sent to the zygote stayed in flight for seconds: a server started just
    after found its ports in use."""
    if reactor.running:
        return

    def on_term(signum: int, frame: Any) -> None:
        reactor.callFromThread(reactor.stop)

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, on_term)
