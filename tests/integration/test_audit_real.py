"""Audit rules and BCC maps through the real server: a message sent with smtplib to the
twistd that the harness starts (privilege separation on when run as root: the rules and maps
are read by mail_owner)."""

from __future__ import annotations

import base64
import os
import smtplib
import time
import unittest as std_unittest

from twisted.trial import unittest

from mailsuite.mta.queue import Queue
from tests.integration.harness import Site

WAIT = 20.0
RULES = """\
# compliance
leak    /内部资料/     BCC:carol@example.test  inbound
secret  /机密/         HOLD                    both
"""


def chinese_message(subject: str, body: str, sender: str) -> bytes:
    """As a Chinese mail client sends it: RFC 2047 UTF-8 subject, GBK body in base64
    labelled GB2312."""
    encoded = base64.b64encode(subject.encode()).decode()
    return (f"From: <{sender}>\r\nTo: <boss@example.test>\r\nSubject: =?UTF-8?B?{encoded}?=\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=gb2312\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + \
        base64.encodebytes(body.encode("gbk")).replace(b"\n", b"\r\n")


class AuditThroughSmtp(unittest.TestCase):
    def setUp(self) -> None:
        self.site = Site(self, mail_extra="sender_bcc_maps = hash:BCCMAP\n")
        d = self.site.dir
        with open(os.path.join(d, "rules"), "w", encoding="utf-8") as f:
            f.write(RULES)
        with open(os.path.join(d, "sender_bcc"), "w") as f:
            f.write("@watched.example carol@example.test\n")
        with open(self.site.config, encoding="utf-8") as f:
            ini = f.read().replace("hash:BCCMAP", f"hash:{d}/sender_bcc")
        with open(self.site.config, "w", encoding="utf-8") as f:
            f.write(ini + f"\n[audit]\nrules = {d}/rules\n")
        self.site.start()

    def send(self, subject: str, body: str, sender: str = "joe@far.example") -> None:
        with smtplib.SMTP("127.0.0.1", self.site.ports["smtp"], timeout=15) as s:
            s.sendmail(sender, ["boss@example.test"], chinese_message(subject, body, sender))

    def wait_for(self, what: str, predicate) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + WAIT
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}:\n{self.site.maillog_text()}")
            time.sleep(0.1)

    def inbox(self, user: str) -> bytes:
        try:
            with open(self.site.inbox(user), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def test_bcc_rule_and_sender_bcc_map(self) -> None:
        """An inbound GBK message with 内部资料 reaches boss and, by the rule's BCC, carol,
        with one audit line; a message from a watched domain is copied to carol by
        sender_bcc_maps; an ordinary one is not."""
        self.send("周报", "附件是内部资料。请查收。")
        self.send("plain", "nothing to see", sender="eve@watched.example")
        self.send("other", "nothing either")
        self.wait_for("three messages for boss", lambda: self.inbox("boss").count(b"\nFrom ")
                      + self.inbox("boss").startswith(b"From ") == 3)
        self.wait_for("two copies for carol", lambda: self.inbox("carol").count(
            b"Subject: ") == 2)
        carol = self.inbox("carol")
        self.assertIn(base64.b64encode("周报".encode()), carol)
        self.assertIn(base64.b64encode(b"plain"), carol)
        self.assertNotIn(base64.b64encode(b"other"), carol)
        lines = [line for line in self.site.maillog_text().splitlines() if "audit:" in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"cleanup\[\d+\]: audit: \w+: rule=leak "
                         r"action=BCC:carol@example.test from=<joe@far.example> "
                         r'to=<boss@example.test> part=1 match="内部资料"')

    @std_unittest.skipUnless(hasattr(Queue, "hold"), "the hold queue (Queue.hold) is not here")
    def test_hold_rule(self) -> None:
        """A message whose subject says 机密 is taken (250) and held, not delivered."""
        self.send("机密 报价", "价格见附件")
        self.wait_for("the audit line", lambda: "rule=secret action=HOLD" in
                      self.site.maillog_text())
        self.assertIn("part=HEADER", self.site.maillog_text())
        time.sleep(1)
        self.assertEqual(self.inbox("boss"), b"")
