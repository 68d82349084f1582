"""maillog_file empty: the lines go to syslog, one datagram each, on a unix datagram socket
standing in for /dev/log (``[mail] syslog_socket``)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.trial import unittest

from mailsuite import maillog
from mailsuite.maillog import MailLog
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

    def test_from_config(self) -> None:
        """``maillog_file`` empty: syslog on ``syslog_socket``; else the file."""
        cfg = parse(section("mail", maillog_file="", syslog_socket="/run/x/log",
                            syslog_name="postfix-x")).mail
        log = MailLog.from_config(cfg, None)
        self.assertEqual((log.path, log.syslog, log.syslog_name), (None, "/run/x/log", "postfix-x"))
        log = MailLog.from_config(parse("").mail, None)
        self.assertEqual((log.path, log.syslog), ("/var/log/maillog", None))
