"""POP3 UIDLs as Dovecot makes them (issue 9, item 16): ``pop3_uidl_format``, default
``%08Xu%08Xv`` (UID first, lower-case hex), and the ``[mailbox] pop3_uidl_format`` key.

The expected strings were answered by Debian 12's dovecot-pop3d 2.3.19.1 (``UIDL`` after a
login, pop3_uidl_format at its default) for a mailbox of UIDVALIDITY 1796154878: its UIDs 1 and
2 gave ``000000016b0f25fe`` and ``000000026b0f25fe``. tests/integration/test_dovecot_mbox.py
checks the same against a Dovecot started by the test when one is installed.
"""

from __future__ import annotations

import dataclasses

from twisted.trial import unittest

from mailsuite.config import ConfigError
from mailsuite.uidlformat import DEFAULT, UidlFormat
from tests.test_config import parse, section
from tests.test_pop3 import Pop3TestCase

DOVECOT_VALIDITY = 1796154878
DOVECOT_UIDLS = {1: "000000016b0f25fe", 2: "000000026b0f25fe"}


class UidlFormatTests(unittest.TestCase):
    def test_default_is_dovecots_byte_for_byte(self) -> None:
        """%08Xu%08Xv: the UID, then UIDVALIDITY, 8 lower-case hex digits each."""
        fmt = UidlFormat()
        self.assertEqual(fmt.template, DEFAULT)
        for uid, expected in DOVECOT_UIDLS.items():
            self.assertEqual(fmt.format(uid, DOVECOT_VALIDITY), expected)

    def test_dovecot_variables_and_modifiers(self) -> None:
        """Long names, %%, padding without cutting, width and offset cutting, L/U/R/T."""
        cases = {
            "%v.%u": "1796154878.7",
            "%{uidvalidity}-%{uid}": "1796154878-7",
            "%08XUu%%%Xv": "0000000A%6b0f25fe",
            "%4v": "1796",
            "%2.3v": "961",
            "%Ru%v": "011796154878",
            "%03u": "010",
        }
        for template, expected in cases.items():
            uid = 10 if template in ("%08XUu%%%Xv", "%Ru%v", "%03u") else 7
            self.assertEqual(UidlFormat(template).format(uid, DOVECOT_VALIDITY), expected, template)

    def test_refused_with_the_reason(self) -> None:
        """What cannot give Dovecot's UIDL (or a valid one) is refused, saying why."""
        for template, why in [
            ("%m", "MD5"),
            ("%f", "maildir"),
            ("%g", "GUID"),
            ("%q", "unknown variable %q"),
            ("%{nope}", "unknown variable %{nope}"),
            ("uid %u", "no spaces"),
            ("static", "no variable"),
            ("%u%", "lone '%'"),
            ("%80u", "longer than 70"),
        ]:
            with self.assertRaises(ValueError) as caught:
                UidlFormat(template)
            self.assertIn(why, str(caught.exception), template)


class UidlConfigTests(unittest.TestCase):
    def test_key_default_and_set(self) -> None:
        """[mailbox] pop3_uidl_format: Dovecot's default, a site's own value kept."""
        self.assertEqual(parse().mailbox.pop3_uidl_format, DEFAULT)
        cfg = parse(section("mailbox", pop3_uidl_format="%v-%u"))
        self.assertEqual(cfg.mailbox.pop3_uidl_format, "%v-%u")

    def test_bad_value_names_the_key(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse(section("mailbox", pop3_uidl_format="%f"))
        self.assertIn("[mailbox] pop3_uidl_format", str(caught.exception))
        self.assertIn("maildir", str(caught.exception))


class UidlSessionTests(Pop3TestCase):
    def test_session_uses_the_configured_format(self) -> None:
        """UIDL and UIDL n follow [mailbox] pop3_uidl_format; the default is Dovecot's."""
        self.deliver(b"Subject: 1\n\n1\n")
        validity = self.inbox().uid_validity
        session = self.login()
        self.assertEqual(self.send(session, b"UIDL 1"), b"+OK 1 00000001%08x\r\n" % validity)
        self.config = dataclasses.replace(
            self.config, mailbox=parse(section("mailbox", pop3_uidl_format="%v-%u")).mailbox
        )
        session = self.login()
        self.assertEqual(self.send(session, b"UIDL"), b"+OK\r\n1 %d-1\r\n.\r\n" % validity)
