"""The inbound checks' DKIM and ARC verification (mailsuite.filter.dkimcheck), the
Authentication-Results header (authresults.py) and the stage's choices (authcheck.py): which
mail is checked, p=reject, p=quarantine into Junk, the SPF reject knobs. Keys are made here
and messages signed by dkimpy; DNS is a fake IResolver, the blocking work runs inline."""

from __future__ import annotations

from typing import Any

import authres
import authres.arc
import authres.dkim_b
import authres.dmarc
import dkim
from twisted.trial import unittest

from mailsuite.configschema import AuthChecksConfig
from mailsuite.filter import arcseal, authresults, dkimcheck
from mailsuite.filter.authcheck import AuthCheckStage
from mailsuite.filter.dkimcheck import ARCResult, DKIMResult
from mailsuite.filter.dmarc import DMARCResult
from mailsuite.filter.spfcheck import SPFResult
from mailsuite.mta import forward
from mailsuite.mta.accept import LocalRecipient
from mailsuite.mta.transaction import (
    LMTP,
    PICKUP,
    SMTP,
    Client,
    Envelope,
    Message,
    Recipient,
    Verdict,
)
from mailsuite.configvalues import parse_networks
from mailsuite.threads import inline
from tests.authfakes import SERVFAIL, FailingResolver, Key, add, lookups, txt
from tests.fakemx import ZoneResolver

MESSAGE = (b"From: Alice <alice@sender.example>\nTo: bob@example.net\nSubject: hi\n"
           b"Date: Wed, 02 Dec 2026 04:00:00 +0000\n\nHello Bob.\n")
CONTEXT = authres.FeatureContext(authres.dkim_b, authres.dmarc, authres.arc)
KEY = Key("sender.example")
OTHER = Key("other.example", "s2")


class DKIMTests(unittest.TestCase):
    def verify(self, data: bytes, zone: Any, resolver: Any = None) -> list[DKIMResult]:
        _, lookup = lookups(resolver or ZoneResolver(zone))
        return dkimcheck.verify_all(data, lookup)

    def test_each_signature_its_result(self) -> None:
        """Two signatures: each verified and reported with d=, s= and the start of b=; a
        dkimpy verify of the same message agrees on the one that passes."""
        signed = OTHER.sign(KEY.sign(MESSAGE))
        zone = KEY.publish(OTHER.publish({}))
        got = self.verify(signed, zone)
        self.assertEqual([(r.result, r.domain, r.selector) for r in got],
                         [("pass", "other.example", "s2"), ("pass", "sender.example", "sel")])
        self.assertEqual(len(got[0].b), 8)
        self.assertTrue(dkim.verify(signed, dnsfunc=lambda name, timeout=5:
                                    b"v=DKIM1; k=rsa; p=" + OTHER.public.encode()))

    def test_altered_body_fails(self) -> None:
        """A body changed after signing: fail (body hash)."""
        signed = KEY.sign(MESSAGE).replace(b"Hello Bob.", b"Pay Mallory.")
        got = self.verify(signed, KEY.publish({}))
        self.assertEqual((got[0].result, got[0].reason), ("fail", "body hash did not verify"))

    def test_forged_signature_fails(self) -> None:
        """A signature made with another key than the published one: fail."""
        forged = Key("sender.example").sign(MESSAGE)
        self.assertEqual(self.verify(forged, KEY.publish({}))[0].result, "fail")

    def test_missing_and_bad_key_permerror(self) -> None:
        """No key at the selector: permerror; a record that is not a key: permerror."""
        signed = KEY.sign(MESSAGE)
        self.assertEqual(self.verify(signed, {})[0].result, "permerror")
        zone = add({}, KEY.name, txt("v=DKIM1; k=rsa; p=notbase64!!"))
        self.assertEqual(self.verify(signed, zone)[0].result, "permerror")

    def test_key_servfail_temperror(self) -> None:
        """SERVFAIL on the key's query: temperror."""
        zone = KEY.publish({})
        resolver = FailingResolver(zone, {KEY.name}, SERVFAIL)
        self.assertEqual(self.verify(KEY.sign(MESSAGE), zone, resolver)[0].result, "temperror")

    def test_broken_signature_field_neutral(self) -> None:
        """A DKIM-Signature without its required tags: neutral (cannot be processed)."""
        data = b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example\n" + MESSAGE
        got = self.verify(data, {})
        self.assertEqual((got[0].result, got[0].domain), ("neutral", "sender.example"))

    def test_short_key_policy(self) -> None:
        """A key that verifies but is under the minimum size: policy (cryptography makes no
        key under 1024 bits, so the minimum is raised here)."""
        self.patch(dkimcheck, "MIN_KEY_BITS", 2048)
        got = self.verify(KEY.sign(MESSAGE), KEY.publish({}))
        self.assertEqual(got[0].result, "policy")

    def test_unsigned(self) -> None:
        """No signature: no results."""
        self.assertEqual(self.verify(MESSAGE, {}), [])

    def test_arc_chain(self) -> None:
        """An ARC set sealed by a forwarder verifies (pass); no set is none; a set whose
        seal key is missing fails."""
        _, lookup = lookups(ZoneResolver(OTHER.publish({})))
        self.assertEqual(dkimcheck.arc_verify(MESSAGE, lookup).result, "none")
        ar = b"Authentication-Results: fwd.other.example; dkim=none\n"
        sealed = OTHER.arc_seal(ar + MESSAGE, "fwd.other.example")
        self.assertEqual(dkimcheck.arc_verify(sealed, lookup).result, "pass")
        _, empty = lookups(ZoneResolver({}))
        self.assertEqual(dkimcheck.arc_verify(sealed, empty).result, "fail")


class AuthResultsTests(unittest.TestCase):
    def test_header_parses_back(self) -> None:
        """Our header is RFC 8601 as authres reads it: authserv-id, then spf (mailfrom and
        helo), each dkim with header.d/s/b, dmarc with header.from and policy, arc."""
        value = authresults.header_value(
            "mx.example.net", SPFResult("pass", "alice@sender.example"),
            SPFResult("none", "postmaster@mx.sender.example"),
            [DKIMResult("pass", "sender.example", "sel", "abcdefgh"),
             DKIMResult("fail", "other.example", "s2", "12345678", "body hash did not verify")],
            DMARCResult("pass", "sender.example", "reject"), ARCResult("none"))
        header = CONTEXT.parse_value(value)
        self.assertEqual(header.authserv_id, "mx.example.net")
        got = [(r.method, r.result) for r in header.results]
        self.assertEqual(got, [("spf", "pass"), ("spf", "none"), ("dkim", "pass"),
                               ("dkim", "fail"), ("dmarc", "pass"), ("arc", "none")])
        self.assertEqual(header.results[0].smtp_mailfrom, "alice@sender.example")
        self.assertEqual(header.results[1].smtp_helo, "mx.sender.example")
        self.assertEqual((header.results[2].header_d, header.results[2].header_s,
                          header.results[2].header_b), ("sender.example", "sel", "abcdefgh"))
        self.assertEqual(header.results[4].header_from, "sender.example")
        self.assertEqual(header.results[4].policy, "reject")
        self.assertIn("dkim=fail (body hash did not verify) header.d=other.example", value)

    def test_no_signature_is_dkim_none(self) -> None:
        """Without a signature the header says dkim=none."""
        value = authresults.header_value("mx", None, None, [], None, None)
        self.assertEqual(value, "mx; dkim=none")

    def test_only_ours_removed(self) -> None:
        """Fields claiming our authserv-id (any case, folded, after a comment) go; another
        server's stay, and so does a body line that looks like one."""
        data = (b"Authentication-Results: MX.example.net; dkim=pass header.d=bank.example\n"
                b"Received: from x\n"
                b"Authentication-Results: (forged) mx.example.net;\n\tspf=pass\n"
                b"Authentication-Results: other.example; spf=fail smtp.mailfrom=a@b\n"
                b"authentication-results:mx.example.net 1; dmarc=pass\n"
                b"Subject: s\n\nAuthentication-Results: mx.example.net; spf=pass\n")
        out, n = authresults.remove_ours(data, "mx.example.net")
        self.assertEqual(n, 3)
        self.assertEqual(out, b"Received: from x\n"
                         b"Authentication-Results: other.example; spf=fail smtp.mailfrom=a@b\n"
                         b"Subject: s\n\nAuthentication-Results: mx.example.net; spf=pass\n")
        self.assertEqual(authresults.remove_ours(data, "elsewhere.example"), (data, 0))

    def test_comments_cannot_swallow_the_field(self) -> None:
        """A reason with the sender's parentheses is quoted in our comment: the results after
        it stay results to a parser (authres), not a comment."""
        value = authresults.header_value(
            "mx.example.net", None, None,
            [DKIMResult("fail", "a.example", "s", "12345678", 'bad tag r"( x')],
            DMARCResult("fail", "a.example", "reject"), None)
        header = CONTEXT.parse_value(value)
        self.assertEqual([(r.method, r.result) for r in header.results],
                         [("dkim", "fail"), ("dmarc", "fail")])
        self.assertIn('(bad tag r"\\( x)', value)

    def test_trailing_dot_is_ours_too(self) -> None:
        """``mx.example.net.`` claims our id as well as ``mx.example.net``."""
        data = b"Authentication-Results: mx.example.net.; dmarc=pass\nSubject: s\n\nb\n"
        self.assertEqual(authresults.remove_ours(data, "mx.example.net"),
                         (b"Subject: s\n\nb\n", 1))

    def test_unparsable_field_read_by_first_word(self) -> None:
        """A field authres cannot parse still names its authserv-id by its first word."""
        self.assertEqual(authresults.authserv_id_of(" mx.example.net; ???"), "mx.example.net")
        self.assertEqual(authresults.authserv_id_of(""), "")


class FakeMaillog:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, program: str, text: str) -> None:
        self.lines.append(f"{program}: {text}")


STRANGER = Client(SMTP, "198.51.100.7", "mx.sender.example", "mx.sender.example")


class StageTests(unittest.TestCase):
    def stage(self, zone: Any, **settings: Any) -> AuthCheckStage:
        query, lookup = lookups(ZoneResolver(zone))
        self.maillog = FakeMaillog()
        return AuthCheckStage(AuthChecksConfig(**settings), "mx.example.net",
                              parse_networks("127.0.0.0/8"), query, inline, self.maillog,
                              "X-Spam", lookup=lookup, random=lambda: 0.0)

    def zone(self, spf: str = "v=spf1 ip4:198.51.100.0/24 -all",
             dmarc: str = "v=DMARC1; p=reject") -> Any:
        zone = add({}, "sender.example", txt(spf))
        return add(zone, "_dmarc.sender.example", txt(dmarc))

    def run_stage(self, stage: AuthCheckStage, data: bytes = MESSAGE, sender: str =
                  "alice@sender.example", client: Client = STRANGER) -> tuple[Any, Message]:
        env = Envelope("Q1", sender, [Recipient("bob@example.net")], client)
        message = Message(env, data)
        d = stage(message)
        return (self.successResultOf(d) if d is not None else "unchecked"), message

    def test_pass_adds_header_on_top_forged_removed(self) -> None:
        """A stranger's signed mail passing SPF: one A-R header of ours on top, the forged
        one claiming our id gone, the maillog line."""
        stage = self.stage(KEY.publish(self.zone()))
        forged = b"Authentication-Results: mx.example.net; dmarc=pass\n"
        verdict, message = self.run_stage(stage, forged + KEY.sign(MESSAGE))
        self.assertIsNone(verdict)
        first, rest = message.data.split(b"\n", 1)
        first = first.replace(b'"', b"")  # header.b is quoted when it holds a / or +
        self.assertEqual(first, b"Authentication-Results: mx.example.net;"
                         b" spf=pass smtp.mailfrom=alice@sender.example;"
                         b" spf=none smtp.helo=mx.sender.example;"
                         b" dkim=pass header.d=sender.example header.b="
                         + message.data.split(b" b=")[1][:8]  # the signature's own b=
                         + b" header.s=sel; dmarc=pass (p=reject dis=none)"
                         b" header.from=sender.example policy.dmarc=reject; arc=none")
        self.assertNotIn(b"dmarc=pass\n", rest)
        self.assertIn("authcheck: Q1: mx.example.net; spf=pass", self.maillog.lines[0])

    def test_dmarc_reject(self) -> None:
        """Unsigned mail from an address SPF does not allow, p=reject: 550 5.7.1 naming the
        domain (opendmarc's words); with reject_failures off it goes to Junk instead."""
        verdict, _ = self.run_stage(self.stage(self.zone(spf="v=spf1 -all")))
        self.assertEqual(verdict, Verdict(550, "5.7.1",
                                          "rejected by DMARC policy for sender.example"))
        self.assertIn("reject: END-OF-MESSAGE from mx.sender.example[198.51.100.7]: 550 5.7.1",
                      self.maillog.lines[-1])
        stage = self.stage(self.zone(spf="v=spf1 -all"), reject_failures=False)
        verdict, message = self.run_stage(stage)
        self.assertIsNone(verdict)
        self.assertTrue(message.data.startswith(
            b"X-Spam: Yes, DMARC reject policy of sender.example\nAuthentication-Results:"))

    def test_second_author_domain_rejects(self) -> None:
        """A From: of two addresses is refused when one domain's p=reject fails, although
        the other passes (RFC 7489 6.6.1: the strictest policy); a malformed From: too."""
        zone = add(self.zone(), "_dmarc.bank.example", txt("v=DMARC1; p=reject"))
        for field in (b"From: alice@sender.example, ceo@bank.example\n",
                      b"From: ceo@bank.example; x\n"):
            data = field + MESSAGE.split(b"\n", 1)[1]
            verdict, _ = self.run_stage(self.stage(zone), data)
            self.assertEqual(verdict, Verdict(550, "5.7.1",
                                              "rejected by DMARC policy for bank.example"))

    def test_line_ends_in_values_do_not_end_the_field(self) -> None:
        """A control character a sender put in a value cannot end our header field."""
        value = authresults.header_value("mx", SPFResult("pass", "a@b"), None, [],
                                         DMARCResult("none", "x\ny"), None)
        self.assertNotIn("\n", value)

    def test_dmarc_quarantine_to_junk(self) -> None:
        """p=quarantine: taken, marked for Junk by the store's spam field; with
        quarantine_to_junk off, not marked."""
        zone = self.zone(spf="v=spf1 -all", dmarc="v=DMARC1; p=quarantine")
        verdict, message = self.run_stage(self.stage(zone))
        self.assertIsNone(verdict)
        from mailsuite.store.spam import spam_marked
        self.assertTrue(spam_marked(message.data, "X-Spam"))
        _, message = self.run_stage(self.stage(zone, quarantine_to_junk=False))
        self.assertFalse(spam_marked(message.data, "X-Spam"))
        self.assertIn(b"dmarc=fail (p=quarantine dis=quarantine)", message.data)

    def test_spf_fail_reject_knob(self) -> None:
        """An SPF -all fail without DMARC: taken by default (mail_from_reject False); with
        Fail: 550 5.7.23 (RFC 7372); Softfail also refuses ~all."""
        zone = self.zone(spf="v=spf1 -all", dmarc="v=spf1 nothing")
        verdict, message = self.run_stage(self.stage(zone))
        self.assertIsNone(verdict)
        self.assertIn(b"spf=fail smtp.mailfrom=alice@sender.example", message.data)
        verdict, _ = self.run_stage(self.stage(zone, mail_from_reject="fail"))
        self.assertEqual((verdict.code, verdict.dsn), (550, "5.7.23"))
        soft = self.zone(spf="v=spf1 ~all", dmarc="")
        self.assertIsNone(self.run_stage(self.stage(soft, mail_from_reject="fail"))[0])
        self.assertIsInstance(self.run_stage(self.stage(soft, mail_from_reject="softfail"))[0],
                              Verdict)

    def test_helo_reject_knob(self) -> None:
        """helo_reject = Fail refuses a HELO name whose SPF fails."""
        zone = add(self.zone(dmarc=""), "mx.sender.example", txt("v=spf1 -all"))
        self.assertIsNone(self.run_stage(self.stage(zone))[0])
        verdict, _ = self.run_stage(self.stage(zone, helo_reject="fail"))
        self.assertIn("identity=helo", verdict.text)

    def test_trusted_mail_not_checked(self) -> None:
        """Authenticated users, mynetworks clients, LMTP and the pickup are not checked: no
        header, the message unchanged, no Deferred."""
        stage = self.stage(self.zone(spf="v=spf1 -all"))
        for client in (Client(SMTP, "198.51.100.7", user="alice", protocol="ESMTPSA"),
                       Client(SMTP, "127.0.0.5"), Client(LMTP, "198.51.100.7")):
            verdict, message = self.run_stage(stage, client=client)
            self.assertEqual((verdict, message.data), ("unchecked", MESSAGE))
        # a field claiming our id goes from unchecked SMTP mail too (not from LMTP's)
        forged = b"Authentication-Results: mx.example.net; dmarc=pass\n" + MESSAGE
        user = Client(SMTP, "198.51.100.7", user="alice", protocol="ESMTPSA")
        self.assertEqual(self.run_stage(stage, forged, client=user)[1].data, MESSAGE)
        lmtp = Client(LMTP, "198.51.100.7")
        self.assertEqual(self.run_stage(stage, forged, client=lmtp)[1].data, forged)
        # nor from a local user's sendmail (the pickup)
        pickup = Client(PICKUP, "127.0.0.1", uid=1000)
        self.assertEqual(self.run_stage(stage, forged, client=pickup)[1].data, MESSAGE)

    def test_kept_answers_check_spf_on_the_reactor(self) -> None:
        """With the DNS cache, a sender seen within its records' TTL is checked at once (no
        thread); the verdict is the same as the first message's, checked in a thread."""
        from twisted.internet.task import Clock

        from mailsuite.mta.dnsquery import DNSQuery, FromThread
        from tests.authfakes import now
        query = DNSQuery(ZoneResolver(add(self.zone(), "mx.sender.example",
                                             txt("v=spf1 ip4:198.51.100.0/24"))),
                         Clock(), cache=True)
        calls: list[Any] = []

        def blocking(f: Any, *args: Any) -> Any:
            calls.append(f)
            return inline(f, *args)
        stage = AuthCheckStage(AuthChecksConfig(), "mx.example.net", [], query, blocking,
                               FakeMaillog(), lookup=FromThread(query, call=now))
        first, second = (self.run_stage(stage)[1].data for _ in range(2))
        self.assertEqual(first, second)
        self.assertIn(b"spf=pass smtp.mailfrom=alice@sender.example", first)
        self.assertEqual([f.__name__ for f in calls], ["_spf"])

    def test_broken_check_lets_mail_through(self) -> None:
        """A check that raises (a bug) accepts the message unchecked, logged; a field claiming
        our id goes all the same (RFC 8601 5)."""
        stage = self.stage(self.zone())
        stage._spf = lambda *args: 1 / 0  # type: ignore[method-assign]
        forged = b"Authentication-Results: mx.example.net; dmarc=pass\n"
        verdict, message = self.run_stage(stage, forged + MESSAGE)
        self.assertIsNone(verdict)
        self.assertEqual(message.data, MESSAGE)
        self.assertIn("message accepted unchecked", self.maillog.lines[-1])
        self.flushLoggedErrors(ZeroDivisionError)


def forwarding_recipient() -> Recipient:
    """bob@example.net as the RCPT look-up found it: forwarded to another domain."""
    dest = forward.Remote("bob@elsewhere.example", "bob@example.net")
    return Recipient("bob@example.net", route=LocalRecipient("bob@example.net", [dest], None,
                                                                "alice@sender.example"))


class ARCSealTests(unittest.TestCase):
    def setUp(self) -> None:
        self.key = Key("example.net", "arc")
        self.sealing = arcseal.SealingKey("example.net", "arc", self.key.pem)

    def run_stage(self, recipient: Recipient) -> Message:
        zone = self.key.publish(add({}, "sender.example", txt(f"v=spf1 ip4:{STRANGER.address}")))
        query, lookup = lookups(ZoneResolver(zone))
        stage = AuthCheckStage(AuthChecksConfig(), "mx.example.net", [], query, inline,
                               FakeMaillog(), lookup=lookup, arc_key=self.sealing)
        env = Envelope("Q2", "alice@sender.example", [recipient], STRANGER, arrival=1.7e9)
        message = Message(env, MESSAGE)
        self.assertIsNone(self.successResultOf(stage(message)))
        self.lookup = lookup
        return message

    def test_forwarded_mail_sealed(self) -> None:
        """Mail for an address forwarded to another domain gets our ARC set on top, its
        ARC-Authentication-Results our results, cv=none (no chain before); it verifies
        (dkimpy, our key's record)."""
        message = self.run_stage(forwarding_recipient())
        self.assertTrue(message.data.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256;"
                                                b" d=example.net; s=arc; t=1700000000;"))
        self.assertIn(b"\nARC-Authentication-Results: i=1; mx.example.net;\n spf=pass",
                      message.data)
        self.assertEqual(dkimcheck.arc_verify(message.data, self.lookup).result, "pass")

    def test_local_mail_not_sealed(self) -> None:
        """Mail only for local mailboxes is not sealed."""
        message = self.run_stage(Recipient("bob@example.net"))
        self.assertNotIn(b"ARC-Seal", message.data)

    def test_bad_keys_refused(self) -> None:
        """A key file that is missing, or not a PEM RSA key, is refused at start."""
        path = self.mktemp()
        with self.assertRaises(OSError):
            arcseal.load(f"example.net:arc:{path}")
        with open(path, "wb") as f:
            f.write(b"not a key\n")
        with self.assertRaises(ValueError):
            arcseal.load(f"example.net:arc:{path}")
        with open(path, "wb") as f:
            f.write(self.key.pem)
        self.assertEqual(arcseal.load(f"example.net:arc:{path}").selector, "arc")

    def test_bad_key_refuses_the_start(self) -> None:
        """A missing or bad arc_key file refuses the start, naming the key and the file."""
        from mailsuite.startup import StartupError
        from tests.configs import real_config
        path = self.mktemp()
        for content in (None, b"not a key\n"):
            if content is not None:
                with open(path, "wb") as f:
                    f.write(content)
            cfg = real_config(auth_checks={"arc_key": f"example.net:arc:{path}"})
            with self.assertRaises(StartupError) as e:
                AuthCheckStage.from_config(cfg, None, FakeMaillog(), inline)
            self.assertIn(f"[auth_checks] arc_key: {path}", str(e.exception))


class ARCKeyFromDkimTests(unittest.TestCase):
    def key_file(self, key: Any) -> str:
        import os

        from cryptography.hazmat.primitives import serialization
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        os.chmod(path, 0o600)
        return path

    def config(self, dkim_lines: str) -> Any:
        from mailsuite.config import parse_config
        return parse_config("[mail]\nmydomain = example.test\n[dkim]\n" + dkim_lines,
                            "/etc/mail.ini", hostname=lambda: "mail.example.test")

    def test_the_dkim_key_of_mydomain_seals_without_arc_key(self) -> None:
        """No ``arc_key``: the RSA ``[dkim]`` key of mydomain (or its nearest configured
        parent) seals, with its selector; an Ed25519 one cannot (dkimpy's arc_sign is
        rsa-sha256 only), nor is another domain's used."""
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
        rsa_path = self.key_file(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        ed_path = self.key_file(ed25519.Ed25519PrivateKey.generate())
        key = arcseal.from_dkim(self.config(f"example.test = s1:{rsa_path}\n"))
        self.assertEqual((key.domain, key.selector), ("example.test", "s1"))
        self.assertTrue(key.pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----"))
        self.assertIsNone(arcseal.from_dkim(self.config(f"example.test = s2:{ed_path}\n")))
        self.assertIsNone(arcseal.from_dkim(self.config(f"other.test = s1:{rsa_path}\n")))
