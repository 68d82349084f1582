"""Postfix's SMTP restriction lists (mailsuite.smtp.restrictions, access.py, dnsbl.py): the
real SMTPServer over a StringTransport, the DNS a fake resolver (tests/fakemx's ZoneResolver),
the policy service a fake connection (tests/test_policy.py has the protocol itself)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.names import dns, error

from mailsuite.config import ConfigError
from mailsuite.mta.dns import MXResolver
from mailsuite.smtp.restrictions import Restrictions, parse_restrictions
from mailsuite.startup import StartupError
from tests.fakemx import ZoneResolver
from tests.fakes import FakeQueue
from tests.test_config import parse, section
from tests.test_smtp_server import SessionCase

LISTED = {("7.2.0.192.zen.example", dns.A): [dns.Record_A("127.0.0.2")],
          ("7.2.0.192.zen.example", dns.TXT): [dns.Record_TXT(b"see https://zen.example/7")],
          ("spam.example.dbl.example", dns.A): [dns.Record_A("127.0.1.2")]}


class DeadResolver(ZoneResolver):
    """A DNS server that never answers in time."""

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Any:
        return defer.fail(error.DNSQueryTimeoutError(name))


class RestrictionCase(SessionCase):
    def setUp(self) -> None:
        super().setUp()
        self.delivery.queue = FakeQueue()
        self.zone = ZoneResolver(dict(LISTED))

    def restrict(self, resolver: Any = None, **lists: str) -> None:
        """These [mail] keys (restriction lists as text, others as they are) from now on."""
        values = {k: parse_restrictions(v) if k.endswith("_restrictions") else v
                  for k, v in lists.items()}
        mail = replace(self.factory.config.mail, **values)
        self.factory.restrictions = Restrictions(
            mail, self.delivery, self.clock, MXResolver(resolver=resolver or self.zone),
            lambda text: self.maillog.write("smtpd", text))

    def table(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return f"hash:{path}"

    def rcpt(self, address: str, helo: str = "client.example",
             sender: str = "a@b.example") -> list[str]:
        self.send(f"RSET\r\nEHLO {helo}\r\nMAIL FROM:<{sender}>\r\n".encode())
        return self.send(f"RCPT TO:<{address}>\r\n".encode())


class ListTests(RestrictionCase):
    def test_default_relay_list_is_todays(self) -> None:
        """The default smtpd_relay_restrictions (permit_mynetworks, permit_sasl_authenticated,
        reject_unauth_destination): a stranger gets today's 554, local mail is taken."""
        self.assertEqual(self.rcpt("x@elsewhere.test"),
                         ["554 5.7.1 <x@elsewhere.test>: Relay access denied"])
        self.assertEqual(self.rcpt("boss@mail.example.com"), ["250 2.1.5 Ok"])

    def test_defer_unauth_destination(self) -> None:
        """Postfix's own default: relaying is deferred, 454 4.7.1."""
        self.restrict(smtpd_relay_restrictions="permit_mynetworks, defer_unauth_destination")
        self.assertEqual(self.rcpt("x@elsewhere.test"),
                         ["454 4.7.1 <x@elsewhere.test>: Relay access denied"])

    def test_permit_in_relay_list_relays(self) -> None:
        """A check_client_access OK in the relay list lets this client relay (the avatar's
        own mynetworks rule would refuse it); without the entry it is refused."""
        table = self.table("# partners\n192.0.2 OK\n")
        self.restrict(smtpd_relay_restrictions=f"check_client_access {table},"
                      " reject_unauth_destination")
        self.assertEqual(self.rcpt("x@elsewhere.test"), ["250 2.1.5 Ok"])
        self.restrict(smtpd_relay_restrictions=f"check_client_access {self.table('10 OK')},"
                      " reject_unauth_destination")
        self.assertEqual(self.rcpt("x@elsewhere.test")[0][:3], "554")

    def test_mynetworks_removed_from_relay_list(self) -> None:
        """Without permit_mynetworks in the list a client in mynetworks may not relay."""
        self.delivery.mynetworks = [ipaddress.ip_network("192.0.2.0/24")]
        self.assertEqual(self.rcpt("x@elsewhere.test"), ["250 2.1.5 Ok"])
        self.restrict(smtpd_relay_restrictions="permit_sasl_authenticated,"
                      " reject_unauth_destination")
        self.assertEqual(self.rcpt("x@elsewhere.test")[0][:3], "554")

    def test_access_table_reject_and_log(self) -> None:
        """check_recipient_access: REJECT text, Postfix's wording and reject log line."""
        table = self.table("spam@mail.example.com REJECT no thanks\n"
                           "mail.example.com DUNNO\n")
        self.restrict(smtpd_recipient_restrictions=f"check_recipient_access {table}")
        self.assertEqual(self.rcpt("spam@mail.example.com"), [
            "554 5.7.1 <spam@mail.example.com>: Recipient address rejected: no thanks"])
        self.assertIn("NOQUEUE: reject: RCPT from client.example[192.0.2.7]: 554 5.7.1"
                      " <spam@mail.example.com>: Recipient address rejected: no thanks;"
                      " from=<a@b.example> to=<spam@mail.example.com> proto=ESMTP"
                      " helo=<client.example>", self.log_text())
        self.assertEqual(self.rcpt("boss@mail.example.com"), ["250 2.1.5 Ok"])

    def test_sender_access_by_domain_and_null_sender(self) -> None:
        """check_sender_access keys: the parent domain, and <> for the null sender; a 4NN
        reply with its own DSN."""
        table = self.table("b.example 450 4.7.9 come back later\n<> 550 no bounces here\n")
        self.restrict(smtpd_sender_restrictions=f"check_sender_access {table}")
        self.assertEqual(self.rcpt("boss@mail.example.com", sender="a@x.b.example"), [
            "450 4.7.9 <a@x.b.example>: Sender address rejected: come back later"])
        self.assertEqual(self.rcpt("boss@mail.example.com", sender=""), [
            "550 5.7.1 <>: Sender address rejected: no bounces here"])

    def test_helo_checks_at_rcpt(self) -> None:
        """HELO restrictions are evaluated at RCPT (smtpd_delay_reject = yes): invalid, then
        non-FQDN names; an address literal passes."""
        self.restrict(smtpd_helo_restrictions="reject_invalid_helo_hostname,"
                      " reject_non_fqdn_helo_hostname")
        self.assertEqual(self.send(b"EHLO bad!name\r\n")[0][:3], "250")
        self.assertEqual(self.rcpt("boss@mail.example.com", helo="bad!name"),
                         ["501 5.5.2 <bad!name>: Helo command rejected: Invalid name"])
        self.assertEqual(self.rcpt("boss@mail.example.com", helo="pc1"), [
            "504 5.5.2 <pc1>: Helo command rejected: need fully-qualified hostname"])
        self.assertEqual(self.rcpt("boss@mail.example.com", helo="[192.0.2.7]"),
                         ["250 2.1.5 Ok"])

    def test_non_fqdn_addresses_and_unlisted_recipient(self) -> None:
        self.restrict(smtpd_recipient_restrictions="reject_non_fqdn_sender,"
                      " reject_non_fqdn_recipient, reject_unlisted_recipient")
        self.assertEqual(self.rcpt("boss@mail.example.com", sender="a@localbox"), [
            "504 5.5.2 <a@localbox>: Sender address rejected: need fully-qualified address"])
        self.assertEqual(self.rcpt("nobody@mail.example.com"), [
            "550 5.1.1 <nobody@mail.example.com>: Recipient address rejected: User unknown"
            " in local recipient table"])

    def test_warn_if_reject_and_defer_if_permit(self) -> None:
        """warn_if_reject logs reject_warning and goes on; DEFER_IF_PERMIT defers at the end
        unless a later restriction rejects."""
        table = self.table("a@b.example DEFER_IF_PERMIT try later\n")
        self.restrict(smtpd_recipient_restrictions=f"warn_if_reject reject_non_fqdn_helo_hostname,"
                      f" check_sender_access {table}")
        self.assertEqual(self.rcpt("boss@mail.example.com", helo="pc1"), [
            "450 4.7.1 <a@b.example>: Sender address rejected: try later"])
        self.assertIn("NOQUEUE: reject_warning: RCPT from client.example[192.0.2.7]: 504 5.5.2"
                      " <pc1>: Helo command rejected: need fully-qualified hostname;"
                      " from=<a@b.example> to=<boss@mail.example.com> proto=ESMTP helo=<pc1>",
                      self.log_text())
        self.restrict(smtpd_recipient_restrictions=f"check_sender_access {table}, reject")
        self.assertEqual(self.rcpt("boss@mail.example.com")[0][:4], "554 ")

    def test_data_restrictions(self) -> None:
        self.restrict(smtpd_data_restrictions="reject")
        self.rcpt("boss@mail.example.com")
        self.assertEqual(self.send(b"DATA\r\n"),
                         ["554 5.7.1 <DATA>: Data command rejected: Access denied"])
        self.assertRegex(self.log_text()[-1], r"^\w+: reject: DATA from client.example"
                         r"\[192.0.2.7\]: 554 5.7.1 <DATA>: Data command rejected: Access"
                         r" denied; from=<a@b.example> proto=ESMTP helo=<client.example>$")


class BlocklistTests(RestrictionCase):
    def test_rbl_client_reply_with_reason(self) -> None:
        """reject_rbl_client: Postfix's default_rbl_reply with the TXT record as reason."""
        self.restrict(smtpd_client_restrictions="reject_rbl_client zen.example")
        self.assertEqual(self.rcpt("boss@mail.example.com"), [
            "554 5.7.1 Service unavailable; Client host [192.0.2.7] blocked using zen.example;"
            " see https://zen.example/7"])
        self.assertIn(("7.2.0.192.zen.example", dns.A), self.zone.queries)

    def test_rbl_filter_and_rhsbl(self) -> None:
        """A filter that the answer does not match lists nobody; reject_rhsbl_sender looks the
        sender's domain up."""
        self.restrict(smtpd_client_restrictions="reject_rbl_client zen.example=127.0.0.[3..11]")
        self.assertEqual(self.rcpt("boss@mail.example.com"), ["250 2.1.5 Ok"])
        self.restrict(smtpd_sender_restrictions="reject_rhsbl_sender dbl.example")
        self.assertEqual(self.rcpt("boss@mail.example.com", sender="x@spam.example"), [
            "554 5.7.1 Service unavailable; Sender address [spam.example] blocked using"
            " dbl.example"])

    def test_unreachable_dnsbl_never_rejects(self) -> None:
        """A DNSBL that times out lists nobody (one warning line)."""
        self.restrict(DeadResolver({}), smtpd_client_restrictions="reject_rbl_client zen.example")
        self.assertEqual(self.rcpt("boss@mail.example.com"), ["250 2.1.5 Ok"])
        self.assertEqual(self.rcpt("alice@mail.example.com"), ["250 2.1.5 Ok"])
        warnings = [x for x in self.log_text() if "lookup error" in x]
        self.assertEqual(len(warnings), 1, warnings)


class ConfigTests(RestrictionCase):
    def test_unknown_restriction_names_the_key(self) -> None:
        errors = self.assertRaises(ConfigError, parse, section(
            "mail", smtpd_recipient_restrictions="permit_mynetworks, reject_bogus")).errors
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("[mail] smtpd_recipient_restrictions: unknown restriction 'reject_bogus'",
                      errors[0])

    def test_bad_arguments(self) -> None:
        for value, text in (("check_policy_service", "needs an argument"),
                            ("check_policy_service inet:nohost", "is not inet:host:port"),
                            ("reject_rbl_client zen.example=127.0.0", "address pattern"),
                            ("check_client_access relative/path", "is not a table"),
                            ("permit warn_if_reject", "must be followed")):
            errors = self.assertRaises(ConfigError, parse, section(
                "mail", smtpd_client_restrictions=value)).errors
            self.assertIn(text, errors[0])

    def test_defaults(self) -> None:
        mail = parse().mail
        self.assertEqual([r.name for r in mail.smtpd_relay_restrictions],
                         ["permit_mynetworks", "permit_sasl_authenticated",
                          "reject_unauth_destination"])
        self.assertEqual(mail.smtpd_recipient_restrictions, ())
        self.assertEqual((mail.smtpd_policy_service_default_action.code,
                          mail.smtpd_policy_service_default_action.dsn),
                         (451, "4.3.5"))
        self.assertEqual(mail.postscreen_dnsbl_action, "ignore")

    def test_bad_table_at_start(self) -> None:
        """A table line without an access(5) action, or a missing table, stops the start with
        a line naming it."""
        bad = self.table("ok@x OK\nspam@x FROBNICATE\n")
        mail = replace(self.factory.config.mail, smtpd_recipient_restrictions=parse_restrictions(
            f"check_recipient_access {bad}"))
        with self.assertRaises(StartupError) as caught:
            Restrictions.at_start(mail, self.delivery, self.clock, None, self.maillog)
        self.assertEqual(f"[mail] smtpd_recipient_restrictions: {bad[5:]}:2: 'FROBNICATE' is"
                         " not an access(5) action", str(caught.exception))
        mail = replace(mail, smtpd_recipient_restrictions=parse_restrictions(
            "check_recipient_access hash:/nonexistent/access"))
        with self.assertRaises(StartupError) as caught:
            Restrictions.at_start(mail, self.delivery, self.clock, None, self.maillog)
        self.assertIn("/nonexistent/access: No such file or directory", str(caught.exception))

    def test_own_rbl_reply(self) -> None:
        """default_rbl_reply as written in mail.ini ($$ for each $ of the template)."""
        text = parse(section("mail", default_rbl_reply="$$rbl_code 5.7.9 Go away:"
                             " $$rbl_what at $${rbl_domain}$${rbl_reason?: $$rbl_reason}"
                             )).mail.default_rbl_reply
        self.restrict(smtpd_client_restrictions="reject_rbl_client zen.example",
                      default_rbl_reply=text)
        self.assertEqual(self.rcpt("boss@mail.example.com"), [
            "554 5.7.9 Go away: 192.0.2.7 at zen.example: see https://zen.example/7"])
