"""Start-up failures that need real sockets: a unix socket left by a killed instance
(mailsuite.startup.remove_stale_socket) and tap.makeService binding its listeners itself, in
this process (the failures of the whole twistd are test_startup_failures.py's)."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import sys
import tempfile

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.trial import unittest

from mailsuite import startup, tap
from mailsuite.startup import StartupError
from tests.test_tap import NONE_ELSE, write_config


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
            self.assertRegex(f.read(), r"postfix/master\[\d+\]: fatal: cannot listen on"
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


class ListenAddressProbeTests(unittest.TestCase):
    def test_ipv6_probe(self) -> None:
        """inet_interfaces all and loopback-only with the real probe (a socket bound to see
        whether IPv6 works here): the wildcard socket of one family, 127.0.0.1 first."""
        self.assertIn(tap.listen_addresses(["all"]), (["::"], ["0.0.0.0"]))
        self.assertIn(tap.listen_addresses(["loopback-only"]), (["127.0.0.1", "::1"],
                                                               ["127.0.0.1"]))
