"""Start the real service (``python -m twisted mailsuite``) on loopback for integration tests.

A ``Site`` is a temp directory holding everything one server needs: passwd and shadow files,
home directories, a spool for INBOXes, an aliases file, the maillog and mail.ini with free ports
on 127.0.0.1. ``site.start()`` runs twistd in a subprocess and waits until every port answers;
``site.stop()`` ends it (SIGTERM, then SIGKILL) and is registered as a cleanup.

twistd runs in a session (and process group) of its own, so that ``site.kill9()`` kills every
process of the server at once, helpers it forked included, as a crash or power cut would end
them, and returns only when none is left.
"""

from __future__ import annotations

import contextlib
import grp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Made with `openssl passwd -6 -salt integration secret` and `... -salt carolsalt hunter2`.
USERS = {
    "boss": ("secret", "$6$integration$KTYGW6YkAKEMydmj3vjf8vVSZGUwHtkliosY8RrXepPmSAwzRS6CFVj/"
                       "1TrbQilE5D7VJBcdSeZ2hNCX8muCr0"),
    "carol": ("hunter2", "$6$carolsalt$4dT9RzezhJWk0wVCzqUj2SNwvTrut39/L/xBM9cMrqgnx0ZWw6."
                         "pFRY5Ou1j9HFQTHc3PqFbXoEU8mctHHEiW."),
}
SERVICES = ("smtp", "pop3", "imap")
#: The extra listeners of a TLS site (``Site(..., tls=True)``).
TLS_SERVICES = ("submission", "smtps", "pop3s", "imaps")
START_TIMEOUT = 30.0


def _privsep_user() -> str:
    """mail_owner for the servers the tests start: the set-up command's user when it exists
    and we are root (then every test runs the privilege-separated server); else none."""
    import pwd
    name = os.environ.get("MAILSUITE_TEST_MAIL_OWNER", "mailsuite")
    if not name or os.geteuid() != 0:
        return ""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return ""
    return name


PRIVSEP = _privsep_user()

#: twistd from this Python, finding the plugin in the checkout through PYTHONPATH.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


_given: set[int] = set()


def free_port() -> int:
    """A port nobody listens on, below the kernel's ephemeral range (a port the kernel picked
    for ``bind(0)`` may meanwhile become some client's source port: twistd then fails to bind),
    picked at random so parallel trial workers rarely try the same one."""
    low, high = 20000, 32767
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            high = min(high, int(f.read().split()[0]) - 1)
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randint(low, high)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise AssertionError(f"no free port in {low}-{high}")


def wait_group(group: int, timeout: float = 10.0) -> None:
    """Wait (bounded) until the processes of a stopped server's group are gone; then kill."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    kill_group(group)


def kill_group(group: int) -> None:
    """SIGKILL every process left in a process group (a privilege-separated server's children)
    and wait, bounded, until none is left."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process group {group} outlived SIGKILL")


class Site:
    def __init__(self, testcase, aliases: str = "postmaster: boss\nteam: boss, carol\n",
                 tls: bool = False, ssl: str = "yes", disable_plaintext_auth: bool = False,
                 mail_extra: str = "", mailbox_options: str = "",
                 imap_options: str = "") -> None:
        """``tls``: ssl = ``ssl`` with a self-signed certificate made by the first start at
        ``self.cert``/``self.key``, and the submission, smtps, pop3s and imaps ports too.
        ``mail_extra``: more ``[mail]`` lines (they win over the defaults, see mail_defaults:
        loopback clients are outside mynetworks unless a test says ``mynetworks = ...``)."""
        # extra lines for [mailbox] (e.g. Outlook's folder names) and [imap]
        self.mailbox_options = mailbox_options
        self.imap_options = imap_options
        # more directories for the server's PYTHONPATH (a test's sitecustomize, say)
        self.python_path: list[str] = []
        # short, so unix sockets under it (queue_directory/public/control) fit in sun_path
        self.dir = tempfile.mkdtemp(prefix="ms-", dir="/tmp")
        if not os.environ.get("MAILSUITE_TEST_KEEP"):  # set: keep the site to look at it
            testcase.addCleanup(shutil.rmtree, self.dir, True)
        self.spool = os.path.join(self.dir, "spool")
        os.makedirs(self.spool)
        # as on Debian: /etc and homes are searchable, /var/mail is root:mail 2775 (the
        # processes of a privilege-separated server run as mail_owner and as each user)
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            os.chown(self.spool, 0, grp.getgrnam("mail").gr_gid)
        os.chmod(self.spool, 0o2775)
        self.tls, self.ssl = tls, ssl
        self.disable_plaintext_auth = disable_plaintext_auth
        self.mail_extra = mail_extra  # more [mail] lines, e.g. "mynetworks = 127.0.0.0/8"
        self.ports = {name: free_port() for name in SERVICES + (TLS_SERVICES if tls else ())}
        self.cert = os.path.join(self.dir, "tls", "cert.pem")
        self.key = os.path.join(self.dir, "tls", "key.pem")
        self.maillog = os.path.join(self.dir, "maillog")
        self.process: subprocess.Popen | None = None
        self.uids = {}
        passwd, shadow = [], []
        for i, (user, (_, hashed)) in enumerate(sorted(USERS.items())):
            uid = 2000 + i
            home = os.path.join(self.dir, "home", user)
            os.makedirs(home)
            if os.geteuid() == 0:
                os.chown(home, uid, uid)
            self.uids[user] = uid
            passwd.append(f"{user}:x:{uid}:{uid}:{user.title()}:{home}:/bin/sh")
            shadow.append(f"{user}:{hashed}:20000:0:99999:7:::")
        passwd.insert(0, "root:x:0:0:root:/root:/bin/bash")
        shadow.insert(0, f"root:{USERS['boss'][1]}:20000:0:99999:7:::")
        self._write("passwd", "\n".join(passwd) + "\n")
        self._write("shadow", "\n".join(shadow) + "\n")
        self._write("aliases", aliases)
        self.config = self._write("mail.ini", self.ini())
        testcase.addCleanup(self.stop)

    def _write(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def home(self, user: str) -> str:
        return os.path.join(self.dir, "home", user)

    def inbox(self, user: str) -> str:
        return os.path.join(self.spool, user)

    def ini(self) -> str:
        d = self.dir
        return f"""\
[mail]
myhostname = mail.example.test
mydomain = example.test
mydestination = $myhostname, example.test, localhost
inet_interfaces = 127.0.0.1
alias_maps = {d}/aliases
queue_directory = {d}/queue
maillog_file = {self.maillog}
{self.mail_defaults()}

[listen]
smtp = {self.ports['smtp']}
submission = {self.ports.get('submission', 'no')}
smtps = {self.ports.get('smtps', 'no')}
pop3 = {self.ports['pop3']}
pop3s = {self.ports.get('pop3s', 'no')}
imap = {self.ports['imap']}
imaps = {self.ports.get('imaps', 'no')}

[auth]
passwd_file = {d}/passwd
shadow_file = {d}/shadow
first_valid_uid = 1000
disable_plaintext_auth = {'yes' if self.disable_plaintext_auth else 'no'}

[mailbox]
mail_location = mbox:~/mail:INBOX={self.spool}/%u
{self.mailbox_options}

[imap]
{self.imap_options}

[tls]
ssl = {self.ssl if self.tls else 'no'}
ssl_cert = {self.cert}
ssl_key = {self.key}
"""

    def mail_defaults(self) -> str:
        """Loopback clients are strangers (not in mynetworks) unless a test says otherwise."""
        given = {line.split("=")[0].strip() for line in self.mail_extra.splitlines() if "=" in line}
        lines = [] if "mynetworks" in given else ["mynetworks = 192.0.2.0/24"]
        if "mail_owner" not in given:
            lines.append(f"mail_owner = {PRIVSEP}")
        return "\n".join([*lines, self.mail_extra])

    def start(self) -> None:
        """Run the server and wait (bounded) until each port accepts connections."""
        env = dict(os.environ, PYTHONPATH=":".join([*self.python_path, ROOT]))
        # open for the life of the server process: closed by stop()
        self.output = open(os.path.join(self.dir, "twistd.out"), "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*TWISTD, "--nodaemon", "--pidfile=", "mailsuite",
             "--config", self.config],
            cwd=self.dir, env=env, stdout=self.output, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,  # kill9 ends the whole group
        )
        deadline = time.monotonic() + START_TIMEOUT
        pending = set(self.ports)
        while pending and time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"mailsuite exited {self.process.returncode}:\n{self.log()}")
            for name in list(pending):
                try:
                    with socket.create_connection(("127.0.0.1", self.ports[name]),
                                                  timeout=2) as probe:
                        # the greeting: the master's sockets accept before the network
                        # process that answers them runs (privilege separation)
                        if name in ("smtp", "pop3", "imap") and not probe.recv(1):
                            continue
                    pending.discard(name)
                except OSError:
                    pass
            time.sleep(0.05)
        if pending:
            raise AssertionError(f"{sorted(pending)} did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None:
            return
        group = self.process.pid
        terminate(self.process)
        self.process = None
        self.output.close()
        wait_group(group)

    def kill9(self) -> None:
        """SIGKILL to every process of the server at once (its process group, its session and
        whatever it forked, as a crash or power cut would end them: no clean-up of any kind);
        returns once none of them is left (bounded)."""
        if self.process is None:
            return
        root = self.process.pid
        doomed = server_processes(root)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(root, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while doomed and time.monotonic() < deadline:
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.poll()  # reap twistd itself, our child
            time.sleep(0.005)
            doomed = {pid for pid in doomed | server_processes(root) if alive(pid)}
        self.process.wait(10)
        if doomed:
            raise AssertionError(f"processes {sorted(doomed)} of the server outlived SIGKILL")
        self.process = None
        self.output.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        with open(os.path.join(self.dir, "twistd.out"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def maillog_text(self) -> str:
        try:
            with open(self.maillog) as f:
                return f.read()
        except FileNotFoundError:
            return ""


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of a process from /proc, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs (a zombie has ended)."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def server_processes(root: int) -> set[int]:
    """The live processes of the server started as ``root`` in a session of its own: those of
    its session or process group, and their descendants (one that made a session of its own)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[0] not in ("Z", "X"):
                table[int(name)] = st
    found = {pid for pid, (_, _, pgrp, sid) in table.items() if root in (pgrp, sid)}
    if root in table:
        found.add(root)
    grown = True
    while grown:
        children = {pid for pid, (_, ppid, _, _) in table.items() if ppid in found}
        grown = not children <= found
        found |= children
    return found


def terminate(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM to a child daemon and wait for it (bounded); SIGKILL when it does not go."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def wait_ports(ports, timeout: float, what: str, log, process=None) -> None:
    """(blocking) Until each loopback TCP port of ``ports`` accepts, at most ``timeout``
    seconds in all; AssertionError (with ``log()``) when one does not, or ``process`` exits."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"{what} exited {process.returncode}:\n{log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what}: port {port} did not start:\n{log()}") \
                        from None
                time.sleep(0.05)
