"""The spawner: a clean process (exec'd by the master before it reads a key or a password)
that imports the agent's modules once and forks every unprivileged process from that image,
so that they share its pages (an agent costs a few hundred KB, not a fresh interpreter) and
need not read the server's Python. The network process, of which there is one, imports its
own modules (the doors, the queue and the filters: ``netproc.SERVER_MODULES``) after the fork,
while it is still root: they are in no agent's memory.

It stays root (it must give each child its rights) but reads nothing but the master's
requests on one SOCK_SEQPACKET socket: a pickled ``Spawn`` and the descriptors the child
keeps. The child drops every group and id for the request's, closes every other
descriptor, and runs the role's ``main`` on a fresh reactor. The zygote exits when the master
goes (end of file on its socket, or PR_SET_PDEATHSIG). It runs in a session of its own, and
its children's standard output and error are a pipe the master reads and logs (master's
terminal, under ``twistd -n``, is in no child's reach).
"""

from __future__ import annotations

import array
import contextlib
import gc
import importlib
import os
import pickle
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import setproctitle

#: the module whose ``main(spawn, fds)`` each role runs
ROLES = {"net": "mailsuite.privsep.netproc", "agent": "mailsuite.privsep.agent"}

#: the roles whose modules the zygote imports before its first fork (agents, forked by the
#: hundred, share those pages); a child of another role imports its module before it drops
#: root (it may not be able to read the server's Python after): the network process's doors,
#: queue and filters were 13 MB of every agent's RSS (53 MB, not 66)
PRELOADED = ("agent",)


#: the write end of the master's lifeline pipe (see start), set in the zygote
LIFELINE = [-1]

#: descriptors one request may carry (the network process's: its listeners and a few more)
MAX_FDS = 250


@dataclass
class Spawn:
    """One child: ``role`` (``net`` or ``agent``), the rights it runs with (``groups`` its
    supplementary groups), and the role's ``params``; ``fds`` names the descriptors that come
    with the request, in order (``channel`` first)."""

    role: str
    uid: int
    gid: int
    groups: list[int]
    params: dict[str, Any] = field(default_factory=dict)
    fds: list[str] = field(default_factory=list)
    #: what ``ps`` shows after ``mailsuite: `` (``network``, ``agent boss``, ``privs nobody``)
    title: str = ""


def become(uid: int, gid: int, groups: list[int]) -> None:
    """Drop every id and group for these, for good (real, effective and saved)."""
    if os.getuid() == 0 or os.geteuid() == 0:
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    if uid != 0 and (os.geteuid() == 0 or os.getegid() != gid):
        raise OSError("could not drop privileges")


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """PR_SET_PDEATHSIG: ``sig`` when the parent (master, or zygote: pid ``parent``) is gone,
    even by kill -9, so that no child outlives the master holding its listening sockets."""
    import ctypes
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)
    if os.getppid() != parent:  # the parent went before the setting took
        os.kill(os.getpid(), sig)


def close_others(keep: set[int]) -> None:
    """Close every descriptor but 0, 1, 2 and ``keep``."""
    low = 3
    for fd in sorted(keep | {2**20}):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1


def _child(spawn: Spawn, fds: list[int], parent: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    close_others(set(fds) | {LIFELINE[0]})  # the lifeline stays: held until we exit
    named = dict(zip(spawn.fds, fds, strict=False))
    for fd in fds:
        os.set_inheritable(fd, False)
    try:
        # a role is named, as twistd names a plugin: the zygote knows no role's code
        role = importlib.import_module(ROLES[spawn.role])  # still root: reads any module
        become(spawn.uid, spawn.gid, spawn.groups)
        die_with_parent(parent)  # after become: a change of ids clears the setting
        set_title(spawn.title or spawn.role)
        role.main(spawn, named)
    except BaseException as e:  # the child never returns into the zygote's loop
        import traceback
        print(f"mailsuite {spawn.role} (uid {spawn.uid}): {e!r}", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def set_title(title: str) -> None:
    """``mailsuite: TITLE`` in ps and /proc/PID/cmdline, as Postfix and Dovecot name theirs."""
    setproctitle.setproctitle(f"mailsuite: {title}")


def _receive(sock: socket.socket) -> tuple[Spawn, list[int]] | None:
    fds = array.array("i")
    msg, anc, flags, _ = sock.recvmsg(1 << 20, socket.CMSG_LEN(MAX_FDS * fds.itemsize))
    if not msg:
        return None
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        raise SystemExit("zygote: a request was cut short")
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return pickle.loads(msg), list(fds)  # only the master writes to this socket


def serve(sock: socket.socket) -> None:
    """The zygote's loop: one fork per request, until the master's end closes."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in PRELOADED:
        importlib.import_module(ROLES[name])
    # (inherited by every child: glibc's setting is memory); imported here: this module
    # imports nothing slow (heap: Twisted) before ``__main__`` has set die_with_parent
    from mailsuite import heap
    heap.fixed_mmap_threshold()
    gc.collect()
    gc.freeze()  # what is here stays shared: the collector never writes to these pages
    children: set[int] = set()
    while True:
        try:
            got = _receive(sock)
        except InterruptedError:
            continue
        if got is None:
            _end_children(children)
            return
        spawn, fds = got
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(spawn, fds, me)
        children.add(pid)
        for fd in fds:
            os.close(fd)
        _answer(sock, pid)
        children = {c for c in children if _alive(c)}


def _answer(sock: socket.socket, pid: int) -> None:
    """The child's pid and a pidfd of it to the master (which kills a hung child with it,
    never another process that took its pid); none when it is gone already."""
    try:
        pidfd = [os.pidfd_open(pid)]
    except OSError:
        pidfd = []
    try:
        sock.sendmsg([pid.to_bytes(4, "little")],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", pidfd))])
    except OSError:
        pass  # the master is gone: the next _receive ends the loop
    finally:
        for fd in pidfd:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _end_children(children: set[int], timeout: float = 10.0) -> None:
    """The master is gone or stopping: SIGTERM to every child (each stops as Twisted stops),
    then wait until they have exited (reaped by the kernel: SIGCHLD is ignored), bounded."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.01)


@dataclass
class Started:
    """A zygote: its pid, the master's end of its socket, the read end of its lifeline (a
    pipe whose write end the zygote and every child hold, so that its end of file tells that
    all of them are gone: the master waits for it when it stops) and of its output (the
    standard output and error of the zygote and its children, which the master logs)."""

    pid: int
    sock: socket.socket
    lifeline: int
    output: int


def start(python: str = sys.executable) -> Started:
    """Exec a zygote in a session of its own (no controlling terminal: no child can reach the
    master's, e.g. for TIOCSTI), /dev/null its standard input, a pipe its output."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    life_r, life_w = os.pipe()
    out_r, out_w = os.pipe()
    env = dict(os.environ)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            for fd, there in ((null, 0), (out_w, 1), (out_w, 2)):
                os.dup2(fd, there)
            close_others({theirs.fileno(), life_w})
            os.set_inheritable(theirs.fileno(), True)
            os.set_inheritable(life_w, True)
            os.chdir("/")  # -P: nor the directory the server was started from on sys.path
            os.execve(python, [python, "-P", "-m", "mailsuite.privsep.zygote",
                               str(theirs.fileno()), str(os.getppid()), str(life_w)], env)
        finally:
            os._exit(127)
    theirs.close()
    os.close(life_w)
    os.close(out_w)
    return Started(pid, ours, life_r, out_r)


def wait_gone(lifelines: list[int], timeout: float) -> bool:
    """Blocking: until every lifeline reads end of file (its processes are gone), at most
    ``timeout`` seconds; closes them. True when all are gone."""
    import select
    deadline = time.monotonic() + timeout
    left = list(lifelines)
    while left and time.monotonic() < deadline:
        ready, _, _ = select.select(left, [], [], max(0.0, deadline - time.monotonic()))
        for fd in ready:
            if not os.read(fd, 64):
                left.remove(fd)
                os.close(fd)
    for fd in left:
        os.close(fd)
    return not left


def reap(pid: int, timeout: float) -> None:
    """Blocking: wait (bounded) for the zygote, our child, to exit, so it leaves no zombie."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.01)


#: how long the zygote may take to answer (a new one imports the server first: seconds)
ANSWER_TIMEOUT = 60.0


def send(sock: socket.socket, spawn: Spawn, fds: list[int]) -> int:
    """Ask the zygote for a child (the caller closes its copies of ``fds`` afterwards);
    returns a pidfd of it (-1: it is gone already). Blocking, as long as a fork takes."""
    import select
    data = pickle.dumps(spawn)
    if len(fds) > MAX_FDS or len(data) >= 1 << 20:
        raise OSError(f"a spawn request of {len(fds)} descriptors and {len(data)} bytes")
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    if not select.select([sock], [], [], ANSWER_TIMEOUT)[0]:
        raise OSError("the zygote did not answer")
    got = array.array("i")
    msg, anc, _, _ = sock.recvmsg(16, socket.CMSG_LEN(got.itemsize))
    if not msg:
        raise BrokenPipeError("the zygote is gone")
    for level, kind, fd_data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got.frombytes(fd_data[: len(fd_data) - (len(fd_data) % got.itemsize)])
    return got[0] if got else -1


if __name__ == "__main__":
    set_title("zygote")
    _sock = socket.socket(fileno=int(sys.argv[1]))
    die_with_parent(int(sys.argv[2]))
    LIFELINE[0] = int(sys.argv[3])
    os.set_inheritable(LIFELINE[0], False)
    serve(_sock)
