"""Postfix's content checks (mailsuite.filter.checks, mailsuite.filter.regexptable): the table
syntax of regexp_table(5)/pcre_table(5), each action of header_checks(5), which headers each
class sees, the logging of cleanup(8), reloading and refusing broken tables."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from mailsuite import configschema
from mailsuite.config import ConfigError, parse_config
from mailsuite.filter import checks
from mailsuite.filter.regexptable import TableError, TableFile, parse_table
from mailsuite.maillog import MailLog
from mailsuite.mta.transaction import (
    PICKUP,
    QUEUED,
    Client,
    Discard,
    Envelope,
    Hold,
    Message,
    Pipeline,
    Recipient,
    Verdict,
)
from mailsuite.startup import StartupError
from mailsuite.threads import inline
from tests.fakes import FakeDelivery, FakeQueue

HEADERS = (b"Received: from x\n\tby y; Mon, 1 Dec 2026 10:00:00 +0000\n"
           b"From: a@example.org\nTo: b@example.com\nSubject: hello there\n")


def table(text: str, kind: str = "regexp") -> checks.Tables:
    return checks.Tables({checks.HEADER: [_Fixed(text, kind)]})


class _Fixed:
    """A TableFile without a file."""

    def __init__(self, text: str, kind: str = "regexp") -> None:
        self.table = parse_table(text, kind, "/etc/t", checks.validate_action)

    def current(self) -> tuple[object, None]:
        return self.table, None


def run(tables: checks.Tables, data: bytes, door: str = "smtp",
        recipients: tuple[str, ...] = ("b@example.com",)) -> tuple[object, Message, MailLog]:
    client = Client(door, "192.0.2.1", "mx.example.org", helo="mx.example.org")
    env = Envelope("4F2B3C", "a@example.org", [Recipient(r) for r in recipients], client)
    message = Message(env, data)
    maillog = MailLog(None, "mail")
    d = checks.ContentChecks(tables, maillog, inline)(message)
    decisions: list[object] = []
    d.addCallback(decisions.append)
    return decisions[0], message, maillog


def logged(maillog: MailLog) -> list[str]:
    return [line.split(": ", 1)[1] for line in maillog.lines]


class TableSyntax(unittest.TestCase):
    def lookup(self, text: str, subject: str, kind: str = "regexp") -> str | None:
        found = parse_table(text, kind, "/etc/t").lookup(subject)
        return None if found is None else found[0]

    def test_case_insensitive_by_default_and_i_toggles(self) -> None:
        self.assertEqual(self.lookup("/^subject: x/ DUNNO", "SUBJECT: X"), "DUNNO")
        self.assertIsNone(self.lookup("/^subject: x/i DUNNO", "SUBJECT: X"))
        self.assertIsNone(self.lookup("/^subject: x/i DUNNO", "SUBJECT: X", "pcre"))

    def test_first_match_wins_and_substitution(self) -> None:
        text = "/^Subject: (\\w+) (\\w+)/ PREPEND X-Words: $2 ${1} $$3\n/^Subject/ WARN\n"
        self.assertEqual(self.lookup(text, "Subject: good day"), "PREPEND X-Words: day good $3")
        self.assertEqual(self.lookup(text, "Subject:"), "WARN")

    def test_negation_and_second_pattern(self) -> None:
        self.assertEqual(self.lookup("!/^From:/ WARN", "To: x"), "WARN")
        self.assertIsNone(self.lookup("!!/^To:/ WARN", "From: x"))
        text = "/^From:/!/example\\.org/ REJECT"
        self.assertEqual(self.lookup(text, "From: a@spam.test"), "REJECT")
        self.assertIsNone(self.lookup(text, "From: a@example.org"))

    def test_if_endif_nesting(self) -> None:
        text = ("if /^Subject:/\nif !/urgent/\n/money/ REJECT\nendif\n/ok/ INFO\nendif\n"
                "/money/ WARN\n")
        self.assertEqual(self.lookup(text, "Subject: money"), "REJECT")
        self.assertEqual(self.lookup(text, "Subject: urgent money"), "WARN")
        self.assertEqual(self.lookup(text, "Subject: urgent ok"), "INFO")
        self.assertEqual(self.lookup(text, "X-Money: money"), "WARN")

    def test_comments_continuation_and_delimiters(self) -> None:
        text = "# a comment\n\n   # indented comment\n/^Subject:/ REJECT go\n  away\n|x/y|m INFO\n"
        self.assertEqual(self.lookup(text, "Subject: x"), "REJECT go  away")
        self.assertEqual(self.lookup(text, "x/y"), "INFO")

    def test_posix_syntax(self) -> None:
        """regexp: is POSIX: classes, a literal backslash in brackets, ``.`` over newlines
        (a folded header), GNU word edges; ``m`` stops ``.`` at a newline; ``x`` is basic."""
        self.assertEqual(self.lookup("/^[[:digit:]]{3}$/ OK", "123"), "OK")
        self.assertEqual(self.lookup("/a[\\.]b/ OK", "a\\b"), "OK")
        self.assertEqual(self.lookup("/^Subject:.*fold/ OK", "Subject: a\n\tfold"), "OK")
        self.assertIsNone(self.lookup("/^Subject:.*fold/m OK", "Subject: a\n\tfold"))
        self.assertEqual(self.lookup("/\\<cat\\>/ OK", "a cat b"), "OK")
        self.assertIsNone(self.lookup("/\\<cat\\>/ OK", "concatenate"))
        self.assertEqual(self.lookup("/^a\\(b\\)*c+$/x OK", "abbc+"), "OK")

    def test_pcre_flags(self) -> None:
        self.assertIsNone(self.lookup("/^Subject:.*fold/ OK", "Subject: a\n\tfold", "pcre"))
        self.assertEqual(self.lookup("/^Subject:.*fold/s OK", "Subject: a\n\tfold", "pcre"),
                         "OK")
        self.assertEqual(self.lookup("/^fold/m OK", "Subject: a\nfold", "pcre"), "OK")
        self.assertEqual(self.lookup("/ a b /x OK", "ab", "pcre"), "OK")
        self.assertIsNone(self.lookup("/b/A OK", "ab", "pcre"))
        self.assertEqual(self.lookup("/\\d+/ OK", "42", "pcre"), "OK")

    def test_broken_tables_name_file_and_line(self) -> None:
        cases = {
            "/ok/ DUNNO\n/(/ REJECT": "2: bad pattern /(/",
            "/a/q REJECT": "1: unknown regexp flag 'q'",
            "/a/U REJECT": None,
            "/unclosed REJECT": "1: no closing '/'",
            "if /a/\n/b/ REJECT": "1: if without a matching endif",
            "endif": "1: endif without a matching if",
            "/a/": "1: no result after the pattern",
            "/a/ REJECT $1": "1: $1 but the pattern has 0 group(s)",
            "!/(a)/ REJECT $1": "1: $number in the result of a negated pattern",
            "/a/ REJECT $x": "1: $x: a substitution is a group number",
            "REJECT": "1: not a rule",
            "/a/\n  REJECT\n/b/ FROB": "3: unknown action 'FROB'",
            "/a/ FILTER smtp:[127.0.0.1]:10025": "1: FILTER is not supported",
            "/a/ PREPEND": "1: PREPEND needs its text",
            "/a/ REDIRECT nobody": "1: REDIRECT needs user@domain",
            " /a/ REJECT": "1: a line starting with whitespace continues nothing",
            "/[[:nope:]]/ REJECT": "1: unknown character class",
        }
        for text, message in cases.items():
            kind = "pcre" if "/U" in text else "regexp"
            e = self.assertRaises(TableError, parse_table, text, kind, "/etc/t",
                                  checks.validate_action)
            if message is None:
                self.assertIn("flag U (PCRE_UNGREEDY) is not supported", str(e))
            else:
                self.assertTrue(str(e).startswith(f"/etc/t:{message}"), (text, str(e)))

    def test_pcre_features_python_lacks_are_refused(self) -> None:
        for pattern in ("(?R)", "\\Qa.b\\E", "\\p{Han}", "(?<name>x)\\k<name>x"):
            e = self.assertRaises(TableError, parse_table, f"/{pattern}/ REJECT", "pcre",
                                  "/etc/t")
            self.assertIn("/etc/t:1: bad pattern", str(e))


class Actions(unittest.TestCase):
    def test_reject_default_text_and_log_line(self) -> None:
        decision, _, maillog = run(table("/^Subject: hello/ REJECT"), HEADERS)
        self.assertEqual(decision, Verdict(550, "5.7.1", "message content rejected"))
        self.assertEqual(logged(maillog), [
            "4F2B3C: reject: header Subject: hello there from mx.example.org[192.0.2.1];"
            " from=<a@example.org> to=<b@example.com> proto=ESMTP helo=<mx.example.org>:"
            " 5.7.1 message content rejected"])

    def test_reject_text_and_dsn(self) -> None:
        self.assertEqual(run(table("/^Subject/ REJECT go away"), HEADERS)[0],
                         Verdict(550, "5.7.1", "go away"))
        self.assertEqual(run(table("/^Subject/ REJECT 4.7.0 later"), HEADERS)[0],
                         Verdict(451, "4.7.0", "later"))
        self.assertEqual(run(table("/^Subject/ REJECT 5.7.9 no"), HEADERS)[0],
                         Verdict(550, "5.7.9", "no"))

    def test_pickup_logs_from_local(self) -> None:
        _, _, maillog = run(table("/^Subject/ WARN look"), HEADERS, door=PICKUP)
        self.assertEqual(logged(maillog), [
            "4F2B3C: warning: header Subject: hello there from local;"
            " from=<a@example.org> to=<b@example.com>: look"])

    def test_discard_and_hold(self) -> None:
        self.assertEqual(run(table("/^Subject/ DISCARD spam"), HEADERS)[0], Discard("spam"))
        decision, _, maillog = run(table("/^From/ HOLD look first\n/^Subject/ HOLD again"),
                                   HEADERS)
        self.assertEqual(decision, Hold("look first"))
        self.assertEqual([line.split(": ")[1] for line in logged(maillog)], ["hold"])
        self.assertEqual(run(table("/^Received/ HOLD"), HEADERS)[0], Hold(  # one line
            "header_checks: Received: from x by y; Mon, 1 Dec 2026 10:00:00 +0000"))
        decision, _, _ = run(table("/^From/ HOLD\n/^Subject/ DISCARD"), HEADERS)
        self.assertEqual(decision, Discard("discarded by header_checks"))

    def test_reject_ends_the_checks(self) -> None:
        decision, _, maillog = run(table("/^From/ REJECT\n/^Subject/ HOLD"), HEADERS)
        self.assertIsInstance(decision, Verdict)
        self.assertEqual(len(maillog.lines), 1)

    def test_warn_info_dunno_ok(self) -> None:
        text = "/^From/ WARN w\n/^To/ INFO\n/^Subject/ DUNNO\n/^Received/ OK\n"
        decision, message, maillog = run(table(text), HEADERS)
        self.assertIsNone(decision)
        self.assertEqual(message.data, HEADERS)
        self.assertEqual([line.split(": ")[1] for line in logged(maillog)], ["warning", "info"])

    def test_dunno_stops_the_search_for_its_line(self) -> None:
        decision, _, _ = run(table("/^Subject: hello/ DUNNO\n/^Subject/ REJECT"), HEADERS)
        self.assertIsNone(decision)

    def test_prepend_replace_ignore_strip(self) -> None:
        text = ("/^Subject: (.*)/ REPLACE Subject: [ext] $1\n/^From:/ PREPEND X-Seen: yes\n"
                "/^To:/ IGNORE\n/^Received:/ STRIP\n")
        _, message, maillog = run(table(text), HEADERS + b"\nbody\n")
        self.assertEqual(message.data, b"X-Seen: yes\nFrom: a@example.org\n"
                         b"Subject: [ext] hello there\n\nbody\n")
        self.assertEqual([line.split(": ")[1] for line in logged(maillog)],
                         ["strip", "prepend", "replace"])

    def test_prepend_needs_a_header_in_header_checks(self) -> None:
        _, message, maillog = run(table("/^Subject/ PREPEND not a header"), HEADERS)
        self.assertEqual(message.data, HEADERS)
        self.assertEqual(logged(maillog), ['warning: bad PREPEND header text "not a header" in '
                                           'header_checks map -- need "headername: headervalue"'])

    def test_redirect_and_bcc(self) -> None:
        text = "/^From/ BCC audit@example.com\n/^To/ REDIRECT boss@example.com\n"
        decision, message, _ = run(table(text), HEADERS, recipients=("b@example.com", "c@x"))
        self.assertIsNone(decision)
        self.assertEqual([r.address for r in message.envelope.recipients],
                         ["boss@example.com", "audit@example.com"])

    def test_bad_redirect_after_substitution_is_a_warning(self) -> None:
        _, message, maillog = run(table("/^Subject: (\\w+)/ REDIRECT $1"), HEADERS)
        self.assertEqual([r.address for r in message.envelope.recipients], ["b@example.com"])
        self.assertIn('warning: bad REDIRECT target "hello"', logged(maillog)[0])

    def test_pass_ends_the_checks(self) -> None:
        decision, _, _ = run(table("/^From/ PASS\n/^Subject/ REJECT"), HEADERS)
        self.assertIsNone(decision)


MIME_MESSAGE = (
    b"From: a@example.org\nSubject: report\nMIME-Version: 1.0\n"
    b"Content-Type: multipart/mixed;\n boundary=\"XX\"\n\npreamble\n--XX\n"
    b"Content-Type: text/plain\nX-Part: one\n\nhello body\n--XX\n"
    b"Content-Type: message/rfc822\n\nFrom: inner@example.net\nSubject: inner\n"
    b"Content-Type: text/plain\n\ninner body\n--XX--\nepilogue\n")


class Classes(unittest.TestCase):
    def seen(self, where: str) -> list[str]:
        rule = "/^(.*)$/ WARN\n"
        tables = checks.Tables({where: [_Fixed(rule)]})
        _, _, maillog = run(tables, MIME_MESSAGE)
        return [line.split(" from mx.example.org")[0].split(": ", 2)[2]
                for line in logged(maillog)]

    def test_header_checks_see_the_primary_headers_but_mime_ones(self) -> None:
        self.assertEqual(self.seen(checks.HEADER),
                         ["header From: a@example.org", "header Subject: report"])

    def test_mime_header_checks(self) -> None:
        self.assertEqual(self.seen(checks.MIME), [
            "header MIME-Version: 1.0",
            'header Content-Type: multipart/mixed;\\x0a boundary="XX"',  # the maillog's \n
            "header Content-Type: text/plain", "header X-Part: one",
            "header Content-Type: message/rfc822", "header Content-Type: text/plain"])

    def test_nested_header_checks(self) -> None:
        self.assertEqual(self.seen(checks.NESTED),
                         ["header From: inner@example.net", "header Subject: inner"])

    def test_body_checks_see_lines_and_boundaries(self) -> None:
        """Also the empty line after each header block, as Postfix's mime_state."""
        self.assertEqual(self.seen(checks.BODY), [
            "body ", "body preamble", "body --XX", "body ", "body hello body", "body --XX",
            "body ", "body ", "body inner body", "body --XX--", "body epilogue"])

    def test_body_checks_size_limit_per_segment(self) -> None:
        tables = checks.Tables({checks.BODY: [_Fixed("/^(.*)$/ WARN")]}, body_limit=12)
        data = HEADERS + b"\nline one\nline two\nline three\n"
        _, _, maillog = run(tables, data)
        self.assertEqual([line.split(" from ")[0].split("body ")[1] for line in logged(maillog)],
                         ["", "line one", "line two"])

    def test_body_edits_and_long_lines_in_pieces(self) -> None:
        tables = checks.Tables({checks.BODY: [_Fixed(
            "/^ecre$/ REPLACE [removed]\n/^drop$/ IGNORE\n/^z+$/ WARN\n/^note/ PREPEND > quoted")
        ]}, line_limit=4)
        data = HEADERS + b"\nmy secret\ndrop\nnote\nzzzzzz\n"
        _, message, maillog = run(tables, data)
        self.assertEqual(message.data, HEADERS + b"\nmy s[removed]t\n> quoted\nnote\nzzzzzz\n")
        self.assertEqual(sum(" warning: body zz" in line for line in maillog.lines), 2)

    def test_big_body_past_the_limit_is_not_read_line_by_line(self) -> None:
        tables = checks.Tables({checks.BODY: [_Fixed("/needle/ REJECT")]})
        body = b"x" * 70 + b"\n"
        data = HEADERS + b"\n" + body * 150000 + b"needle\n"
        self.assertIsNone(run(tables, data)[0])
        early = HEADERS + b"\nneedle\n" + body * 150000
        self.assertIsInstance(run(tables, early)[0], Verdict)


class Reload(unittest.TestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.now = 100.0
        self.write("/^Subject/ REJECT one\n")
        self.file = TableFile("regexp", self.path, checks.validate_action, lambda: self.now)

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)
        os.utime(self.path, ns=(int(self.now * 1e9), int(self.now * 1e9)))

    def result(self) -> tuple[str | None, str | None]:
        table, why = self.file.current()
        found = table.lookup("Subject: x")
        return (found[0] if found else None), why

    def test_change_is_read_at_most_once_a_second(self) -> None:
        self.now += 0.5
        self.write("/^Subject/ REJECT two\n")
        self.assertEqual(self.result(), ("REJECT one", None))
        self.now += 1
        self.assertEqual(self.result(), ("REJECT two", None))

    def test_broken_change_keeps_the_previous_version_and_says_so_once(self) -> None:
        self.now += 2
        self.write("/^Subject/ REJECT two\n/(/ WARN\n")
        result, why = self.result()
        self.assertEqual(result, "REJECT one")
        assert why is not None
        self.assertTrue(why.startswith(f"{self.path}:2: bad pattern /(/"), why)
        self.assertIn("the previous version stays in use", why)
        self.now += 2
        self.assertEqual(self.result(), ("REJECT one", None))
        self.now += 2
        self.write("/^Subject/ REJECT three\n")
        self.assertEqual(self.result(), ("REJECT three", None))

    def test_removed_file_keeps_the_previous_version(self) -> None:
        os.unlink(self.path)
        self.now += 2
        result, why = self.result()
        self.assertEqual(result, "REJECT one")
        assert why is not None
        self.assertIn("No such file or directory: the previous version stays in use", why)

    def test_refused_change_is_logged_by_the_stage(self) -> None:
        tables = checks.Tables({checks.HEADER: [self.file]})  # type: ignore[list-item]
        self.now += 2
        self.write("/^Subject/ FROB\n")
        decision, _, maillog = run(tables, HEADERS)
        self.assertEqual(decision, Verdict(550, "5.7.1", "one"))
        self.assertIn(f"warning: {self.path}:1: unknown action 'FROB'", maillog.lines[0])


class Configuration(unittest.TestCase):
    def cfg(self, text: str) -> configschema.Config:
        return parse_config("[mail]\nmyhostname = mx.example.com\n" + text, "mail.ini")

    def test_keys_defaults_and_several_tables(self) -> None:
        mail = self.cfg("header_checks = regexp:/etc/a, pcre:/etc/b\n").mail
        self.assertEqual(mail.header_checks, [("regexp", "/etc/a"), ("pcre", "/etc/b")])
        self.assertEqual(mail.mime_header_checks, mail.header_checks)
        self.assertEqual(mail.nested_header_checks, mail.header_checks)
        self.assertEqual((mail.body_checks, mail.body_checks_size_limit), ([], 51200))

    def test_bad_values(self) -> None:
        e = self.assertRaises(ConfigError, self.cfg, "body_checks = hash:/etc/a regexp:x\n")
        self.assertIn("'hash:/etc/a' is not a regexp:/path or pcre:/path table", str(e))
        self.assertIn("'x' is not an absolute path", str(e))

    def test_broken_table_at_start_is_a_startup_error(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("/ok/ DUNNO\n/a/ FROB\n")
        mail = self.cfg(f"body_checks = regexp:{path}\n").mail
        e = self.assertRaises(StartupError, checks.from_config, mail, None, inline)
        self.assertEqual(str(e), f"[mail] body_checks: {path}:2: unknown action 'FROB'")
        missing = self.cfg("header_checks = pcre:/nonexistent/t\n").mail
        e = self.assertRaises(StartupError, checks.from_config, missing, None, inline)
        self.assertEqual(str(e), "[mail] header_checks: /nonexistent/t: "
                         "No such file or directory")

    def test_no_tables_no_stage(self) -> None:
        self.assertIsNone(checks.from_config(self.cfg("").mail, None, inline))


class ReadmeExample(unittest.TestCase):
    def test_the_worked_example_does_what_the_readme_says(self) -> None:
        readme = os.path.join(os.path.dirname(__file__), "..", "README.rst")
        with open(readme) as f:
            text = f.read()
        block = text.split("A worked example, ``/etc/mailsuite/header_checks``::\n\n", 1)[1]
        example = "\n".join(line[4:] for line in block.split("\n\n", 1)[0].splitlines())
        tables = checks.Tables({checks.HEADER: [_Fixed(example)], checks.MIME: [_Fixed(example)]})
        decision, _, maillog = run(tables, HEADERS.replace(b"hello there", b"cheap viagra"))
        self.assertEqual(decision, Verdict(550, "5.7.1", "no spam here"))
        attached = HEADERS + b'Content-Type: application/x-msdownload; name="setup.exe"\n'
        self.assertEqual(run(tables, attached)[0], Verdict(
            550, "5.7.1", "attachments of this type are not accepted"))
        self.assertEqual(run(tables, HEADERS.replace(b"hello there", b"[SECRET] plans"))[0],
                         Hold("classified: plans"))
        self.assertEqual(run(tables, HEADERS + b"X-Mailer: the bulkmailer 2\n")[0],
                         Discard("discarded by header_checks"))
        urgent = HEADERS.replace(b"hello there", b"urgent call")
        self.assertIn(b"X-Priority: 1\nSubject: urgent call", run(tables, urgent)[1].data)
        _, _, maillog = run(tables, HEADERS + b"X-Ok: 1\nOdd-Header: 1\n")
        self.assertEqual([line.split(": ", 2)[1] for line in logged(maillog)], ["warning"],
                         maillog.lines)
        self.assertIn("header Odd-Header: 1", maillog.lines[0])


class _HoldingQueue(FakeQueue):
    """FakeQueue with the hold queue's entry point (Queue.hold is another branch's)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[object, bytes, str]] = []

    def hold(self, env: object, data: bytes, reason: str) -> object:
        self.held.append((env, data, reason))
        return defer.succeed(None)


class InThePipeline(unittest.TestCase):
    def test_hold_reaches_the_hold_queue_with_the_edits(self) -> None:
        """HOLD (after a PREPEND) through the accept pipeline: taken (queued), the edited
        message and the reason handed to the hold queue, nothing delivered."""
        delivery = FakeDelivery()
        delivery.queue = _HoldingQueue()
        stage = checks.ContentChecks(table("/^From/ PREPEND X-Seen: 1\n/^Subject/ HOLD look"),
                                     MailLog(None, "mail"), inline)
        pipeline = Pipeline(delivery, MailLog(None, "mail"), "mx", lambda: 0.0, [stage])
        env = Envelope("Q1", "a@example.org", [Recipient("boss@ex.test")], Client(PICKUP))
        results: list[object] = []
        pipeline.deliver(env, HEADERS).addCallback(results.extend)
        self.assertEqual([r.status for r in results], [QUEUED])  # type: ignore[attr-defined]
        (env_held, data, reason), = delivery.queue.held
        self.assertEqual(reason, "look")
        self.assertEqual([r.address for r in env_held.recipients], ["boss@ex.test"])  # type: ignore[attr-defined]
        self.assertIn(b"X-Seen: 1\nFrom: a@example.org", data)
        self.assertEqual(delivery.delivered, [])
