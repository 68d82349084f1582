# Chinese text with its own full-width punctuation is what these tests read:
# ruff: noqa: RUF001
"""Audit rules (mailsuite/filter/audit.py, auditrules.py, mimetext.py, needles.py): the text
people wrote, decoded from the shapes real mail has, the rule syntax, scopes, actions and the
maillog line."""

from __future__ import annotations

import base64
import os
import quopri
import re
import tracemalloc
import urllib.parse

from twisted.internet import defer
from twisted.trial import unittest

from mailsuite import filter, threads
from mailsuite.configvalues import parse_networks
from mailsuite.maillog import MailLog
from mailsuite.filter import mimetext
from mailsuite.filter.audit import AuditStage, direction, scan
from mailsuite.filter.auditrules import parse_rule, parse_rules
from mailsuite.filter.needles import Needles
from mailsuite.tablefile import TableError, TableFile
from mailsuite.mta.transaction import (
    DELIVERED,
    PICKUP,
    REFUSED,
    Client,
    Envelope,
    Hold,
    Message,
    Recipient,
    Verdict,
)
from mailsuite.startup import StartupError
from tests.configs import real_config
from tests.test_delivery import ALICE, inbox
from tests.test_transaction import PipelineCase

LOCAL = {"mail.example.com"}


def b64(text: str, charset: str) -> bytes:
    return base64.encodebytes(text.encode(charset))


def qp(text: str, charset: str) -> bytes:
    return quopri.encodestring(text.encode(charset))


def word(text: str, charset: str, kind: str = "B") -> str:
    raw = text.encode(charset)
    if kind == "B":
        return f"=?{charset}?B?{base64.b64encode(raw).decode()}?="
    return f"=?{charset}?Q?" + "".join(f"={c:02X}" for c in raw) + "?="


#: one message with every shape: a UTF-8 RFC 2047 Subject, a GBK body in base64 labelled
#: GB2312 (with a GBK-only character), a Big5 quoted-printable part, an attachment named in
#: GB2312 by RFC 2231, a text/plain attachment, a nested message/rfc822 with a GBK Q-word
#: subject, an HTML part with an entity
SAMPLE = (
    b"From: Joe <joe@far.example>\nTo: boss@mail.example.com\n"
    b"Subject: " + word("季度报告：机密", "utf-8").encode() + b"\n"
    b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"==b1\"\n\n"
    b"This is a multi-part message in MIME format.\n"
    b"--==b1\nContent-Type: text/plain; charset=\"gb2312\"\nContent-Transfer-Encoding: base64\n\n"
    + b64("您好，附件是内部资料，请勿外传。镕", "gbk") +
    b"--==b1\nContent-Type: text/plain; charset=big5\n"
    b"Content-Transfer-Encoding: quoted-printable\n\n" + qp("這是機密檔案", "big5") + b"\n"
    b"--==b1\nContent-Type: application/vnd.ms-excel\n"
    b"Content-Disposition: attachment;\n filename*=gb2312''"
    + urllib.parse.quote_from_bytes("客户名单.xls".encode("gb2312")).encode() +
    b"\nContent-Transfer-Encoding: base64\n\nAAAA\n"
    b"--==b1\nContent-Type: text/plain; charset=utf-8; name=\"notes.txt\"\n"
    b"Content-Disposition: attachment; filename=\"notes.txt\"\n"
    b"Content-Transfer-Encoding: base64\n\n" + b64("password: hunter2\n", "utf-8") +
    b"--==b1\nContent-Type: message/rfc822\n\n"
    b"Subject: " + word("绝密", "gbk", "Q").encode() + b"\nContent-Type: text/html\n\n"
    b"<p>top&nbsp;<b>sec</b>ret</p>\n"
    b"--==b1--\n")


class DecodeTests(unittest.TestCase):
    def pieces(self, data: bytes = SAMPLE) -> list[tuple[str, str, str]]:
        return [(p.part, p.kind, p.text) for p in mimetext.extract(data)]

    def test_real_world_shapes(self) -> None:
        """Each shape is decoded and labelled with its IMAP part number."""
        got = self.pieces()
        self.assertIn("Subject: 季度报告：机密", got[0][2])
        self.assertEqual(got[0][:2], ("HEADER", "header"))
        self.assertEqual(got[1:], [
            ("1", "text", "您好，附件是内部资料，请勿外传。镕"),
            ("2", "text", "這是機密檔案"),
            ("3", "name", "客户名单.xls"),
            ("4", "name", "notes.txt"),
            ("4", "text", "password: hunter2\n"),
            ("5.HEADER", "header", "Subject: 绝密\nContent-Type: text/html"),
            ("5.1", "text", "top\xa0secret\n"),
        ])

    def test_rfc2047_joined_words_and_split_characters(self) -> None:
        """Adjacent encoded words join without the space between; a GBK character split
        across two words comes out whole; an unknown or bytes-to-bytes charset is no crash."""
        raw = "机密".encode("gbk")
        split = (f"=?gbk?B?{base64.b64encode(raw[:3]).decode()}?= "
                 f"=?gbk?B?{base64.b64encode(raw[3:]).decode()}?=")
        self.assertEqual(mimetext.decode_words(f"Re: {split} x"), "Re: 机密 x")
        odd = mimetext.decode_words("=?zlib?B?eJwDAAAAAAE=?= =?nosuch?Q?a?=")
        self.assertEqual((odd[0], odd[-1]), ("x", "a"))  # not decompressed: not a charset
        self.assertEqual(mimetext.decode_words("=?utf-8?Q?a_b?= =?utf-8?B?Yw?="), "a bc")

    def test_rfc2231_continuations_and_rfc2047_name(self) -> None:
        """A file name in RFC 2231 segments (charset on the first), and one in an RFC 2047
        word inside quotes (Outlook's and Foxmail's way)."""
        raw = urllib.parse.quote_from_bytes("合同草案.docx".encode("gb18030"))
        params = mimetext.parse_params(
            f"; filename*0*=gb2312''{raw[:12]}; filename*1*={raw[12:]}")
        self.assertEqual(params["filename"], "合同草案.docx")
        fields = [("Content-Disposition", f'attachment; filename="{word("机密.pdf", "gbk")}"')]
        self.assertEqual(mimetext._file_name(fields, {}), "机密.pdf")

    def test_mislabelled_charsets(self) -> None:
        """GB2312 read as GB18030; UTF-8 labelled latin-1 read as UTF-8; broken bytes give
        replacement characters."""
        self.assertEqual(mimetext.decode_text("镕".encode("gbk"), "GB2312"), "镕")
        self.assertEqual(mimetext.decode_text("机密".encode(), "iso-8859-1"), "机密")
        self.assertIn("\ufffd", mimetext.decode_text(b"\xff\xfe\x80", "utf-8"))

    def test_bounded(self) -> None:
        """A part's text is cut at its cap, the message's total at its cap, parts past the
        limit are not read."""
        big = (b"Content-Type: text/plain\n\n" + b"x" * 5000)
        limits = mimetext.Limits(part_bytes=1000, total_bytes=2500, parts=3)
        self.assertEqual(len(mimetext.extract(big, limits)[-1].text), 1000)
        parts = b"".join(b"--b\n\nword %d\n" % i for i in range(50))
        many = b"Content-Type: multipart/mixed; boundary=b\n\n" + parts + b"--b--\n"
        texts = [p for p in mimetext.extract(many, limits) if p.kind == "text"]
        self.assertEqual([p.text for p in texts], ["word 0", "word 1", "word 2"])


    def test_ten_thousand_parts_default_caps(self) -> None:
        """10,000 base64 parts under the default Limits: the first 1,000 are read, the rest
        skipped, and the memory used stays far below the message's."""
        one = (b"--b\nContent-Type: text/plain; charset=gbk\n"
               b"Content-Transfer-Encoding: base64\n\n" + b64("内容" * 30, "gbk"))
        data = b"Content-Type: multipart/mixed; boundary=b\n\n" + one * 10000 + b"--b--\n"
        tracemalloc.start()
        try:
            pieces = mimetext.extract(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual([p.part for p in pieces][-1], "1000")
        self.assertEqual(len(pieces), 1001)
        self.assertLess(peak, len(data) // 4)


class RuleSyntaxTests(unittest.TestCase):
    def test_rule_fields(self) -> None:
        """NAME /REGEX/FLAGS ACTION SCOPE; case-insensitive unless i (Postfix's tables)."""
        rule = parse_rule("leak /机密|secret/ BCC:compliance@mail.example.com outbound")
        self.assertEqual((rule.name, rule.action, rule.bcc, rule.scope),
                         ("leak", "BCC", "compliance@mail.example.com", "outbound"))
        self.assertTrue(rule.regex.search("SECRET"))
        self.assertFalse(parse_rule("x /Secret/i warn both").regex.search("secret"))
        self.assertTrue(parse_rule(r"x #a/b\#c#ms hold inbound").regex.search("A/B#C"))

    def test_errors_with_file_and_line(self) -> None:
        """Every bad line at once, file:line: why."""
        text = ("# rules\nok /a/ WARN both\nbad /a/ PANIC both\nx /(/ WARN both\n"
                "y /a/ WARN sideways\nz /a*/ HOLD both\nok /b/ HOLD both\nw /a BCC:x both\n"
                "v /a/ BCC:nobody both\n")
        with self.assertRaises(TableError) as e:
            parse_rules(text, "/etc/audit")
        self.assertEqual([line.split(": ")[0] for line in e.exception.errors],
                         [f"/etc/audit:{n}" for n in (3, 4, 5, 6, 7, 8, 9)])
        self.assertIn("rule ok is already on line 2", e.exception.errors[4])
        self.assertIn("matches the empty text", e.exception.errors[3])

    def test_needles_never_hide_a_match(self) -> None:
        """The literal pre-filter says no only when the pattern cannot match."""
        cases = [("绝密|内部资料", "这是内部资料"), ("password\\s*[:=]", "PassWord ="),
                 ("(?i:ab)c+", "ABccc"), ("strasse", "STRASSE"), ("kelvin", "\u212aelvin"),
                 ("a(bc|de)+f", "adedef"), ("x{0}机密", "机密")]
        for pattern, text in cases:
            regex = re.compile(pattern, re.I)
            self.assertTrue(regex.search(text), pattern)
            self.assertTrue(Needles(regex).may_match(text, {}), pattern)
        self.assertFalse(Needles(re.compile("机密|绝密", re.I)).may_match("公开", {}))


RULES = """\
# compliance rules
subject-secret  /季度报告/  WARN    both
leak            /内部资料/  BCC:compliance@mail.example.com  outbound
big5            /機密檔案/  HOLD    both
customers       /客户名单/  HOLD    inbound
password        /password:\\s*\\S+/ REJECT outbound
"""


class StageCase(PipelineCase):
    def stage(self, rules: str = RULES) -> AuditStage:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(rules)
        table = TableFile(path, parse_rules)
        table.load()
        return AuditStage(table, self.maillog, threads.inline,
                          parse_networks("127.0.0.0/8"), LOCAL)

    def envelope(self, client: Client, sender: str = "joe@far.example") -> Envelope:
        return Envelope("Q9", sender, [Recipient("boss@mail.example.com")], client)


OUTSIDE = Client("smtp", "192.0.2.7", "client.example", "helo.example")
USER = Client("smtp", "192.0.2.8", "laptop.example", "laptop", user="alice")


class ScopeTests(StageCase):
    def test_directions(self) -> None:
        """outbound: authenticated, mynetworks, local submission; inbound: to our domains
        from outside; neither: nothing to audit."""
        nets = parse_networks("127.0.0.0/8")
        for client, way in [(USER, "outbound"), (Client(PICKUP, uid=1000), "outbound"),
                            (Client("smtp", "127.0.0.1"), "outbound"), (OUTSIDE, "inbound"),
                            (Client("lmtp", "127.0.0.1"), "inbound")]:
            self.assertEqual(direction(self.envelope(client), nets, LOCAL), way)
        away = Envelope("Q", "a@b", [Recipient("x@far.example")], OUTSIDE)
        self.assertIsNone(direction(away, nets, LOCAL))

    def test_rules_of_the_scope_only(self) -> None:
        """An inbound message is not checked by outbound rules (password: REJECT), and the
        inbound rule customers holds it; the same from a user is rejected."""
        stage = self.stage()
        held = self.successResultOf(stage(Message(self.envelope(OUTSIDE), SAMPLE)))
        self.assertEqual(held, Hold("audit rule big5, customers"))
        refused = self.successResultOf(stage(Message(self.envelope(USER), SAMPLE)))
        self.assertEqual(refused, Verdict(550, "5.7.1", "Message content rejected"))


class ActionTests(StageCase):
    def test_every_hit_logged_strongest_wins_all_bccs(self) -> None:
        """Several hits: each one a maillog line (part number, match cut to 40), HOLD beats
        BCC and WARN, and the BCC copy is added (NOTIFY=NEVER, once)."""
        stage = self.stage(RULES.replace("REJECT", "WARN") + "long /请勿外传.*/s WARN both\n")
        message = Message(self.envelope(USER), SAMPLE)
        self.assertEqual(self.successResultOf(stage(message)), Hold("audit rule big5"))
        lines = [line.split("]: ", 1)[1] for line in self.maillog.lines]
        self.assertEqual(lines, [
            'audit: Q9: rule=subject-secret action=WARN from=<joe@far.example>'
            ' to=<boss@mail.example.com> part=HEADER match="季度报告"',
            'audit: Q9: rule=leak action=BCC:compliance@mail.example.com'
            ' from=<joe@far.example> to=<boss@mail.example.com> part=1 match="内部资料"',
            'audit: Q9: rule=big5 action=HOLD from=<joe@far.example>'
            ' to=<boss@mail.example.com> part=2 match="機密檔案"',
            'audit: Q9: rule=password action=WARN from=<joe@far.example>'
            ' to=<boss@mail.example.com> part=4 match="password: hunter2"',
            'audit: Q9: rule=long action=WARN from=<joe@far.example>'
            ' to=<boss@mail.example.com> part=1 match="请勿外传。镕"',
        ])
        added = message.envelope.recipients[-1]
        self.assertEqual((added.address, added.params.notify, added.bcc),
                         ("compliance@mail.example.com", ("NEVER",), True))
        self.successResultOf(stage(message))
        self.assertEqual(len(message.envelope.recipients), 2)

    def test_match_cut_and_quoted(self) -> None:
        """The match shown is at most 40 characters, quotes escaped, white space one space."""
        stage = self.stage('q /say "[^"]+"\\s+x+/ WARN both\n')
        data = b'Subject: hi\n\nsay "hello"\n ' + b"x" * 100 + b"\n"
        self.assertIsNone(self.successResultOf(stage(Message(self.envelope(USER), data))))
        shown = self.maillog.lines[-1].split("match=", 1)[1]
        self.assertEqual(shown, '"say \\"hello\\" ' + "x" * 28 + '"')

    def test_bcc_copy_delivered_through_the_pipeline(self) -> None:
        """Through the pipeline: a BCC hit delivers the message to the compliance mailbox too
        (here alice), and the door's recipient gets its own result."""
        self.pipeline.stages = [self.stage("leak /内部资料/ BCC:alice@mail.example.com both\n")]
        env = Envelope("Q9", "joe@far.example",
                       [Recipient("boss@mail.example.com",
                                  route=self.local("boss@mail.example.com"))], OUTSIDE)
        results = self.successResultOf(self.pipeline.receive(env, SAMPLE))
        self.assertEqual([r.status for r in results], [DELIVERED, DELIVERED])
        self.assertEqual(len(inbox(self.store, ALICE)), 1)

    def test_reject_through_the_pipeline(self) -> None:
        """REJECT: every recipient refused with 550 5.7.1, nothing delivered."""
        self.pipeline.stages = [self.stage("r /客户名单/ REJECT both\n")]
        env = Envelope("Q9", "joe@far.example",
                       [Recipient("boss@mail.example.com",
                                  route=self.local("boss@mail.example.com"))], OUTSIDE)
        (result,) = self.successResultOf(self.pipeline.receive(env, SAMPLE))
        self.assertEqual((result.status, result.code, result.dsn), (REFUSED, 550, "5.7.1"))

    def test_decoding_and_matching_leave_the_reactor(self) -> None:
        """The stage hands the decoding and matching to ``blocking`` (the thread pool) and
        decides only when that work is done."""
        calls: list[tuple] = []
        pending: defer.Deferred[list] = defer.Deferred()

        def blocking(f, *args):  # type: ignore[no-untyped-def]
            calls.append((f, args))
            return pending

        stage = self.stage()
        stage.blocking = blocking
        d = stage(Message(self.envelope(OUTSIDE), SAMPLE))
        self.assertNoResult(d)
        self.assertEqual(calls[0][1], ("inbound", SAMPLE))
        self.assertEqual(self.maillog.lines, [])
        pending.callback(calls[0][0](*calls[0][1]))
        self.assertEqual(self.successResultOf(d), Hold("audit rule big5, customers"))

    def test_no_rule_of_the_scope_decodes_nothing(self) -> None:
        """Rules of the other scope only: the message is not decoded at all."""
        self.assertEqual(scan([], b"\xff" * 10), [])


class StartupTests(unittest.TestCase):
    def test_config_and_broken_file(self) -> None:
        """[audit] rules names the file; a broken one refuses the start with file:line."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("ok /机密/ HOLD both\nbad /x/ HOLD nowhere\n")
        with self.assertRaises(StartupError) as e:
            filter.stages(real_config(audit={"rules": path}), None, None, threads.inline)
        self.assertEqual(str(e.exception),
                         f"[audit] rules: {path}:2: scope 'nowhere': one of inbound, outbound,"
                         " both")
        with open(path, "w", encoding="utf-8") as f:
            f.write("ok /机密/ HOLD both\n")
        cfg = real_config(audit={"rules": path}, auth_checks={"enabled": False})
        (stage,) = filter.stages(cfg, None, None, threads.inline)
        self.assertIsInstance(stage, AuditStage)

    def test_changed_file_reread_broken_change_kept(self) -> None:
        """A changed rules file is used from the next message on; a broken change is logged
        with file:line and the rules before it stay."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("one /机密/ WARN both\n")
        maillog = MailLog(None, "mail.example.com")
        cfg = real_config(audit={"rules": path}, auth_checks={"enabled": False})
        (stage,) = filter.stages(cfg, None, maillog, threads.inline)
        env = Envelope("Q1", "a@far.example", [Recipient("boss@mail.example.com")], OUTSIDE)
        with open(path, "w", encoding="utf-8") as f:
            f.write("two /机密/ HOLD both\n")
        os.utime(path, ns=(1, 1))
        self.assertEqual(self.successResultOf(stage(Message(env, SAMPLE))),
                         Hold("audit rule two"))
        with open(path, "w", encoding="utf-8") as f:
            f.write("three /机密/ HOLD\n")
        self.assertEqual(self.successResultOf(stage(Message(env, SAMPLE))),
                         Hold("audit rule two"))
        self.assertIn(f"cleanup[{os.getpid()}]: warning: {path}:1: expected ACTION SCOPE after"
                      " the pattern, not 'HOLD': the table is not changed", "\n".join(
                          maillog.lines))
