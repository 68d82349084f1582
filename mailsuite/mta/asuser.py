"""Acting with another user's rights from the threaded server: in a forked child that blocks
every signal and drops every group and id (Postfix's open_as and local(8) file delivery).

``open_as`` opens a file as a user and hands the descriptor back; ``append_child`` is the body
of the child that appends one mbox entry as a user, without exec (so the target user needs no
access to the server's Python); ``as_user`` gives subprocess the same identity for a command.
These children call nothing that takes a Python lock (one another thread held at the fork would
never be released in them).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import time
from dataclasses import dataclass
from typing import Any

from mailsuite.fsutil import write_all
from mailsuite.store.locking import try_fcntl_lock

#: sysexits(3) EX_TEMPFAIL: the command asks to be tried again later.
EX_TEMPFAIL = 75
EX_CANTCREAT = 73
#: How long opening an :include: file as its reader may take (a hung NFS server).
OPEN_TIME_LIMIT = 30.0
#: A dotlock older than this is stale (Postfix: stale_lock_time = 500s; ours 300s).
STALE_DOTLOCK = 300.0
_TRANSIENT = (errno.EAGAIN, errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EINTR)


@dataclass(frozen=True)
class Privileges:
    """Whom a command or file delivery runs as."""

    user: str
    uid: int
    gid: int
    home: str
    shell: str = "/bin/sh"


def _become(privs: Privileges) -> None:
    """In a forked child: signals blocked (no handler of the server may run here), every
    group and id of the server dropped for ``privs`` (only the primary group, as Postfix)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, signal.valid_signals())
    if os.geteuid() == 0:
        os.setgroups([privs.gid])
        os.setgid(privs.gid)
        os.setuid(privs.uid)


def open_as(path: str, flags: int, privs: Privileges | None,
            time_limit: float = OPEN_TIME_LIMIT) -> int:
    """``path`` opened with the rights of ``privs`` (Postfix's open_as): by a forked child
    that drops to them, opens, and hands the descriptor back. ``None`` (or a root ``privs``,
    or a server that is not root) opens it here. Blocking. Raises OSError as open(2) does."""
    if privs is None or privs.uid == 0 or os.geteuid() != 0:
        return os.open(path, flags)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = os.fork()
        if pid == 0:
            _open_child(path, flags, privs, theirs)
        theirs.close()
        ours.settimeout(time_limit)
        try:
            said, fds, _, _ = socket.recv_fds(ours, 16, 1, socket.MSG_CMSG_CLOEXEC)
        except OSError as e:  # the time limit (errno None), or the socket failed
            os.kill(pid, signal.SIGKILL)
            said, fds = b"%d" % (e.errno or errno.ETIMEDOUT), []
        os.waitpid(pid, 0)
    finally:
        ours.close()
        theirs.close()
    if fds:
        return fds[0]
    code = int(said) if said.isdigit() else errno.EIO
    raise OSError(code, os.strerror(code), path)


def _open_child(path: str, flags: int, privs: Privileges, sock: socket.socket) -> None:
    """In the forked child of open_as: the descriptor, or the errno as digits, to ``sock``.
    Never returns."""
    try:
        _become(privs)
        try:
            fd = os.open(path, flags)
        except OSError as e:
            sock.sendall(b"%d" % (e.errno or errno.EIO))
        else:
            socket.send_fds(sock, [b"fd"], [fd])
    except BaseException:  # the parent sees no descriptor: EIO
        pass
    finally:
        os._exit(0)




def as_user(privs: Privileges) -> dict[str, Any]:
    """subprocess arguments that run the child as ``privs`` (only possible when we are root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": privs.uid, "group": privs.gid, "extra_groups": []}



def _append(path: str, entry: bytes) -> tuple[int, str]:
    """Append ``entry`` to the mbox ``path`` with this process's privileges: O_NOFOLLOW, a
    regular file with one link, a dotlock where the directory allows one, the store's fcntl
    lock, fsync. Returns (exit code: 0, EX_TEMPFAIL or EX_CANTCREAT; reason).

    This runs in a child forked from the threaded server, so it calls nothing that takes a
    Python lock (one another thread held at the fork would never be released here): the
    dotlock is made here, empty as Postfix's local(8) makes it, not with the store's
    ``try_dotlock``, which records the dotlocks it holds under a thread lock."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK, 0o600)  # a FIFO without reader: ENXIO, not a hang
    except OSError as e:
        return (EX_TEMPFAIL if e.errno in _TRANSIENT else EX_CANTCREAT,
                f"cannot open file: {e.strerror}")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        return EX_CANTCREAT, "cannot append: not a regular file with one link"
    lock, dot = path + ".lock", False
    for _ in range(300):
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            dot = True
            break
        except FileExistsError:
            try:
                if time.time() - os.stat(lock).st_mtime > STALE_DOTLOCK:
                    os.unlink(lock)
            except OSError:
                pass
            time.sleep(0.1)
        except OSError:
            break  # no dotlock where the directory is not writable (Postfix: "may fail")
    else:
        return EX_TEMPFAIL, "file is locked (dotlock)"
    try:
        for _ in range(300):
            try:
                if try_fcntl_lock(fd):  # the store's (an open-file-description lock)
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            return EX_TEMPFAIL, "file is locked (fcntl)"
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            write_all(fd, entry)  # a short write is continued, never reported as delivered
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, end)
            return EX_TEMPFAIL, f"cannot append message to file: {e.strerror}"
    finally:
        if dot:
            os.unlink(lock)
    return 0, ""


def append_child(privs: Privileges, path: str, entry: bytes, report: int) -> None:
    """In the forked child: signals blocked (no handler of the server may run here), every
    group and id of the server dropped, the file appended without exec (so the target user
    needs no access to our interpreter); the reason goes to ``report``. Never returns."""
    code = EX_TEMPFAIL
    try:
        _become(privs)
        code, reason = _append(path, entry)
        os.write(report, reason.encode("utf-8", "replace")[:500])
    except BaseException:  # any failure is a temporary one; nothing to log to
        pass
    finally:
        os._exit(code)



__all__ = [
    "EX_CANTCREAT", "EX_TEMPFAIL", "OPEN_TIME_LIMIT", "Privileges", "append_child", "as_user",
    "open_as",
]
