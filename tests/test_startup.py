"""Start-up failures as one line each (mailsuite.startup and tap.makeService's binding)."""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import socket
import sys
import tempfile

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from mailsuite import startup, tap
from mailsuite.startup import InstanceLock, StartupError
from tests.test_tap import NONE_ELSE, write_config


def refusal(port: int | bytes, code: int, interface: str | None = "127.0.0.1") -> CannotListenError:
    return CannotListenError(interface, port, OSError(code, os.strerror(code)))


class ListenFailureTests(unittest.TestCase):
    def test_address_in_use(self) -> None:
        """Address in use names address, port and service, and who usually holds the port;
        IPv6 addresses are bracketed."""
        self.assertEqual(
            startup.listen_failure("smtp@::", refusal(25, errno.EADDRINUSE, "::")),
            "cannot listen on [::]:25 (smtp): address in use (is Postfix or exim running?)")
        self.assertEqual(
            startup.listen_failure("imaps@127.0.0.1", refusal(993, errno.EADDRINUSE)),
            "cannot listen on 127.0.0.1:993 (imaps): address in use (is Dovecot running?)")

    def test_permission_and_foreign_address(self) -> None:
        """A low port without root says what is needed; an address this host does not have
        points at inet_interfaces."""
        self.assertEqual(
            startup.listen_failure("pop3@0.0.0.0", refusal(110, errno.EACCES, "0.0.0.0")),
            "cannot listen on 0.0.0.0:110 (pop3): permission denied (ports below 1024 need"
            " root or CAP_NET_BIND_SERVICE)")
        self.assertEqual(
            startup.listen_failure("smtp@192.0.2.1", refusal(25, errno.EADDRNOTAVAIL,
                                                             "192.0.2.1")),
            "cannot listen on 192.0.2.1:25 (smtp): address not available (no interface of"
            " this host has it: see [mail] inet_interfaces)")

    def test_unix_socket(self) -> None:
        """A unix socket is named by its path."""
        self.assertEqual(
            startup.listen_failure("lmtp@/run/x", refusal(b"/run/x", errno.EACCES, None)),
            "cannot listen on unix socket /run/x (lmtp): permission denied")


class StaleSocketTests(unittest.TestCase):
    def path(self) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        return os.path.join(directory, "s")

    def test_stale_socket_removed(self) -> None:
        """A socket nobody listens on (left by kill -9) is removed before binding."""
        path = self.path()
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path)
        startup.remove_stale_socket(path, "control")
        self.assertFalse(os.path.exists(path))
        startup.remove_stale_socket(path, "control")  # absent: nothing to do

    def test_live_socket_or_other_file_refused(self) -> None:
        """A socket someone answers on, or a file that is no socket, is kept and refused."""
        path = self.path()
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path)
            s.listen()
            e = self.assertRaises(StartupError, startup.remove_stale_socket, path, "lmtp")
        self.assertEqual(str(e), f"cannot listen on unix socket {path} (lmtp): in use by"
                         " another running program")
        os.unlink(path)
        open(path, "w").close()
        e = self.assertRaises(StartupError, startup.remove_stale_socket, path, "lmtp")
        self.assertIn("the file exists and is not a socket", str(e))
        self.assertTrue(os.path.exists(path))


class TwistdFilesTests(unittest.TestCase):
    def test_unwritable_pidfile_or_logfile(self) -> None:
        """twistd's --pidfile and --logfile are tried before twistd writes them (a traceback
        from twistd then); a pidfile made by the try is removed again (twistd refuses an
        empty one)."""
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        startup.check_twistd_files({"pidfile": f"{d}/twistd.pid", "logfile": "-"})
        self.assertEqual(os.listdir(d), [])
        for option in ("pidfile", "logfile"):
            e = self.assertRaises(StartupError, startup.check_twistd_files,
                                  {option: f"{d}/none/x"})
            self.assertEqual(str(e), f"twistd --{option}: {d}/none/x: No such file or directory")


class InstanceLockTests(unittest.TestCase):
    def test_second_instance_refused(self) -> None:
        """queue_directory/pid/master.pid holds the first instance's pid; a second lock of the
        same queue directory is refused naming that pid; after release it is free again."""
        queue = os.path.abspath(self.mktemp())
        first = InstanceLock(queue)
        first.acquire()
        self.addCleanup(first.release)
        with open(os.path.join(queue, "pid", "master.pid")) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")
        e = self.assertRaises(StartupError, InstanceLock(queue).acquire)
        self.assertEqual(str(e), f"the mail system is already running (pid {os.getpid()}) on"
                         f" the queue directory {queue} ({queue}/pid/master.pid is locked)")
        first.release()
        again = InstanceLock(queue)
        again.acquire()
        again.release()

    def test_unusable_queue_directory(self) -> None:
        """A queue directory that cannot be made is named with the reason."""
        blocker = os.path.abspath(self.mktemp())
        open(blocker, "w").close()
        e = self.assertRaises(StartupError, InstanceLock(os.path.join(blocker, "q")).acquire)
        self.assertEqual(str(e), f"[mail] queue_directory: {blocker}/q: Not a directory")


class MakeServiceTests(unittest.TestCase):
    def options(self, listen: str, maillog_is_a_directory: bool = False) -> tap.Options:
        path = write_config(self, listen + NONE_ELSE)
        queue = tempfile.mkdtemp(prefix="ms-", dir="/tmp")  # short: sockets live under it
        self.addCleanup(shutil.rmtree, queue, True)
        with open(path) as f:
            text = re.sub(r"(?m)^queue_directory = .*$", f"queue_directory = {queue}", f.read())
        with open(path, "w") as f:
            f.write(text)
        if maillog_is_a_directory:
            os.makedirs(os.path.join(os.path.dirname(path), "maillog"))
        options = tap.Options()
        options.parseOptions(["--config", path])
        return options

    def fatal(self, options: tap.Options) -> tuple[int, list[str]]:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(options)
        return caught.exception.code, err.getvalue().splitlines()

    def test_port_in_use_is_one_line(self) -> None:
        """makeService binds the listeners itself: a port in use ends it with one line on
        stderr and exit status 1, the maillog says it too (it was a 39-line traceback from
        twistd's privilegedStartService)."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            options = self.options(f"smtp = {port}\npop3 = no\nimap = no\n")
            code, lines = self.fatal(options)
        self.assertEqual((code, lines), (1, [
            f"mailsuite: cannot listen on 127.0.0.1:{port} (smtp): address in use (is Postfix"
            " or exim running?)"]))
        with open(options["cfg"].mail.maillog_file) as f:
            self.assertRegex(f.read(), r"mailsuite/master\[\d+\]: fatal: cannot listen on"
                             f" 127.0.0.1:{port} \\(smtp\\)")

    def test_binds_once(self) -> None:
        """The listeners bound by makeService are not bound again by twistd's own
        privilegedStartService."""
        options = self.options("smtp = 0\npop3 = no\nimap = no\n")
        top = tap.makeService(options)
        self.addCleanup(os.close, top.instance_lock.fd)
        smtp = top.getServiceNamed("smtp@127.0.0.1")
        port = smtp._waitingForPort.result
        top.privilegedStartService()
        self.assertIs(smtp._waitingForPort.result, port)
        self.addCleanup(top.maillog.close)
        return defer.gatherResults([svc.stopService() for svc in top
                                    if isinstance(svc, StreamServerEndpointService)])

    def test_unwritable_maillog_is_one_line(self) -> None:
        """A maillog_file that cannot be opened is one line naming key, file and reason."""
        options = self.options("smtp = 0\npop3 = no\nimap = no\n", maillog_is_a_directory=True)
        self.assertEqual(self.fatal(options), (1, [
            f"mailsuite: [mail] maillog_file: {options['cfg'].mail.maillog_file}: Is a"
            " directory"]))
