"""maillog_file empty: the lines go to syslog, one datagram each, on a unix datagram socket
standing in for /dev/log (``[mail] syslog_socket``)."""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import signal
import smtplib
import socket
import tempfile
import time
from types import SimpleNamespace

from twisted.internet import task
from twisted.trial import unittest

from mailsuite import maillog
from mailsuite.maillog import MailLog
from tests.integration.harness import Site
from tests.test_config import parse, section


class SyslogTests(unittest.TestCase):
    def listen(self) -> tuple[str, socket.socket]:
        path = os.path.join(tempfile.mkdtemp(prefix="ms-log-", dir="/tmp"), "log")
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        server.settimeout(5)
        self.addCleanup(server.close)
        return path, server

    def test_one_datagram_per_line(self) -> None:
        """maillog_file empty: each line is one datagram ``<PRI>Mmm dd hh:mm:ss TAG: text``
        as syslog(3) sends it, facility mail (2), LOG_INFO, LOG_WARNING for ``warning:``,
        LOG_CRIT for ``fatal:`` (Postfix's msg_warn and msg_fatal); no host name (syslogd
        adds it). A child given the master's socket descriptor (``adopt``) sends on it."""
        path, server = self.listen()
        log = MailLog(None, "mail.example.com", now=lambda: 0.0, syslog=path)
        log.open()
        self.addCleanup(log.close)
        log.write("smtpd", "connect from x[192.0.2.1]")
        log.write("local", "warning: bad alias")
        log.write("master", "fatal: cannot listen")
        log.write("imap-login", "Login: user=<boss>")
        got = [server.recv(4096).decode() for _ in range(4)]
        stamp = log.stamp()
        pid = os.getpid()
        self.assertEqual(got, [f"<22>{stamp} postfix/smtpd[{pid}]: connect from x[192.0.2.1]",
                               f"<20>{stamp} postfix/local[{pid}]: warning: bad alias",
                               f"<18>{stamp} postfix/master[{pid}]: fatal: cannot listen",
                               f"<22>{stamp} dovecot: imap-login: Login: user=<boss>"])
        child = MailLog(None, "mail.example.com", syslog_name="postfix")
        child.adopt(os.dup(log.fileno()))
        self.addCleanup(child.close)
        child.write("smtpd", "from the child")
        self.assertTrue(server.recv(4096).decode().endswith("]: from the child"))
        self.assertEqual(child.lines, [])

    def test_facility_and_restarted_syslogd(self) -> None:
        """syslog_facility local3 gives PRI 19*8+6; a syslogd restarted (a new socket at
        the same path) gets the next line (connected again); none there: the line is dropped,
        the server goes on."""
        path, server = self.listen()
        log = MailLog(None, "h", syslog=path, facility=maillog.FACILITIES["local3"])
        log.open()
        self.addCleanup(log.close)
        log.write("smtpd", "one")
        self.assertTrue(server.recv(4096).startswith(b"<158>"))
        server.close()
        os.unlink(path)
        log.write("smtpd", "dropped")  # nobody listens: no exception
        again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        again.bind(path)
        again.settimeout(5)
        self.addCleanup(again.close)
        log.write("smtpd", "two")
        self.assertTrue(again.recv(4096).endswith(b": two"))

    def test_child_connects_again(self) -> None:
        """A child process's maillog (made from the configuration, on the master's socket)
        connects to ``syslog_socket`` again after syslogd was restarted."""
        path, server = self.listen()
        cfg = parse(section("mail", maillog_file="", syslog_socket=path)).mail
        master = MailLog.from_config(cfg, None)
        master.open()
        self.addCleanup(master.close)
        child = MailLog.from_config(cfg, None, opened_by_master=True)
        child.adopt(os.dup(master.fileno()))
        self.addCleanup(child.close)
        child.write("smtpd", "one")
        self.assertTrue(server.recv(4096).endswith(b": one"))
        server.close()
        os.unlink(path)
        again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        again.bind(path)
        again.settimeout(5)
        self.addCleanup(again.close)
        child.write("smtpd", "two")
        self.assertTrue(again.recv(4096).endswith(b": two"))

    def test_burst_waits_in_order(self) -> None:
        """More lines at once than the socket queues (Linux: few datagrams): the reactor
        never waits; the rest waits and goes out in order as the reactor tries again."""
        path, server = self.listen()
        clock = task.Clock()
        fake = SimpleNamespace(callLater=clock.callLater, callFromThread=None)
        log = MailLog(None, "h", syslog=path, reactor=fake)
        log.open()
        self.addCleanup(log.close)
        for n in range(300):
            log.write("smtpd", f"line {n}")
        got: list[str] = []
        for _ in range(1000):
            if len(got) == 300:
                break
            server.setblocking(False)
            try:
                while True:
                    got.append(server.recv(4096).decode().rsplit(" ", 1)[1])
            except BlockingIOError:
                pass
            clock.advance(0.02)
        self.assertEqual(got, [str(n) for n in range(300)])

    def test_from_config(self) -> None:
        """``maillog_file`` empty: syslog on ``syslog_socket``; else the file."""
        cfg = parse(section("mail", maillog_file="", syslog_socket="/run/x/log",
                            syslog_name="postfix-x")).mail
        log = MailLog.from_config(cfg, None)
        self.assertEqual((log.path, log.syslog, log.syslog_name), (None, "/run/x/log", "postfix-x"))
        log = MailLog.from_config(parse("").mail, None)
        self.assertEqual((log.path, log.syslog), ("/var/log/maillog", None))


class SyslogSite(Site):
    """A site with ``maillog_file`` empty: its lines go to ``syslog_socket``."""

    def __init__(self, testcase: unittest.TestCase, socket_path: str) -> None:
        self.socket_path = socket_path
        super().__init__(testcase, tls=True)

    def ini(self) -> str:
        return super().ini().replace(f"maillog_file = {self.maillog}\n",
                                     f"maillog_file =\nsyslog_socket = {self.socket_path}\n")


class RealServerSyslogTests(unittest.TestCase):
    def test_every_process_writes_to_syslog(self) -> None:
        """The real server with maillog_file empty: the lines of the network process (smtpd,
        imap-login: privilege-separated, on the socket the master connected and handed
        over), of delivery (local) and of the master arrive as datagrams tagged as Postfix
        and Dovecot tag them, facility mail; no maillog file is made; after SIGHUP (syslogd
        may have been restarted) the lines keep coming."""
        path = os.path.join(tempfile.mkdtemp(prefix="ms-log-", dir="/tmp"), "log")
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        server.settimeout(20)
        self.addCleanup(server.close)
        site = SyslogSite(self, path)
        site.start()
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=20) as client:
            client.sendmail("friend@remote.test", ["boss@example.test"], b"Subject: x\r\n\r\nx\r\n")
        got = self.receive(server, "status=sent")
        self.assertTrue(any(re.match(r"<22>\w{3} [ \d]\d [\d:]{8} postfix/smtpd\[\d+\]: "
                                     r"connect from localhost\[127\.0\.0\.1\]$", d) for d in got),
                        got)
        self.assertTrue(any(" postfix/local[" in d for d in got), got)
        self.assertFalse(os.path.exists(site.maillog))
        assert site.process is not None
        site.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:  # the HUP is taken asynchronously: a login until its line comes
            imap = imaplib.IMAP4("127.0.0.1", site.ports["imap"], timeout=20)
            imap.login("boss", "secret")
            imap.logout()
            got = self.receive(server, "Logged out", deadline)
            if any(d.startswith("<22>") and " dovecot: imap-login: Login: user=<boss>" in d
                   for d in got):
                break
        self.assertIsNone(site.process.poll())

    def receive(self, server: socket.socket, until: str,
                deadline: float | None = None) -> list[str]:
        """Datagrams until one contains ``until`` (bounded in time)."""
        deadline = deadline or time.monotonic() + 20
        got: list[str] = []
        while not any(until in d for d in got):
            self.assertLess(time.monotonic(), deadline, got)
            got.append(server.recv(65536).decode("utf-8", "replace"))
        return got
