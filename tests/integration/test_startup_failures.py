"""The real twistd refusing to start: one line per problem on stderr, no traceback, no usage
text, a non-zero exit status, and nothing of a running instance disturbed."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import socket
import subprocess
import sys

from twisted.trial import unittest

from mailsuite.mta import control
from tests.integration import harness
from tests.integration.harness import ROOT, TWISTD, Site, free_port
from tests.integration.test_commands import read, wait_for


def run_to_exit(config: str, cwd: str, user: pwd.struct_passwd | None = None
                ) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``twistd -n mailsuite --config CONFIG`` that must end
    by itself (bounded); as ``user`` when given."""
    proc = subprocess.run(
        [*TWISTD, "--nodaemon", "--pidfile=", "mailsuite", "--config", config],
        cwd=cwd, env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=harness.START_TIMEOUT,
        preexec_fn=None if user is None else lambda: become(user))
    return proc.returncode, proc.stdout, proc.stderr


def become(user: pwd.struct_passwd) -> None:
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


class StartupFailureTests(unittest.TestCase):
    def assert_one_line(self, status: int, out: str, err: str, pattern: str) -> None:
        for text in (out, err):
            self.assertNotIn("Traceback", text)
            self.assertNotIn("Usage:", text)
        self.assertNotEqual(status, 0)
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertRegex(lines[0], "^mailsuite: " + pattern + "$")

    def test_port_in_use(self) -> None:
        """Another program on the SMTP port: one line naming address, port and service."""
        site = Site(self)
        with socket.socket() as busy:
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            busy.bind(("127.0.0.1", site.ports["smtp"]))
            busy.listen()
            status, out, err = run_to_exit(site.config, site.dir)
        self.assert_one_line(status, out, err, re.escape(
            f"cannot listen on 127.0.0.1:{site.ports['smtp']} (smtp): address in use (is"
            " Postfix or exim running?)"))
        self.assertIn("fatal: cannot listen on", site.maillog_text())

    def test_low_port_without_root(self) -> None:
        """Started by a user without root on port 25: one line saying what is needed."""
        nobody = pwd.getpwnam("nobody")
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to run the server as nobody")
        probe = subprocess.run([sys.executable, "-c", "import mailsuite.tap"], cwd="/",
                               env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                               preexec_fn=lambda: become(nobody))
        if probe.returncode != 0:
            raise unittest.SkipTest("nobody cannot run this checkout's Python")
        site = Site(self)
        with open(site.config) as f:
            text = f.read().replace(f"smtp = {site.ports['smtp']}\n", "smtp = 25\n")
        with open(site.config, "w") as f:
            f.write(text)
        for directory, _, files in os.walk(site.dir):
            for name in [directory, *(os.path.join(directory, f) for f in files)]:
                os.chown(name, nobody.pw_uid, nobody.pw_gid)
        os.chmod(site.dir, 0o755)
        status, out, err = run_to_exit(site.config, site.dir, user=nobody)
        self.assert_one_line(status, out, err, re.escape(
            "cannot listen on 127.0.0.1:25 (smtp): permission denied (ports below 1024 need"
            " root or CAP_NET_BIND_SERVICE)"))

    def test_second_instance_on_the_same_queue(self) -> None:
        """A second server on the same queue directory (other ports) refuses before touching
        anything: the first one's control socket still answers and it still takes mail."""
        site = Site(self)
        site.start()
        other = site.ini()
        for name, port in site.ports.items():
            other = re.sub(rf"(?m)^{name} = {port}$", f"{name} = {free_port()}", other)
        second = site._write("second.ini", other)
        status, out, err = run_to_exit(second, site.dir)
        self.assert_one_line(status, out, err, re.escape(
            f"the mail system is already running (pid {site.process.pid}) on the queue"
            f" directory {site.dir}/queue ({site.dir}/queue/pid/master.pid is locked)"))
        self.assertEqual(control.ask(os.path.join(site.dir, "queue"), "pickup", timeout=10),
                         "ok")
        with socket.create_connection(("127.0.0.1", site.ports["smtp"]), timeout=10) as s:
            self.assertTrue(s.recv(100).startswith(b"220 "))

    def test_broken_config(self) -> None:
        """A broken mail.ini: one line per problem (a misplaced key says where it belongs;
        every bad item of a list is named), no usage text, exit status 78."""
        site = Site(self, mail_extra="disable_plaintext_auth = no\nrelay_domains = a..b, c..d\n"
                                     "mynetworks = 127.0.0.1/8")
        status, out, err = run_to_exit(site.config, site.dir)
        self.assertEqual(status, 78)
        self.assertNotIn("Usage:", out + err)
        self.assertEqual(err.splitlines(), [
            f"mailsuite: {site.config}: [mail] {line}" for line in [
                "disable_plaintext_auth: belongs in [auth]",
                "mynetworks: '127.0.0.1/8' has host bits set; did you mean 127.0.0.0/8?",
                "relay_domains: 'a..b' is not a valid domain name",
                "relay_domains: 'c..d' is not a valid domain name",
            ]])

    def test_localhost_interface(self) -> None:
        """inet_interfaces = localhost is accepted as Postfix accepts it: the server listens
        on the name's addresses."""
        site = Site(self)
        with open(site.config) as f:
            text = f.read().replace("inet_interfaces = 127.0.0.1", "inet_interfaces = localhost")
        with open(site.config, "w") as f:
            f.write(text)
        site.start()
        with socket.create_connection(("127.0.0.1", site.ports["smtp"]), timeout=10) as s:
            self.assertTrue(s.recv(100).startswith(b"220 "))


class DaemonModeTests(unittest.TestCase):
    def test_daemon_start_and_stop(self) -> None:
        """twistd without -n forks after makeService bound the ports: the lock file holds the
        daemon's pid (not the parent's), the control socket answers, and a SIGTERM stop leaves
        no lock of twistd's behind (its pid was the parent's, so it failed to unlock)."""
        site = Site(self)
        pidfile = os.path.join(site.dir, "twistd.pid")
        proc = subprocess.run(
            [*TWISTD, f"--pidfile={pidfile}", f"--logfile={site.dir}/twistd.log", "mailsuite",
             "--config", site.config],
            cwd=site.dir, env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=harness.START_TIMEOUT)
        self.assertEqual((proc.returncode, proc.stderr), (0, ""))
        with open(pidfile) as f:
            pid = int(f.read())
        self.addCleanup(kill, pid, signal.SIGKILL)
        queue = os.path.join(site.dir, "queue")
        master = os.path.join(queue, "pid", "master.pid")
        wait_for("the daemon's pid in master.pid", lambda: read(master) == f"{pid}\n")
        self.assertEqual(control.ask(queue, "pickup", timeout=10), "ok")
        kill(pid, signal.SIGTERM)
        wait_for("the daemon to stop", lambda: not running(pid))
        self.assertEqual(os.listdir(os.path.join(queue, "public")), [])
        self.assertNotIn("Traceback", read(os.path.join(site.dir, "twistd.log")))


def kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def running(pid: int) -> bool:
    """Whether ``pid`` lives (a zombie left for a PID 1 that does not reap counts as ended)."""
    stat = read(f"/proc/{pid}/stat")
    return bool(stat) and stat.rpartition(")")[2].split()[0] != "Z"
