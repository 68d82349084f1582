"""mailsuite.maillog: queue ids and the shape of one line."""

from __future__ import annotations

import os
import re
import threading

from twisted.internet import reactor, threads
from twisted.trial import unittest

from mailsuite import maillog
from mailsuite.maillog import MailLog, new_queue_id


class QueueIdTests(unittest.TestCase):
    def test_shape_and_unique(self) -> None:
        """10 upper-case hex digits each; 5,000 in a row (several 4 KB refills) all differ."""
        ids = [new_queue_id() for _ in range(5000)]
        self.assertTrue(all(re.fullmatch(r"[0-9A-F]{10}", i) for i in ids))
        self.assertEqual(len(set(ids)), len(ids))

    def test_fork_does_not_repeat(self) -> None:
        """A child process after fork() does not hand out the ids its parent holds buffered."""
        new_queue_id()  # the parent now has random bytes buffered
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            try:
                os.write(write, "".join(new_queue_id() for _ in range(20)).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            child = f.read().decode()
        os.waitpid(pid, 0)
        parent = "".join(new_queue_id() for _ in range(20))
        self.assertEqual(len(child), 200)
        self.assertNotEqual(child, parent)
        self.assertEqual(maillog._ID_BYTES, 5)


class LineTests(unittest.TestCase):
    def test_line_shape_and_control_characters(self) -> None:
        """``Mon dd hh:mm:ss host ident[pid]: text``; control characters are escaped, other
        text (UTF-8 names included) kept as it is."""
        log = MailLog(None, "mail.example.com", now=lambda: 0.0)
        log.write("smtpd", "connect from x[192.0.2.1]")
        log.write("imap-login", "auth failed: user=<a\r\nb\x7f>, ünïcode\u00a0ok")
        first, second = log.lines
        self.assertRegex(
            first, r"^\w{3} [ \d]\d \d\d:\d\d:\d\d mail postfix/smtpd\[\d+\]: connect from x"
        )
        self.assertTrue(
            second.endswith("dovecot: imap-login: auth failed:"
                            " user=<a\\x0d\\x0ab\\x7f>, ünïcode\u00a0ok"))


class ThreadTests(unittest.TestCase):
    def test_write_from_a_pool_thread(self) -> None:
        """A line from a pool thread (alias files are read there) is written by the reactor
        thread, before the thread's result arrives; on the reactor thread it is written at
        once."""
        log = MailLog(None, "mail.example.com", reactor=reactor)
        writers: list[bool] = []  # for each write: was it on the reactor (main) thread?
        real_write = log.write

        def write(program: str, text: str) -> None:
            writers.append(threading.current_thread() is threading.main_thread())
            real_write(program, text)

        self.patch(log, "write", write)
        log.write_from_any_thread("local", "warning: here")
        self.assertEqual(writers, [True])

        def check(_: object) -> None:
            self.assertEqual(writers, [True, True])
            self.assertTrue(log.lines[-1].endswith(
                f"postfix/local[{os.getpid()}]: warning: there"))

        d = threads.deferToThread(log.write_from_any_thread, "local", "warning: there")
        return d.addCallback(check)


class ShapeTests(unittest.TestCase):
    def test_postfix_and_dovecot_shapes(self) -> None:
        """MTA programs log as ``postfix/PROGRAM[pid]:`` (as Postfix; ``submission/smtpd`` as
        Debian's master.cf names it), Dovecot's services as ``dovecot: SERVICE:`` with no pid
        (as Dovecot writes to syslog); ``syslog_name`` replaces ``postfix``."""
        log = MailLog(None, "mail.example.com", now=lambda: 0.0)
        for program in ("smtpd", "submission/smtpd", "qmgr", "imap-login", "imap(boss)", "auth",
                        "pop3(a\nb)"):
            log.write(program, "x")
        tags = [line.split(" mail ", 1)[1] for line in log.lines]
        pid = os.getpid()
        self.assertEqual(tags, [f"postfix/smtpd[{pid}]: x", f"postfix/submission/smtpd[{pid}]: x",
                                f"postfix/qmgr[{pid}]: x", "dovecot: imap-login: x",
                                "dovecot: imap(boss): x", "dovecot: auth: x",
                                "dovecot: pop3(a?b): x"])
        other = MailLog(None, "mail.example.com", syslog_name="postfix-out")
        other.write("smtp", "y")
        self.assertIn(f" postfix-out/smtp[{pid}]: y", other.lines[0])

