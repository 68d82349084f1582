"""MailLog.coalesce: the lines of one reactor turn go out in one write, in order."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from mailsuite.maillog import MailLog


class CoalesceTests(unittest.TestCase):
    def test_one_write_per_turn(self) -> None:
        """Lines wait for the scheduled flush, then appear together and in order; close()
        flushes what is still held back."""
        path = self.mktemp()
        scheduled: list[Any] = []
        maillog = MailLog(path, "mail.example.test", now=lambda: 0.0)
        maillog.open()
        maillog.coalesce = scheduled.append
        maillog.write("smtpd", "one")
        maillog.write("qmgr", "two")
        self.assertEqual(len(scheduled), 1)
        with open(path) as f:
            self.assertEqual(f.read(), "")
        scheduled.pop()()
        maillog.write("local", "three")
        maillog.close()
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual([line.rsplit(": ", 1)[1] for line in lines], ["one", "two", "three"])
        self.assertIn("postfix/qmgr[", lines[1])
