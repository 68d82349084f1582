"""The IMAP server driven over StringTransport against a MemoryStore: every command of issue 2
and a regression test for each TWISTED.md defect on these paths."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from mailsuite.accounts import Account
from mailsuite.config import Config
from mailsuite.imap import server as server_module
from mailsuite.imap.idle import IDLE_POLL
from mailsuite.imap.interfaces import IImapAccount
from mailsuite.imap.account import ImapAccount
from mailsuite.imap.server import IMAPFactory
from mailsuite.maillog import MailLog
from mailsuite.store.interfaces import Changes
from mailsuite.store.memory import MemoryStore
from mailsuite.wire import to_wire
from tests.configs import real_config

BOSS = Account("boss", 1000, 1000, "/home/boss")
WHEN = datetime(2026, 9, 14, 17, 7, 10, tzinfo=UTC)
MESSAGE = (
    b"Received: from a by b\n"
    b"Received: from c by d\n"
    b"From: Bob Sender <bob@example.org>\n"
    b"To: boss@example.com\n"
    b"Subject: Caf\xc3\xa9 plans\n"
    b"Date: Mon, 14 Sep 2026 19:07:10 +0200\n"
    b"Message-ID: <1@example.org>\n"
    b"\n"
    b"Hello boss,\n"
    b"lunch at noon?\n"
)


def make_config(disable_plaintext_auth: bool = True, trusted: list[Any] | None = None,
                imap_max_line_length: int = 64 * 1024) -> Config:
    """The defaults, with these [auth] and [imap] keys."""
    return real_config(
        auth={"disable_plaintext_auth": disable_plaintext_auth,
              "login_trusted_networks": trusted or []},
        imap={"imap_max_line_length": imap_max_line_length},
    )


@implementer(IRealm)
class TinyRealm:
    """Hands out ImapAccount avatars as MailRealm does; remembers them for the tests."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.avatars: list[ImapAccount] = []

    def requestAvatar(self, avatar_id: bytes, mind: object, *interfaces: object) -> Any:
        avatar = ImapAccount(self.store, Account(avatar_id.decode(), 1000, 1000, "/home/x"))
        self.avatars.append(avatar)
        return IImapAccount, avatar, avatar.logout


def make_portal(store: MemoryStore) -> tuple[Portal, TinyRealm]:
    realm = TinyRealm(store)
    return Portal(realm, [InMemoryUsernamePasswordDatabaseDontUse(boss=b"secret")]), realm


class Session:
    """One client connection over a StringTransport."""

    def __init__(self, factory: IMAPFactory, peer: str = "127.0.0.1") -> None:
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 143),
            peerAddress=IPv4Address("TCP", peer, 40000),
        )
        self.proto.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def send(self, data: bytes) -> bytes:
        self.proto.dataReceived(data)
        return self.take()

    def cmd(self, line: bytes) -> bytes:
        return self.send(line + b"\r\n")

    def login(self) -> bytes:
        return self.cmd(b"L1 LOGIN boss secret")

    def select(self, name: bytes = b"INBOX") -> bytes:
        self.login()
        return self.cmd(b"S1 SELECT " + name)


class ImapTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore(now=lambda: WHEN)
        self.portal, self.realm = make_portal(self.store)
        self.maillog = MailLog(None, "mail.example.com", now=lambda: 0.0)
        self.clock = Clock()
        self.factory = IMAPFactory(make_config(), self.portal, self.maillog, clock=self.clock)

    def deliver(self, data: bytes = MESSAGE) -> None:
        self.successResultOf(self.store.deliver(BOSS, data, "bob@example.org"))

    def box(self) -> Any:
        return self.store._box(BOSS, "INBOX", create=True)

    def session(self, peer: str = "127.0.0.1") -> Session:
        return Session(self.factory, peer)


def caps_of(replies: bytes) -> set[bytes]:
    """The names of the ``* CAPABILITY`` line among ``replies`` (exactly one such line)."""
    lines = [line for line in replies.split(b"\r\n") if line.startswith(b"* CAPABILITY ")]
    assert len(lines) == 1, replies
    names = lines[0].split()[2:]
    assert len(names) == len(set(names)), lines[0]  # each advertised once
    return set(names)


class GreetingLoginTests(ImapTestCase):
    def test_capability_lists_only_what_is_implemented(self) -> None:
        """CAPABILITY before and after login: IMAP4rev1 and every extension that works (OUTLOOK.md
        item 1); before login also SASL-IR and AUTH= (loopback may log in in clear); after login
        none of the login capabilities; never UIDONLY; no STARTTLS without a certificate."""
        s = self.session()
        caps = s.cmd(b"a CAPABILITY")
        extensions = {
            b"LITERAL+", b"ID", b"ENABLE", b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE", b"UNSELECT",
            b"CHILDREN", b"SPECIAL-USE", b"XLIST",
            b"LIST-EXTENDED", b"LIST-STATUS", b"STATUS=SIZE", b"CREATE-SPECIAL-USE", b"OBJECTID",
            b"MULTIAPPEND", b"BINARY", b"PREVIEW",
            b"SORT", b"SORT=DISPLAY", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES",
            b"THREAD=REFS", b"ESEARCH", b"ESORT", b"SEARCHRES", b"WITHIN",
            b"CONTEXT=SEARCH", b"CONTEXT=SORT",
            b"CONDSTORE", b"QRESYNC", b"IMAP4rev2", b"SAVEDATE",
        }
        after_login_only = {b"NOTIFY", b"UNAUTHENTICATE", b"COMPRESS=DEFLATE", b"UTF8=ACCEPT",
                            b"APPENDLIMIT=10240000", b"CATENATE", b"URL-PARTIAL"}
        self.assertEqual(caps_of(caps), {b"IMAP4rev1", b"SASL-IR", b"AUTH=PLAIN", b"AUTH=LOGIN"}
                         | extensions)
        self.assertIn(b"* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN ", caps)
        self.assertIn(b"a OK", caps)
        s.login()
        after = s.cmd(b"b CAPABILITY")
        self.assertEqual(caps_of(after), {b"IMAP4rev1"} | extensions | after_login_only)
        self.assertIn(b"* CAPABILITY IMAP4rev1 ", after)
        for absent in (b"STARTTLS", b"UIDONLY", b"LOGINDISABLED"):
            self.assertNotIn(absent, caps + s.greeting + after)
        for absent in (b"AUTH=", b"SASL-IR"):
            self.assertNotIn(absent, after)

    def test_login_quoted_and_logged(self) -> None:
        """LOGIN with quoted strings succeeds; imap-login logs the Dovecot Login line."""
        s = self.session()
        self.assertIn(b"a OK [CAPABILITY IMAP4rev1", s.cmd(b'a LOGIN "boss" "secret"'))
        self.assertTrue(self.maillog.lines[-1].endswith(
            "dovecot: imap-login: "
            "Login: user=<boss>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1"
        ))

    def test_login_literals(self) -> None:
        """LOGIN with two literals (a continuation for each) succeeds."""
        s = self.session()
        self.assertTrue(s.cmd(b"a LOGIN {4}").startswith(b"+ "))
        self.assertTrue(s.cmd(b"boss {6}").startswith(b"+ "))
        self.assertIn(b"a OK", s.cmd(b"secret"))

    def test_failed_login_logs_fail2ban_shape(self) -> None:
        """A wrong password: NO [AUTHENTICATIONFAILED] and a line fail2ban's dovecot filter
        reads."""
        s = self.session()
        self.assertIn(b"a NO [AUTHENTICATIONFAILED]", s.cmd(b"a LOGIN boss wrong"))
        s.cmd(b"b LOGIN boss wrong")
        line = self.maillog.lines[-1]
        fail2ban = re.compile(
            r"dovecot: imap-login: (?:Aborted login|Disconnected)(?::(?: [^ \(]+)+)? "
            r"\((?:auth failed, \d+ attempts(?: in \d+ secs)?)\):"
            r"(?: user=<[^>]*>,)?(?: method=\S+,)? "
            r"rip=(?P<host>\S+), lip="
        )
        m = fail2ban.search(line)
        self.assertIsNotNone(m, line)
        assert m is not None
        self.assertEqual(m.group("host"), "127.0.0.1")
        self.assertIn("auth failed, 2 attempts", line)

    def test_plaintext_disabled_on_untrusted_network(self) -> None:
        """disable_plaintext_auth without TLS from a remote address: LOGINDISABLED and LOGIN NO."""
        s = self.session(peer="192.0.2.7")
        self.assertIn(b"LOGINDISABLED", s.greeting)
        self.assertIn(b"a NO [PRIVACYREQUIRED]", s.cmd(b"a LOGIN boss secret"))

    def test_trusted_network_may_log_in(self) -> None:
        """login_trusted_networks allows plaintext LOGIN without TLS."""
        import ipaddress

        self.factory.config = make_config(trusted=[ipaddress.ip_network("192.0.2.0/24")])
        s = self.session(peer="192.0.2.7")
        self.assertNotIn(b"LOGINDISABLED", s.greeting)
        self.assertIn(b"a OK", s.cmd(b"a LOGIN boss secret"))

    def test_noop_and_logout(self) -> None:
        """NOOP answers OK; LOGOUT sends BYE, OK, closes and logs Logged out in= out=."""
        s = self.session()
        s.login()
        self.assertIn(b"a OK", s.cmd(b"a NOOP"))
        out = s.cmd(b"b LOGOUT")
        self.assertIn(b"* BYE", out)
        self.assertIn(b"b OK", out)
        self.assertTrue(s.transport.disconnecting)
        self.assertRegex(self.maillog.lines[-1],
                         r"dovecot: imap\(boss\): Logged out in=\d+ out=\d+, user=<boss>")

    def test_autologout_after_thirty_minutes(self) -> None:
        """The autologout timer is 30 minutes (RFC 3501 5.4), driven by the injected clock."""
        s = self.session()
        s.login()
        self.clock.advance(29 * 60)
        self.assertFalse(s.transport.disconnecting)
        self.clock.advance(61)
        self.assertIn(b"* BYE", s.take())
        self.assertTrue(s.transport.disconnecting)

    def test_id_and_namespace(self) -> None:
        """ID answers * ID; NAMESPACE gives the personal namespace with separator /."""
        s = self.session()
        self.assertIn(b'* ID ("name" "mailsuite"', s.cmd(b'a ID ("name" "Microsoft Office 365")'))
        self.assertIn(b'* ID ("name" "mailsuite"', s.cmd(b"a2 ID NIL"))
        s.login()
        self.assertIn(b'* NAMESPACE (("" "/")) NIL NIL', s.cmd(b"b NAMESPACE"))


class ListSelectTests(ImapTestCase):
    def test_list_and_lsub_show_inbox(self) -> None:
        """LIST/LSUB "" * show INBOX; LIST "" "" gives the delimiter; other patterns nothing."""
        s = self.session()
        s.login()
        self.assertIn(b'* LIST (\\HasNoChildren) "/" INBOX\r\n', s.cmd(b'a LIST "" "*"'))
        self.assertIn(b'* LSUB (\\HasNoChildren) "/" INBOX\r\n', s.cmd(b'b LSUB "" *'))
        self.assertIn(b'* LIST (\\Noselect) "/" ""\r\n', s.cmd(b'c LIST "" ""'))
        self.assertIn(b'* LIST (\\HasNoChildren) "/" INBOX\r\n', s.cmd(b'd LIST "" inbox'))
        self.assertEqual(s.cmd(b'e LIST "" Work*'), b"e OK List completed.\r\n")

    def test_create_existing_answers_no(self) -> None:
        """CREATE of a mailbox that exists: NO [ALREADYEXISTS], not BAD."""
        s = self.session()
        s.login()
        self.assertIn(b"a OK", s.cmd(b"a CREATE Work"))
        self.assertIn(b"b NO [ALREADYEXISTS]", s.cmd(b"b CREATE Work"))

    def test_select_response_codes(self) -> None:
        """SELECT: FLAGS, PERMANENTFLAGS, EXISTS, RECENT, UNSEEN, UIDVALIDITY, UIDNEXT,
        READ-WRITE."""
        self.deliver()
        self.deliver()
        self.successResultOf(self.box().set_flags({1: frozenset({"\\Seen"})}))
        out = self.session().select()
        for expected in (
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]",
            b"* 2 EXISTS\r\n",
            b"* 0 RECENT\r\n",
            b"* OK [UNSEEN 2]",
            b"* OK [UIDVALIDITY %d]" % self.box().uid_validity,
            b"* OK [UIDNEXT 3]",
            b"S1 OK [READ-WRITE]",
        ):
            self.assertIn(expected, out)

    def test_examine_is_read_only(self) -> None:
        """EXAMINE: [READ-ONLY], STORE and EXPUNGE refused, BODY[] does not set \\Seen."""
        self.deliver()
        s = self.session()
        s.login()
        out = s.cmd(b"a EXAMINE INBOX")
        self.assertIn(b"a OK [READ-ONLY]", out)
        self.assertIn(b"[PERMANENTFLAGS ()]", out)
        self.assertIn(b"b NO", s.cmd(b"b STORE 1 +FLAGS (\\Seen)"))
        s.cmd(b"c FETCH 1 BODY[]")
        self.assertEqual(self.box().messages[0].flags, frozenset())
        self.assertIn(b"d NO", s.cmd(b"d EXPUNGE"))

    def test_select_missing_mailbox_is_no(self) -> None:
        """SELECT of a mailbox that does not exist: NO (Twisted answered BAD Server error)."""
        s = self.session()
        s.login()
        out = s.cmd(b"a SELECT Nowhere")
        self.assertTrue(out.startswith(b"a NO "), out)

    def test_uids_and_validity_come_from_store(self) -> None:
        """Two sessions see the same UIDVALIDITY and UIDs (the store's, not per-session)."""
        self.deliver()
        self.deliver()
        outs = []
        for _ in range(2):
            s = self.session()
            s.select()
            outs.append(s.cmd(b"a FETCH 1:* (UID)"))
        self.assertEqual(outs[0], outs[1])
        self.assertIn(b"* 2 FETCH (UID 2)", outs[0])


class FetchTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver()
        self.s = self.session()
        self.s.select()

    def test_basic_items(self) -> None:
        """UID FLAGS RFC822.SIZE INTERNALDATE in one response."""
        out = self.s.cmd(b"a FETCH 1 (UID FLAGS RFC822.SIZE INTERNALDATE)")
        size = len(MESSAGE) + MESSAGE.count(b"\n")
        self.assertIn(b'* 1 FETCH (UID 1 FLAGS () RFC822.SIZE %d'
                      b' INTERNALDATE "14-Sep-2026 17:07:10 +0000")' % size, out)

    def test_body_is_raw_bytes_with_crlf_and_size_matches(self) -> None:
        """BODY.PEEK[] is the stored bytes with CRLF: duplicate Received and 8-bit Subject survive;
        RFC822.SIZE equals the literal length."""
        out = self.s.cmd(b"a FETCH 1 (RFC822.SIZE BODY.PEEK[])")
        wire = MESSAGE.replace(b"\n", b"\r\n")
        self.assertIn(b"RFC822.SIZE %d BODY[] {%d}\r\n" % (len(wire), len(wire)) + wire + b")", out)

    def test_size_is_body_length_for_crlf_nul_message(self) -> None:
        """A message another program stored with CRLF line ends, bare LFs, NUL bytes and no final
        newline: RFC822.SIZE equals the BODY[] literal length, BODY[] and RFC822 are its wire
        form (NUL sent as 0x80), BODY[HEADER] + BODY[TEXT] == BODY[], and RFC822.HEADER (read
        with the store's read_headers) is BODY[HEADER]."""
        raw = b"Subject: crlf\r\nX-Nul: a\0b\r\n\r\nbody\0\r\nbare lf\nno end"
        self.box().external_append(raw, verbatim=True)
        self.s.cmd(b"n NOOP")
        out = self.s.cmd(b"a FETCH 2 (RFC822.SIZE BODY.PEEK[] BODY.PEEK[HEADER] BODY.PEEK[TEXT])")
        literals = {}
        for name, length in re.findall(rb"(BODY\[[A-Z]*\]) \{(\d+)\}\r\n", out):
            start = out.index(name + b" {%s}\r\n" % length) + len(name) + len(length) + 5
            literals[name] = out[start : start + int(length)]
        size = int(re.search(rb"RFC822.SIZE (\d+)", out).group(1))  # type: ignore[union-attr]
        wire = to_wire(raw)
        self.assertEqual(literals[b"BODY[]"], wire)
        self.assertEqual(size, len(wire))
        self.assertEqual(literals[b"BODY[HEADER]"], b"Subject: crlf\r\nX-Nul: a\x80b\r\n\r\n")
        self.assertEqual(literals[b"BODY[HEADER]"] + literals[b"BODY[TEXT]"], wire)
        self.assertIn(b"RFC822 {%d}\r\n" % len(wire) + wire, self.s.cmd(b"b FETCH 2 RFC822.PEEK"))
        header = literals[b"BODY[HEADER]"]
        self.assertIn(b"RFC822.HEADER {%d}\r\n" % len(header) + header + b")",
                      self.s.cmd(b"c FETCH 2 RFC822.HEADER"))

    def test_body_sets_seen_and_reports_flags(self) -> None:
        """BODY[] (no PEEK) sets \\Seen in the store and reports FLAGS in the same response."""
        out = self.s.cmd(b"a FETCH 1 BODY[]")
        self.assertIn(b"FLAGS (\\Seen))", out)
        self.assertEqual(self.box().messages[0].flags, frozenset({"\\Seen"}))

    def test_peek_does_not_set_seen(self) -> None:
        """BODY.PEEK[...], RFC822.HEADER and rfc822.peek (Outlook, lower case) leave \\Seen
        alone."""
        out = self.s.cmd(b"a uid fetch 1 (UID RFC822.SIZE rfc822.peek BODY.PEEK[HEADER]"
                         b" RFC822.HEADER)")
        self.assertIn(b"RFC822 {", out)
        self.assertNotIn(b"FLAGS", out)
        self.assertEqual(self.box().messages[0].flags, frozenset())

    def test_rfc822_sets_seen(self) -> None:
        """RFC822 and RFC822.TEXT are non-peek fetches."""
        out = self.s.cmd(b"a FETCH 1 RFC822.TEXT")
        self.assertIn(b"RFC822.TEXT {29}\r\nHello boss,\r\nlunch at noon?\r\n", out)
        self.assertIn(b"FLAGS (\\Seen)", out)

    def test_partial_labelled_with_origin(self) -> None:
        """BODY.PEEK[]<0.20> returns 20 bytes labelled BODY[]<0> (Twisted ignored the range)."""
        out = self.s.cmd(b"a FETCH 1 BODY.PEEK[]<2.5>")
        self.assertIn(b"BODY[]<2> {5}\r\nceive)", out)
        out = self.s.cmd(b"b FETCH 1 BODY.PEEK[]<100000.10>")
        self.assertIn(b"BODY[]<100000> {0}\r\n)", out)
        # the offset alone: to the end (as Dovecot; imaptest asks BINARY.PEEK[5]<15>)
        whole = self.s.cmd(b"c FETCH 1 BODY.PEEK[]")
        body = whole[whole.index(b"}\r\n") + 3 : whole.rindex(b")")]
        out = self.s.cmd(b"d FETCH 1 BODY.PEEK[]<2>")
        self.assertIn(b"BODY[]<2> {%d}\r\n" % (len(body) - 2) + body[2:] + b")", out)

    def test_header_fields_keep_duplicates_and_8bit(self) -> None:
        """HEADER.FIELDS serves raw lines in order, duplicates kept, 8-bit intact, blank line
        last."""
        out = self.s.cmd(b"a FETCH 1 BODY.PEEK[HEADER.FIELDS (Received subject)]")
        body = (b"Received: from a by b\r\nReceived: from c by d\r\n"
                b"Subject: Caf\xc3\xa9 plans\r\n\r\n")
        self.assertIn(b"BODY[HEADER.FIELDS (RECEIVED SUBJECT)] {%d}\r\n" % len(body) + body, out)

    def test_header_fields_not_and_text(self) -> None:
        """HEADER.FIELDS.NOT leaves the named fields out; TEXT is the body."""
        out = self.s.cmd(b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS.NOT"
                         b" (Received From To Date Message-ID)] BODY.PEEK[TEXT])")
        self.assertIn(b"{24}\r\nSubject: Caf\xc3\xa9 plans\r\n\r\n", out)
        self.assertIn(b"BODY[TEXT] {29}\r\nHello boss,\r\n", out)

    def test_envelope(self) -> None:
        """ENVELOPE from the raw header; the 8-bit subject goes as a literal."""
        out = self.s.cmd(b"a FETCH 1 ENVELOPE")
        self.assertIn(
            b'ENVELOPE ("Mon, 14 Sep 2026 19:07:10 +0200" {11}\r\nCaf\xc3\xa9 plans '
            b'(("Bob Sender" NIL "bob" "example.org")) (("Bob Sender" NIL "bob" "example.org")) '
            b'(("Bob Sender" NIL "bob" "example.org")) ((NIL NIL "boss" "example.com"))'
            b' NIL NIL NIL "<1@example.org>")',
            out,
        )

    def test_uid_fetch_adds_uid_and_star(self) -> None:
        """UID FETCH n:* includes UID; a range above the last UID still returns the last message."""
        self.assertIn(b"* 1 FETCH (UID 1 FLAGS ())", self.s.cmd(b"a UID FETCH 1:* FLAGS"))
        self.assertIn(b"* 1 FETCH (UID 1 FLAGS ())", self.s.cmd(b"b UID FETCH 5:* FLAGS"))
        self.assertEqual(self.s.cmd(b"c UID FETCH 7 FLAGS"), b"c OK UID FETCH completed.\r\n")

    def test_bad_sequence_and_syntax(self) -> None:
        """A sequence number past EXISTS and an unknown item get BAD, the session goes on."""
        self.assertIn(b"a BAD", self.s.cmd(b"a FETCH 5 FLAGS"))
        self.assertIn(b"b BAD", self.s.cmd(b"b FETCH 1 (FLAGS BOGUS)"))
        self.assertIn(b"c OK", self.s.cmd(b"c NOOP"))

    def test_fast_and_all_macros(self) -> None:
        """FAST and ALL expand to their items."""
        self.assertIn(b"FLAGS () INTERNALDATE", self.s.cmd(b"a FETCH 1 FAST"))
        self.assertIn(b"ENVELOPE (", self.s.cmd(b"b FETCH 1 ALL"))


class StoreSearchExpungeTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver()
        self.deliver(b"From: Carol <carol@example.net>\nSubject: Report\nCc: ann@x.org\n\n"
                     b"Numbers inside\n")
        self.deliver(b"From: bob@example.org\nSubject: again\n\nshort\n")
        self.s = self.session()
        self.s.select()

    def test_store_modes(self) -> None:
        """+FLAGS, -FLAGS, FLAGS and .SILENT; flags reach the store; UID STORE reports UID."""
        self.assertIn(b"* 1 FETCH (FLAGS (\\Flagged \\Seen))",
                      self.s.cmd(b"a STORE 1 +FLAGS (\\Seen \\flagged)"))
        self.assertIn(b"* 1 FETCH (FLAGS (\\Seen))", self.s.cmd(b"b STORE 1 -FLAGS (\\Flagged)"))
        silent = self.s.cmd(b"c STORE 1:2 FLAGS.SILENT (\\Answered $Label1)")
        self.assertNotIn(b"FETCH", silent)  # only the new keyword's FLAGS (test_imap_keywords)
        self.assertTrue(silent.endswith(b"\r\nc OK STORE completed.\r\n"))
        self.assertEqual(self.box().messages[1].flags, frozenset({"\\Answered", "$Label1"}))
        self.assertIn(b"* 3 FETCH (UID 3 FLAGS (\\Draft))",
                      self.s.cmd(b"d UID STORE 3 +FLAGS \\Draft"))
        self.assertIn(b"e BAD", self.s.cmd(b"e STORE 1 +FLAGS (\\Bogus)"))

    def test_search_keys(self) -> None:
        """SEARCH ALL/UNSEEN/SEEN/FROM/SUBJECT/UID/BODY/OR/NOT/LARGER/sequence sets and UID
        SEARCH."""
        self.s.cmd(b"x STORE 2 +FLAGS (\\Seen)")
        cases = {
            b"ALL": b"1 2 3", b"UNSEEN": b"1 3", b"SEEN": b"2", b"FROM bob": b"1 3",
            b'SUBJECT "caf\xc3\xa9"': b"1", b"CHARSET UTF-8 SUBJECT report": b"2",
            b"UID 2:*": b"2 3",
            b"BODY numbers": b"2", b"TEXT ann@x.org": b"2", b"OR SEEN FROM carol": b"2",
            b"NOT FROM bob": b"2", b"LARGER 100": b"1", b"2:3 UNSEEN": b"3", b"CC ann": b"2",
            b"HEADER Message-ID <1@": b"1", b"ON 14-Sep-2026": b"1 2 3", b"BEFORE 1-Jan-2000": b"",
            b"(FROM bob SUBJECT again)": b"3", b"SENTSINCE 1-Sep-2026": b"1", b"NEW": b"",
            b"OLD": b"1 2 3",
        }
        for query, expected in cases.items():
            out = self.s.cmd(b"s SEARCH " + query)
            hits = b" " + expected if expected else b""
            self.assertIn(b"* SEARCH" + hits + b"\r\n", out, query)
            self.assertIn(b"s OK", out)

    def test_empty_search_still_sends_search_line(self) -> None:
        """No match: `* SEARCH` is still sent (Twisted sent none)."""
        self.assertEqual(self.s.cmd(b"a SEARCH FROM nobody"),
                         b"* SEARCH\r\na OK SEARCH completed.\r\n")

    def test_uid_search_returns_uids(self) -> None:
        """UID SEARCH answers UIDs, not sequence numbers (Twisted answered sequence numbers)."""
        self.s.cmd(b"a STORE 1 +FLAGS (\\Deleted)")
        self.s.cmd(b"b EXPUNGE")
        self.assertIn(b"* SEARCH 2 3\r\n", self.s.cmd(b"c UID SEARCH ALL"))
        self.assertIn(b"* SEARCH 1 2\r\n", self.s.cmd(b"d SEARCH ALL"))

    def test_bad_search(self) -> None:
        """An unknown key is BAD; an unknown charset is NO [BADCHARSET]."""
        self.assertIn(b"a BAD", self.s.cmd(b"a SEARCH FROB"))
        self.assertIn(b"b NO [BADCHARSET", self.s.cmd(b"b SEARCH CHARSET KOI8-R ALL"))

    def test_expunge_reports_sequence_numbers(self) -> None:
        """EXPUNGE removes \\Deleted messages and reports each as the sequence number at that
        time."""
        self.s.cmd(b"a STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        out = self.s.cmd(b"b EXPUNGE")
        self.assertEqual(out, b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nb OK EXPUNGE completed.\r\n")
        self.assertEqual([m.uid for m in self.box().messages], [3])

    def test_close_expunges_silently(self) -> None:
        """CLOSE expunges without EXPUNGE responses and leaves the selected state."""
        self.s.cmd(b"a STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(self.s.cmd(b"b CLOSE"), b"b OK Close completed.\r\n")
        self.assertEqual([m.uid for m in self.box().messages], [2, 3])
        self.assertIn(b"c BAD", self.s.cmd(b"c FETCH 1 FLAGS"))
        self.assertEqual(self.box()._listeners, [])

    def test_unselect_keeps_deleted(self) -> None:
        """UNSELECT leaves \\Deleted messages in place."""
        self.s.cmd(b"a STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertIn(b"b OK", self.s.cmd(b"b UNSELECT"))
        self.assertEqual(len(self.box().messages), 3)


class TwoSessionTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver()
        self.deliver()
        self.one, self.two = self.session(), self.session()
        self.one.select()
        self.two.select()

    def test_store_in_one_shows_as_fetch_flags_in_other(self) -> None:
        """A STORE in one session reaches the other as `* n FETCH (FLAGS ...)` after NOOP."""
        self.one.cmd(b"a STORE 2 +FLAGS (\\Flagged)")
        self.assertEqual(self.two.cmd(b"b NOOP"),
                         b"* 2 FETCH (FLAGS (\\Flagged))\r\nb OK NOOP completed.\r\n")
        self.assertEqual(self.two.cmd(b"c NOOP"), b"c OK NOOP completed.\r\n")

    def test_delivery_shows_as_exists_and_recent(self) -> None:
        """A delivery while selected: EXISTS (and RECENT in this session) on the next NOOP."""
        self.deliver()
        out = self.two.cmd(b"a NOOP")
        self.assertEqual(out, b"* 3 EXISTS\r\n* 1 RECENT\r\na OK NOOP completed.\r\n")
        self.assertIn(b"* SEARCH 3", self.two.cmd(b"b SEARCH RECENT"))
        self.assertIn(b"FLAGS (\\Recent)", self.two.cmd(b"c FETCH 3 FLAGS"))

    def test_external_write_seen_after_noop(self) -> None:
        """Mail appended by another program appears when NOOP refreshes the mailbox."""
        self.box().external_append(b"Subject: from mutt\n\nx\n")
        self.assertIn(b"* 3 EXISTS", self.two.cmd(b"a NOOP"))

    def test_no_expunge_during_fetch_store_search(self) -> None:
        """An expunge by another session is held back during FETCH/STORE/SEARCH, sent after NOOP."""
        self.one.cmd(b"a STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.one.cmd(b"b EXPUNGE")
        self.deliver()
        for command in (b"c FETCH 2 UID", b"d STORE 2 +FLAGS (\\Seen)", b"e SEARCH ALL"):
            self.assertNotIn(b"EXPUNGE", self.two.cmd(command))
        self.assertIn(b"* SEARCH 2 3\r\n", self.two.cmd(b"f SEARCH ALL"))
        out = self.two.cmd(b"g FETCH 1 BODY.PEEK[]")
        self.assertIn(b"g NO", out)
        self.assertEqual(self.two.cmd(b"h NOOP"), b"* 1 EXPUNGE\r\nh OK NOOP completed.\r\n")
        self.assertIn(b"* 2 FETCH (UID 3)", self.two.cmd(b"i FETCH 1:* UID"))

    def test_connection_lost_unregisters_and_closes(self) -> None:
        """connectionLost removes the listener and closes the store mailbox (Twisted kept both)."""
        box = self.box()
        self.assertEqual(len(box._listeners), 2)
        users = box.users
        self.one.proto.connectionLost(None)
        self.assertEqual(len(box._listeners), 1)
        self.assertEqual(box.users, users - 1)
        self.assertRegex(self.maillog.lines[-1], r"Disconnected: Connection closed in=\d+ out=\d+")

    def test_logout_closes_mailbox(self) -> None:
        """LOGOUT then connectionLost: the avatar's logout leaves no open mailbox behind."""
        self.one.cmd(b"a LOGOUT")
        self.one.proto.connectionLost(None)
        self.two.proto.connectionLost(None)
        self.assertEqual(self.box()._listeners, [])
        self.assertEqual(self.box().users, 0)


class FactoryStateTests(ImapTestCase):
    """What the sessions of a server share (\\Recent, the IDLE refresh) belongs to their
    factory: no module-level state, so two servers in one process stay apart."""

    def test_recent_is_the_factory_s(self) -> None:
        """A message is recent in one session of a factory only; a second factory (another
        server on the same store) keeps its own \\Recent, as a restarted server would."""
        other_factory = IMAPFactory(make_config(), self.portal, self.maillog, clock=self.clock)
        first, same, other = self.session(), self.session(), Session(other_factory)
        for s in (first, same, other):
            s.select()
        self.deliver()
        self.assertIn(b"* 1 EXISTS\r\n* 1 RECENT\r\n", first.cmd(b"a NOOP"))
        self.assertIn(b"* 1 EXISTS\r\n* 0 RECENT\r\n", same.cmd(b"a NOOP"))
        self.assertIn(b"* 1 EXISTS\r\n* 1 RECENT\r\n", other.cmd(b"a NOOP"))

    def test_idle_refresh_is_the_factory_s(self) -> None:
        """IDLE registers the mailbox with its factory's poller, DONE takes it off; the poller
        refreshes the mailbox on the session's clock."""
        s = self.session()
        s.select()
        polls = self.factory.idle_poller._polls
        refreshes = []
        box = s.proto.view.mailbox
        real = box.refresh
        box.refresh = lambda: refreshes.append(1) or real()
        s.cmd(b"a IDLE")
        self.assertEqual(len(polls), 1)
        refreshes.clear()
        self.clock.advance(IDLE_POLL)
        self.assertEqual(refreshes, [1])
        self.assertIn(b"a OK", s.cmd(b"DONE"))
        self.assertEqual(polls, {})

    def test_cancelled_login_preparation_is_not_swallowed(self) -> None:
        """Cancelling the work before a login's OK cancels it: the CancelledError reaches the
        caller, it is not logged and swallowed as a failure to list the folders."""
        proto = self.factory.buildProtocol(None)
        pending: defer.Deferred[Any] = defer.Deferred()
        avatar = ImapAccount(self.store, BOSS)
        avatar.list_mailboxes = lambda: pending  # type: ignore[method-assign]
        d = defer.ensureDeferred(proto.prepare_session(avatar))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.flushLoggedErrors(), [])


class ConcurrentStoreTests(ImapTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.deliver()
        self.successResultOf(self.box().set_flags({1: frozenset({"\\Seen"})}))
        self.one, self.two = self.session(), self.session()
        self.one.select()
        self.two.select()

    def test_add_and_remove_from_two_sessions_both_apply(self) -> None:
        """imaptest `store`: session 1 `+FLAGS (\\Draft)`, session 2 `-FLAGS (\\Seen)` on the
        same message, each from its own copy of the flags: both changes are kept (the store
        applies them to the current flags), and each session ends up seeing `(\\Draft)`."""
        out = self.one.cmd(b"a STORE 1 +FLAGS (\\Draft)")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Seen \\Draft))", out)
        out = self.two.cmd(b"b STORE 1 -FLAGS (\\Seen)")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Draft))", out)
        self.one.cmd(b"c CHECK")
        self.two.cmd(b"d CHECK")
        self.assertIn(b"* 1 FETCH (FLAGS (\\Draft))", self.one.cmd(b"e FETCH 1 FLAGS"))
        self.assertIn(b"* 1 FETCH (FLAGS (\\Draft))", self.two.cmd(b"f FETCH 1 FLAGS"))
        self.assertEqual(self.box().messages[0].flags, {"\\Draft"})

    def test_implicit_seen_keeps_other_sessions_flags(self) -> None:
        """A non-PEEK FETCH adds \\Seen to the stored flags: a flag another session set
        meanwhile (not yet known here) is not undone."""
        self.successResultOf(self.box().set_flags({1: frozenset()}))
        self.one.cmd(b"a NOOP")
        self.two.cmd(b"b NOOP")
        self.one.cmd(b"c STORE 1 +FLAGS.SILENT (\\Flagged)")
        out = self.two.cmd(b"d FETCH 1 BODY[TEXT]")
        self.assertIn(b"FLAGS (\\Flagged \\Seen)", out)
        self.assertEqual(self.box().messages[0].flags, {"\\Flagged", "\\Seen"})


class PipeliningTests(ImapTestCase):
    def test_pipelined_commands_answered_in_order(self) -> None:
        """SELECT, UID FETCH, NOOP sent in one packet while the login is still pending: answered
        in order (upstream #9282)."""
        from twisted.internet import defer

        self.deliver()
        real_login = self.portal.login
        s = self.session()
        gate: defer.Deferred[None] = defer.Deferred()

        def gated_login(*args: Any) -> Any:
            return gate.addCallback(lambda _: real_login(*args))

        self.portal.login = gated_login  # type: ignore[method-assign]
        out = s.send(b"a LOGIN boss secret\r\nb SELECT INBOX\r\nc UID FETCH 1:* (UID FLAGS)\r\n"
                     b"d NOOP\r\n")
        self.assertEqual(out, b"")
        gate.callback(None)
        out = s.take()
        tags = [line.split(b" ")[0] for line in out.split(b"\r\n")
                if line and not line.startswith(b"*")]
        self.assertEqual(tags, [b"a", b"b", b"c", b"d"])
        self.assertLess(out.index(b"b OK"), out.index(b"* 1 FETCH (UID 1 FLAGS ())"))


class RefreshBeforeCommandTests(ImapTestCase):
    """Before a command on the selected mailbox the store is asked for changes other programs
    made, but not again within REFRESH_REUSE of an answer that found none (a burst of FETCHes
    costs one stat); NOOP always asks, and a refresh that found something is not reused."""

    def setUp(self) -> None:
        super().setUp()
        self.clock.advance(100.0)  # the session reads the time from its clock
        self.deliver()
        self.s = Session(self.factory)
        self.s.select()
        self.calls = 0
        self.found = Changes()  # what the next refresh finds

        def counting():
            self.calls += 1
            found, self.found = self.found, Changes()
            return defer.succeed(found)

        self.s.proto.view.mailbox.refresh = counting

    def test_burst_reuses_a_quiet_refresh(self) -> None:
        fetch = b"F UID FETCH 1 (FLAGS)"
        self.assertIn(b"F OK", self.s.cmd(fetch))
        self.assertEqual(self.calls, 1)
        self.clock.advance(server_module.REFRESH_REUSE / 2)
        self.assertIn(b"F OK", self.s.cmd(fetch))
        self.assertIn(b"F OK", self.s.cmd(fetch))
        self.assertEqual(self.calls, 1)
        self.clock.advance(server_module.REFRESH_REUSE)
        self.assertIn(b"F OK", self.s.cmd(fetch))
        self.assertEqual(self.calls, 2)
        self.assertIn(b"N OK", self.s.cmd(b"N NOOP"))  # NOOP looks itself, every time
        self.assertIn(b"N OK", self.s.cmd(b"N NOOP"))
        self.assertEqual(self.calls, 4)

    def test_clock_set_back_refreshes(self) -> None:
        """The time is the session's clock's: a clock set back (the wall clock stepped) never
        makes the last quiet refresh look recent for longer than REFRESH_REUSE."""
        fetch = b"F UID FETCH 1 (FLAGS)"
        self.s.cmd(fetch)
        self.assertEqual(self.calls, 1)
        self.clock.advance(-3600.0)
        self.s.cmd(fetch)
        self.assertEqual(self.calls, 2)

    def test_changes_found_are_not_reused(self) -> None:
        fetch = b"F UID FETCH 1:* (FLAGS)"
        self.found = Changes(flags={1: frozenset({"\\Seen"})})  # another program changed it
        self.s.cmd(fetch)
        self.s.cmd(fetch)  # the last refresh found something: this one looks again
        self.assertEqual(self.calls, 2)
        self.s.cmd(fetch)  # that one found nothing: reused
        self.assertEqual(self.calls, 2)
