"""Start-up failures as one line each (mailsuite.startup), without sockets: the tests that
bind sockets (a stale unix socket, makeService's listeners) are in
tests/integration/test_startup_sockets.py."""

from __future__ import annotations

import errno
import os

from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from mailsuite import startup
from mailsuite.startup import InstanceLock, StartupError


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
