"""Outbound TLS over real sockets: mailsuite.mta.relay with the policy engine (tlspolicy, dane)
against STARTTLS peers on 127.0.0.2-7 holding good, wrong-name, expired and self-signed
certificates made at test time, a peer without STARTTLS and one with a broken TLS stack; a
twisted.names DNS server on 127.0.0.1 that sets the AD bit as a validating resolver would
(tests/fakedns_dnssec.py). Each level's verdict is Postfix's (TLS_README "Client-side TLS")."""

from __future__ import annotations

import os
from typing import Any

import smtplib
import time

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from mailsuite.mta.dane import SecureLookup
from mailsuite.mta.dns import MXResolver
from mailsuite.mta.queuefile import Envelope, QueuedRecipient
from mailsuite.mta.relay import Relay
from mailsuite.mta.tlspolicy import TLSPolicy, parse_policy_table, trust_store
from tests import fakemx
from tests.integration import harness
from tests.integration.harness import Site
from tests.integration.test_startup_failures import run_to_exit
from tests.integration.test_end_to_end import message
from tests.fakedns_dnssec import TLSSinkFactory, make_cert, start_dnssec, start_tls_sinks, tlsa

MESSAGE = b"Subject: tls test\n\nhello\n"
ADDRESSES = [f"127.0.0.{i}" for i in range(2, 8)]


def envelope(rcpt: str) -> Envelope:
    return Envelope("TLS1234567", "alice@example.test", [QueuedRecipient(rcpt)], 0.0)


class FakeInternet(unittest.TestCase):
    """One fake Internet per test: see the module doc for who is where."""

    def setUp(self) -> None:
        self.port = fakemx.free_port_on(ADDRESSES)
        ca = make_cert("Test Root CA", [], ca=True, days=(-2, 3650))
        good = make_cert("mx.good.test", ["mx.good.test", "mx2.multi.test"], issuer=ca)
        good.chain = [ca.cert]  # the root is sent too (DANE-TA needs it in the chain)
        wrong = make_cert("other.test", ["other.test"], issuer=ca)
        expired = make_cert("mx.expired.test", ["mx.expired.test"], issuer=ca, days=(-9, -1))
        selfsigned = make_cert("mx.self.test", ["mx.self.test", "mx.dane.test"])
        self.certs = {"ca": ca, "good": good, "self": selfsigned}
        self.ca_path = os.path.abspath(self.mktemp())
        with open(self.ca_path, "wb") as f:
            f.write(ca.pem())
        auth = fakemx.Behaviour(starttls=True, auth=("u", "p"))
        self.peers = {
            "127.0.0.2": TLSSinkFactory(auth, good),
            "127.0.0.3": TLSSinkFactory(fakemx.Behaviour(starttls=True, auth=("u", "p")), wrong),
            "127.0.0.4": TLSSinkFactory(fakemx.Behaviour(starttls=True), expired),
            "127.0.0.5": TLSSinkFactory(fakemx.Behaviour(starttls=True), selfsigned),
            "127.0.0.6": TLSSinkFactory(fakemx.Behaviour(), None),
            "127.0.0.7": TLSSinkFactory(fakemx.Behaviour(starttls=True), None, garbage=True),
        }
        for p in start_tls_sinks(self.peers, self.port):
            self.addCleanup(p.stopListening)
        other = make_cert("mx.bad.test", ["mx.bad.test"])
        tl = f"_{self.port}._tcp."
        mx = {"good.test": [(10, "mx.good.test")], "wrong.test": [(10, "mx.wrong.test")],
              "expired.test": [(10, "mx.expired.test")], "self.test": [(10, "mx.self.test")],
              "plain.test": [(10, "mx.plain.test")], "broken.test": [(10, "mx.broken.test")],
              "multi.test": [(10, "mx.wrong.test"), (20, "mx2.multi.test")],
              "outside.test": [(10, "mx.good.test")],
              "dane.test": [(10, "mx.dane.test")], "ta.test": [(10, "mx.good.test")],
              "danebad.test": [(10, "mx.bad.test")], "insecure.test": [(10, "mx.bad.test")],
              "servfail.test": [(10, "mx.sf.test")], "notlsa.test": [(10, "mx.self.test")]}
        a = {"mx.good.test": "127.0.0.2", "mx.wrong.test": "127.0.0.3",
             "mx.expired.test": "127.0.0.4", "mx.self.test": "127.0.0.5",
             "mx.plain.test": "127.0.0.6", "mx.broken.test": "127.0.0.7",
             "mx2.multi.test": "127.0.0.2", "mx.dane.test": "127.0.0.5",
             "mx.bad.test": "127.0.0.5", "mx.sf.test": "127.0.0.5"}
        records = fakemx.zone(mx, a)
        records[(tl + "mx.dane.test", 52)] = [tlsa(3, 1, 1, selfsigned.cert)]
        records[(tl + "mx.good.test", 52)] = [tlsa(2, 0, 1, ca.cert)]
        records[(tl + "mx.bad.test", 52)] = [tlsa(3, 1, 1, other.cert)]
        records[(tl + "mx.sf.test", 52)] = []
        dns_port, self.dns_server, ports = start_dnssec(
            records, insecure={"insecure.test"}, servfail={tl + "mx.sf.test"})
        for p in ports:
            self.addCleanup(p.stopListening)
        self.dns = f"127.0.0.1:{dns_port}"
        self.log: list[str] = []

    def relay(self, level: str = "may", table: str = "", **kw: Any) -> Relay:
        policy = TLSPolicy(level, parse_policy_table(table, "/tls_policy"),
                           store=trust_store(self.ca_path), lookup=SecureLookup(self.dns, reactor),
                           log=self.log.append, **kw)
        return Relay(MXResolver(self.dns, reactor=reactor), "mail.example.test", reactor,
                     port=self.port, tls=policy)

    def relayhost(self, host: str, verified_only: bool) -> Relay:
        """A relay to relayhost [host]:port with the password u:p, at level may."""
        hop = f"[{host}]:{self.port}"
        policy = TLSPolicy("may", store=trust_store(self.ca_path), log=self.log.append,
                           sasl_verified_only=verified_only)
        return Relay(MXResolver(self.dns, reactor=reactor), "mail.example.test", reactor,
                     port=self.port, relayhost=hop, credentials={hop: ("u", "p")}, tls=policy)

    @defer.inlineCallbacks
    def send(self, level: str, domain: str, relay: Relay | None = None) -> Any:
        relay = relay or self.relay(level)
        env = envelope(f"bob@{domain}")
        out = yield relay.deliver(relay.next_hop(env.recipients[0].address), env,
                                  env.recipients, MESSAGE)
        return out[0]

    def received(self, address: str) -> list[fakemx.Received]:
        return self.peers[address].received

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.log)


class OutboundTLSTests(FakeInternet):
    """The relay with the policy engine, level by level."""

    @defer.inlineCallbacks
    def test_may_delivers_whatever_the_certificate(self) -> None:
        """may: every certificate is accepted and the session logged as Postfix's smtp(8)
        (Verified / Trusted / Untrusted); no STARTTLS is plaintext; a broken handshake is
        retried in plaintext on the same host."""
        for domain, address, trust in (("good.test", "127.0.0.2", "Verified"),
                                       ("wrong.test", "127.0.0.3", "Trusted"),
                                       ("expired.test", "127.0.0.4", "Untrusted"),
                                       ("self.test", "127.0.0.5", "Untrusted")):
            out = yield self.send("may", domain)
            self.assertEqual((out.code, domain), (250, domain))
            self.assertTrue(self.received(address)[-1].tls)
            self.assertTrue(self.logged(
                f"{trust} TLS connection established to mx.{domain.split('.')[0]}.test"
                f"[{address}]:{self.port}: TLSv1.3 with cipher"), (domain, self.log))
        out = yield self.send("may", "plain.test")
        self.assertEqual(out.code, 250)
        self.assertFalse(self.received("127.0.0.6")[0].tls)
        out = yield self.send("may", "broken.test")
        self.assertEqual(out.code, 250)
        self.assertFalse(self.received("127.0.0.7")[0].tls)
        self.assertEqual(self.peers["127.0.0.7"].connections, 2)
        self.assertTrue(self.logged("Cannot start TLS: handshake failure with mx.broken.test"
                                    f"[127.0.0.7]:{self.port}; trying again without TLS"))
        self.assertFalse(self.logged("certificate verification failed"))

    @defer.inlineCallbacks
    def test_none_never_starts_tls(self) -> None:
        """none: STARTTLS is not used even when offered."""
        out = yield self.send("none", "good.test")
        self.assertEqual(out.code, 250)
        self.assertFalse(self.received("127.0.0.2")[0].tls)
        self.assertEqual(self.log, [])

    @defer.inlineCallbacks
    def test_encrypt(self) -> None:
        """encrypt: any certificate, but TLS itself is required: no STARTTLS is 4.7.4, a
        broken handshake 4.7.5 (no plaintext retry), both deferred."""
        for domain in ("good.test", "wrong.test", "expired.test", "self.test"):
            out = yield self.send("encrypt", domain)
            self.assertEqual((out.code, domain), (250, domain))
        out = yield self.send("encrypt", "plain.test")
        self.assertEqual((out.status, out.dsn), ("deferred", "4.7.4"))
        self.assertIn("TLS is required, but was not offered by host mx.plain.test", out.text)
        self.assertEqual(self.received("127.0.0.6"), [])
        out = yield self.send("encrypt", "broken.test")
        self.assertEqual((out.status, out.dsn), ("deferred", "4.7.5"))
        self.assertIn("Cannot start TLS: handshake failure", out.text)
        self.assertEqual(self.peers["127.0.0.7"].connections, 1)

    @defer.inlineCallbacks
    def test_verify(self) -> None:
        """verify: a certificate of a trusted CA (here the private one of smtp_tls_CAfile) for
        the MX host name; wrong name "Server certificate not verified", expired and
        self-signed "Server certificate not trusted", deferred 4.7.5 and logged; the next
        MX is tried after a failing one."""
        out = yield self.send("verify", "good.test")
        self.assertEqual(out.code, 250)
        self.assertTrue(self.logged("Verified TLS connection established to mx.good.test"))
        for domain, text, why in (
                ("wrong.test", "Server certificate not verified", "names none of mx.wrong.test"),
                ("expired.test", "Server certificate not trusted", "certificate has expired"),
                ("self.test", "Server certificate not trusted", "self-signed certificate")):
            out = yield self.send("verify", domain)
            self.assertEqual((out.status, out.dsn, out.text), ("deferred", "4.7.5", text))
            self.assertTrue(self.logged(f"certificate verification failed for mx.{domain}"),
                            self.log)
            self.assertTrue(self.logged(why), (why, self.log))
        self.assertEqual([self.received(a) for a in ("127.0.0.3", "127.0.0.4", "127.0.0.5")],
                         [[], [], []])
        out = yield self.send("verify", "multi.test")
        self.assertEqual((out.code, out.relay), (250, f"mx2.multi.test[127.0.0.2]:{self.port}"))
        out = yield self.send("verify", "outside.test")  # the (insecure) MX name matches
        self.assertEqual(out.code, 250)

    @defer.inlineCallbacks
    def test_verify_without_the_private_ca(self) -> None:
        """Without smtp_tls_CAfile the private CA is not trusted: even the good peer is
        refused at verify (the system store only)."""
        policy = TLSPolicy("verify", store=trust_store(), log=self.log.append)
        relay = Relay(MXResolver(self.dns, reactor=reactor), "mail.example.test", reactor,
                      port=self.port, tls=policy)
        out = yield self.send("verify", "good.test", relay)
        self.assertEqual((out.status, out.text), ("deferred", "Server certificate not trusted"))

    @defer.inlineCallbacks
    def test_secure_matches_the_next_hop_not_the_mx_name(self) -> None:
        """secure: the certificate must name the next-hop domain or a subdomain (nexthop,
        dot-nexthop); an MX host outside the domain fails even with a good certificate."""
        out = yield self.send("secure", "good.test")
        self.assertEqual(out.code, 250)
        out = yield self.send("secure", "multi.test")
        self.assertEqual(out.code, 250)
        out = yield self.send("secure", "outside.test")
        self.assertEqual((out.status, out.text), ("deferred", "Server certificate not verified"))

    @defer.inlineCallbacks
    def test_policy_maps(self) -> None:
        """smtp_tls_policy_maps overrides the global level per destination, with match=."""
        relay = self.relay("may", "wrong.test verify\n.test may\n"
                                  "outside.test secure match=.good.test\n")
        out = yield self.send("may", "wrong.test", relay)
        self.assertEqual(out.text, "Server certificate not verified")
        out = yield self.send("may", "outside.test", relay)
        self.assertEqual(out.code, 250)
        out = yield self.send("may", "expired.test", relay)
        self.assertEqual(out.code, 250)

    @defer.inlineCallbacks
    def test_dane_ee_and_ta(self) -> None:
        """dane with authenticated answers: DANE-EE matches a self-signed certificate, DANE-TA
        the private root sent in the chain; both are logged Verified. The queries asked for
        the AD bit."""
        out = yield self.send("dane", "dane.test")
        self.assertEqual(out.code, 250)
        self.assertTrue(self.logged("Verified TLS connection established to mx.dane.test"))
        out = yield self.send("dane", "ta.test")
        self.assertEqual(out.code, 250)
        self.assertTrue(self.logged("Verified TLS connection established to mx.good.test"))
        secure = [q for q in self.dns_server.asked if q[1] == 52]
        self.assertEqual(len(secure), 2)
        self.assertTrue(all(ad for _, _, ad in secure))

    @defer.inlineCallbacks
    def test_dane_mismatch_and_failures(self) -> None:
        """A TLSA record that matches nothing defers (4.7.5, "Server certificate not
        trusted"); a TLSA SERVFAIL defers; an unsigned MX answer, or no TLSA records, is
        opportunistic TLS (may); dane-only then defers."""
        out = yield self.send("dane", "danebad.test")
        self.assertEqual((out.status, out.dsn, out.text),
                         ("deferred", "4.7.5", "Server certificate not trusted"))
        self.assertTrue(self.logged("no TLSA record matched"), self.log)
        out = yield self.send("dane", "servfail.test")
        self.assertEqual((out.status, out.dsn), ("deferred", "4.7.5"))
        self.assertIn("TLSA lookup for mx.sf.test", out.text)
        out = yield self.send("dane", "insecure.test")
        self.assertEqual(out.code, 250)
        self.assertTrue(self.logged("Untrusted TLS connection established to mx.bad.test"))
        out = yield self.send("dane", "notlsa.test")
        self.assertEqual(out.code, 250)
        out = yield self.send("dane-only", "notlsa.test")
        self.assertEqual((out.status, out.dsn), ("deferred", "4.7.5"))

    @defer.inlineCallbacks
    def test_relayhost_password_only_over_verified_tls(self) -> None:
        """relayhost with a password: sent over verified TLS; over TLS with a certificate for
        another name it is not sent and the mail is deferred with a clear reason, unless
        smtp_sasl_tls_verified_only = no."""
        for host, verified_only, code in (("mx.good.test", True, 250),
                                          ("mx.wrong.test", True, 450),
                                          ("mx.wrong.test", False, 250)):
            out = yield self.send("may", "anywhere.test", self.relayhost(host, verified_only))
            self.assertEqual((out.code, host, verified_only), (code, host, verified_only))
        self.assertEqual(self.received("127.0.0.2")[0].auth, "u")
        self.assertEqual(len(self.received("127.0.0.3")), 1)
        self.assertEqual(self.received("127.0.0.3")[0].auth, "u")

    @defer.inlineCallbacks
    def test_refused_password_is_logged(self) -> None:
        """The refusal to send the password names the host and the reason."""
        out = yield self.send("may", "anywhere.test", self.relayhost("mx.wrong.test", True))
        self.assertEqual((out.status, out.dsn), ("deferred", "4.7.0"))
        self.assertIn(f"not sending the password to mx.wrong.test[127.0.0.3]:{self.port} over"
                      " an unverified TLS connection (Trusted: the certificate names none of"
                      " mx.wrong.test)", out.text)
        self.assertEqual(self.received("127.0.0.3"), [])




class ServerTLSTests(FakeInternet):
    """The real server (twistd, tests/integration/harness.py) relaying with mail.ini's keys:
    smtp_tls_security_level, smtp_tls_CAfile, smtp_tls_policy_maps; the maillog lines."""

    timeout = 90

    @defer.inlineCallbacks
    def test_verify_with_private_ca_and_policy_map(self) -> None:
        """verify with the private CA: good.test is sent over Verified TLS; wrong.test is
        deferred "Server certificate not verified" after "certificate verification failed";
        expired.test is ``may`` by the policy map and sent over Untrusted TLS."""
        site = Site(self)
        ca = os.path.join(site.dir, "ca.pem")
        table = os.path.join(site.dir, "tls_policy")
        with open(ca, "wb") as f:
            f.write(self.certs["ca"].pem())
        with open(table, "w") as f:
            f.write("# per destination\nexpired.test  may\n")
        site.mail_extra = (f"dns_resolver = {self.dns}\nsmtp_port = {self.port}\n"
                           "mynetworks = 127.0.0.0/8\nsmtp_tls_security_level = verify\n"
                           f"smtp_tls_CAfile = {ca}\nsmtp_tls_policy_maps = {table}\n"
                           "minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n")
        site.config = site._write("mail.ini", site.ini())
        site.start()
        rcpts = ["bob@good.test", "bob@wrong.test", "bob@expired.test"]

        def send() -> Any:
            with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=15) as s:
                return s.sendmail("boss@example.test", rcpts, message("tls", "hello\n"))
        yield threads.deferToThread(send)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            log = site.maillog_text()
            if log.count("status=sent") >= 2 and "status=deferred" in log:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        log = site.maillog_text()
        p = self.port
        self.assertRegex(log, rf"smtp\[\d+\]: Verified TLS connection established to"
                         rf" mx.good.test\[127.0.0.2\]:{p}: TLSv1.3 with cipher \S+"
                         r" \(\d+/\d+ bits\)")
        self.assertRegex(log, r"to=<bob@good.test>, relay=mx.good.test.*status=sent")
        self.assertRegex(log, rf"smtp\[\d+\]: certificate verification failed for"
                         rf" mx.wrong.test\[127.0.0.3\]:{p}: the certificate names none of")
        self.assertRegex(log, r"to=<bob@wrong.test>, .*dsn=4.7.5, status=deferred"
                         r" \(Server certificate not verified\)")
        self.assertRegex(log, rf"Untrusted TLS connection established to"
                         rf" mx.expired.test\[127.0.0.4\]:{p}")
        self.assertRegex(log, r"to=<bob@expired.test>, .*status=sent")
        self.assertEqual(self.received("127.0.0.3"), [])

    def test_broken_policy_table_refuses_the_start(self) -> None:
        """A broken smtp_tls_policy_maps line refuses the start before anything binds: one
        line naming mail.ini, the key and the table's file:line; exit status 78."""
        site = Site(self)
        table = os.path.join(site.dir, "tls_policy")
        with open(table, "w") as f:
            f.write("good.test  verify\nbad.test  sometimes\n")
        site.mail_extra = f"smtp_tls_policy_maps = {table}\n"
        site.config = site._write("mail.ini", site.ini())
        status, out, err = run_to_exit(site.config, site.dir)
        self.assertEqual(status, 78)
        self.assertNotIn("Traceback", out + err)
        self.assertEqual(err.splitlines(), [
            f"mailsuite: {site.config}: [mail] smtp_tls_policy_maps: {table}:2: unknown TLS"
            " security level 'sometimes' (not one of none, may, encrypt, dane, dane-only,"
            " verify, secure)"])

    def test_ca_file_mail_owner_cannot_read(self) -> None:
        """Under privilege separation the network process reads smtp_tls_CAfile: a file
        mail_owner cannot read refuses the start, saying so (not a failure at the first
        delivery)."""
        if not harness.PRIVSEP:
            raise unittest.SkipTest("needs root and the mail_owner user")
        site = Site(self)
        ca = os.path.join(site.dir, "ca.pem")
        with open(ca, "wb") as f:
            f.write(self.certs["ca"].pem())
        os.chmod(ca, 0o600)
        site.mail_extra = f"smtp_tls_CAfile = {ca}\n"
        site.config = site._write("mail.ini", site.ini())
        status, out, err = run_to_exit(site.config, site.dir)
        self.assertNotEqual(status, 0)
        self.assertNotIn("Traceback", out + err)
        self.assertIn(f"[mail] smtp_tls_CAfile: {ca}: Permission denied (read by mail_owner)",
                      err)
