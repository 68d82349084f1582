"""Privilege separation (issue 11 item 1) through the real server: which process runs with
which rights while it serves, and that mail is touched with its user's rights only."""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import subprocess
import time

from twisted.trial import unittest

from tests.integration.harness import PRIVSEP, ROOT, START_TIMEOUT, TWISTD, Site
from tests.integration.test_commands import wait_for
from tests.integration.test_end_to_end import Clients, message

SKIP = None if PRIVSEP else "needs root and the mail_owner user (setup-debian.sh test makes it)"
WAIT = 15.0


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found through /proc/*/stat)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rpartition(")")[2].split()[1])
            except OSError:
                continue
    out, todo = [], [pid]
    while todo:
        here = todo.pop()
        kids = [p for p, parent in parents.items() if parent == here]
        out.extend(kids)
        todo.extend(kids)
    return out


def wait_until(check, what: str) -> None:
    wait_for(what, check)


class PrivsepTests(unittest.TestCase):
    skip = SKIP

    def setUp(self) -> None:
        self.site = Site(self)
        self.site.start()
        self.c = Clients(self.site)

    def processes(self) -> dict[int, dict[str, str]]:
        assert self.site.process is not None
        return {pid: status(pid) for pid in descendants(self.site.process.pid)}

    def test_rights_of_every_process(self) -> None:
        """While serving: the master and the zygote are root; the network process is
        mail_owner; the agent of a logged-in user is that user with its groups and mail; no
        process but the first two has any id 0 or any capability."""
        m = self.c.imap()
        m.select("INBOX")
        self.c.send(message("hello", "body"), ["carol@example.test"])
        wait_until(lambda: os.path.exists(self.site.inbox("carol")), "carol's delivery")
        owner = pwd.getpwnam(PRIVSEP)
        procs = self.processes()
        by_uid: dict[int, list[int]] = {}
        for pid, st in procs.items():
            uids = {int(x) for x in st["Uid"].split()}
            gids = {int(x) for x in st["Gid"].split()}
            self.assertEqual(len(uids), 1, st["Uid"])  # real, effective, saved, fs: one id
            self.assertEqual(len(gids), 1, st["Gid"])
            uid = uids.pop()
            by_uid.setdefault(uid, []).append(pid)
            if uid != 0:
                self.assertEqual(int(st["CapEff"], 16), 0)
                self.assertEqual(int(st["CapPrm"], 16), 0)
                self.assertNotIn(0, gids)
        assert self.site.process is not None
        self.assertEqual(int(status(self.site.process.pid)["Uid"].split()[1]), 0)
        self.assertEqual(len(by_uid.get(0, [])), 1, "the zygote is the only other root")
        self.assertEqual(len(by_uid.get(owner.pw_uid, [])), 1, "one network process")
        for user in ("boss", "carol"):
            agents = by_uid.get(self.site.uids[user], [])
            self.assertEqual(len(agents), 1, f"one agent of {user}")
            groups = {int(g) for g in procs[agents[0]]["Groups"].split()}
            self.assertEqual(groups, {self.site.uids[user], grp.getgrnam("mail").gr_gid})
        m.logout()

    def test_stop_waits_for_every_process(self) -> None:
        """SIGTERM to the master: when it has exited, no process of the server is left (a
        server started next finds the ports free)."""
        m = self.c.imap()
        m.select("INBOX")
        assert self.site.process is not None
        group = self.site.process.pid
        self.assertGreaterEqual(len(descendants(group)), 3)
        self.site.process.send_signal(signal.SIGTERM)
        self.site.process.wait(20)
        with self.assertRaises(ProcessLookupError):
            os.killpg(group, 0)
        with socket.socket() as s:  # (SO_REUSEADDR, as a server binds: the client's
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connection may wait)
            s.bind(("127.0.0.1", self.site.ports["imap"]))
            s.listen()

    def test_network_sockets_are_in_the_network_process(self) -> None:
        """The clients' TCP connections are held by the mail_owner process only."""
        m = self.c.imap()
        owner = pwd.getpwnam(PRIVSEP).pw_uid
        port = self.site.ports["imap"]
        holders = set()
        for pid, st in self.processes().items():
            uid = int(st["Uid"].split()[0])
            inodes = set()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
            with open(f"/proc/{pid}/net/tcp") as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    local_port = int(fields[1].split(":")[1], 16)
                    state = fields[3]
                    if local_port == port and state == "01" and fields[9] in inodes:
                        holders.add(uid)
        self.assertEqual(holders, {owner})
        m.logout()

    def test_delivery_creates_the_spool_file_as_the_user(self) -> None:
        self.c.send(message("first", "body"), ["carol@example.test"])
        path = self.site.inbox("carol")
        wait_until(lambda: os.path.exists(path), "carol's spool file")
        st = os.stat(path)
        self.assertEqual((st.st_uid, st.st_gid),
                         (self.site.uids["carol"], grp.getgrnam("mail").gr_gid))

    def test_hup_reopens_the_maillog_of_every_process(self) -> None:
        """logrotate moves the maillog and sends HUP: the network process's and the agents'
        lines go to the new file."""
        m = self.c.imap()
        m.logout()
        os.rename(self.site.maillog, self.site.maillog + ".1")
        assert self.site.process is not None
        self.site.process.send_signal(signal.SIGHUP)
        wait_until(lambda: os.path.exists(self.site.maillog), "a new maillog")
        m = self.c.imap()
        m.logout()
        wait_until(lambda: "imap-login" in self.site.maillog_text()
                   and "dovecot: imap(" in self.site.maillog_text(), "both lines in the new file")

    def test_forward_in_a_closed_home(self) -> None:
        """carol's home is 0700: her agent reads her .forward and runs its command as carol."""
        home = self.site.home("carol")
        out = os.path.join(home, "piped")
        forward = os.path.join(home, ".forward")
        with open(forward, "w") as f:
            f.write(f'"|/bin/sh -c \'cat > {out}; id -u >> {out}\'"\n')
        os.chown(forward, self.site.uids["carol"], self.site.uids["carol"])
        os.chmod(home, 0o700)
        self.c.send(message("piped", "through carol's command"), ["carol@example.test"])
        def ran() -> bool:
            if not os.path.exists(out):
                return False
            with open(out) as f:
                return f.read().strip().endswith(str(self.site.uids["carol"]))

        wait_until(ran, "the command's output")
        with open(out) as f:
            self.assertIn("through carol's command", f.read())
        self.assertFalse(os.path.exists(self.site.inbox("carol")))

    def test_include_in_a_closed_home(self) -> None:
        """boss's home is 0700: the :include: his .forward names is read by his agent (as
        boss), and the list in it is delivered to."""
        home = self.site.home("boss")
        members = os.path.join(home, "members")
        forward = os.path.join(home, ".forward")
        for path, text in ((members, "carol\n"), (forward, f":include:{members}\n")):
            with open(path, "w") as f:
                f.write(text)
            os.chown(path, self.site.uids["boss"], self.site.uids["boss"])
        os.chmod(home, 0o700)
        self.c.send(message("listed", "for the members"), ["boss@example.test"])
        wait_until(lambda: os.path.exists(self.site.inbox("carol")), "the member's copy")
        with open(self.site.inbox("carol")) as f:
            self.assertIn("for the members", f.read())


def exchange(port: int, data: bytes, until: bytes) -> bytes:
    """Send ``data`` in one write after the greeting; read until ``until`` (bounded)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        got = s.recv(4096)
        s.sendall(data)
        deadline = time.monotonic() + WAIT
        while until not in got and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


class EarlyStopTests(unittest.TestCase):
    skip = SKIP

    def test_sigterm_while_starting(self) -> None:
        """SIGTERM as soon as the master's sockets accept, before the network process
        answers (twistd's handlers not yet installed): the server stops in order (the
        master waits for the zygote and its children) and the ports are free once it has
        exited. The default action used to kill the master at once, the listening sockets
        it had sent the zygote staying in flight for seconds."""
        site = Site(self)
        for _attempt in range(3):
            with open(os.path.join(site.dir, "twistd.out"), "ab") as out:
                process = subprocess.Popen(
                    [*TWISTD, "--nodaemon", "--pidfile=", "mailsuite", "--config",
                     site.config], cwd=site.dir, env=dict(os.environ, PYTHONPATH=ROOT),
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            self.addCleanup(lambda p=process: p.poll() is None and p.kill())
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", site.ports["imap"]), 1).close()
                    break
                except OSError:
                    time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            self.assertEqual(process.wait(30), 0, site.log())
            for name in ("smtp", "pop3", "imap"):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", site.ports[name]))  # free: nobody listens
        self.assertEqual(site.log().count("Server Shut Down."), 3)


class PipelinedHandoffTests(unittest.TestCase):
    """What a client pipelines behind its login reaches the agent in order, once."""

    skip = SKIP

    def setUp(self) -> None:
        self.site = Site(self)
        self.site.start()
        self.c = Clients(self.site)
        self.c.send(message("one", "body"), ["boss@example.test"])
        wait_until(lambda: os.path.exists(self.site.inbox("boss")), "the delivery")

    def test_imap(self) -> None:
        got = exchange(self.site.ports["imap"],
                       b"a LOGIN boss secret\r\nb SELECT INBOX\r\nc FETCH 1 (FLAGS)\r\n"
                       b"d LOGOUT\r\n", b"d OK")
        lines = [line.split(b" ")[0] + b" " + line.split(b" ")[1] for line in got.split(b"\r\n")
                 if line[:2] in (b"a ", b"b ", b"c ", b"d ")]
        self.assertEqual(lines, [b"a OK", b"b OK", b"c OK", b"d OK"])
        self.assertIn(b"* 1 EXISTS", got)

    def test_pop3(self) -> None:
        got = exchange(self.site.ports["pop3"],
                       b"USER boss\r\nPASS secret\r\nSTAT\r\nUIDL 1\r\nQUIT\r\n", b"Logging out")
        replies = [line for line in got.split(b"\r\n") if line[:1] in (b"+", b"-")]
        self.assertEqual(len(replies), 6, got)  # greeting, USER, PASS, STAT, UIDL, QUIT
        self.assertTrue(all(r.startswith(b"+OK") for r in replies), got)
        self.assertTrue(replies[3].startswith(b"+OK 1 "), got)
