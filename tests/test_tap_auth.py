"""tap.py's assembly of the brute-force policy, passdb = pam and the autoconfig listeners."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest
from twisted.web.server import Site

from mailsuite import tap
from mailsuite.auth.checker import UnixChecker
from mailsuite.auth.pam import NssAccounts, PamChecker
from mailsuite.auth.policy import AuthPolicy
from tests.test_tap import NONE_ELSE, write_config

TLS = "ssl = yes\nssl_cert = {d}/tls/cert.pem\nssl_key = {d}/tls/key.pem\n"


def build(case, listen, extra="", tls="ssl = no\n", auth=""):
    path = write_config(case, listen, extra, tls)
    if auth:
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("[auth]\n", "[auth]\n" + auth))
    options = tap.Options()
    options.parseOptions(["--config", path])
    top = tap.build(options["cfg"], reactor, options["tls"])
    case.addCleanup(top.maillog.close)
    return top, {s.name.split("@")[0]: s.factory for s in top if "@" in s.name}


class PolicyAssemblyTests(unittest.TestCase):
    def test_one_policy_for_all_doors(self):
        """SMTP, POP3 and IMAP factories share one AuthPolicy built from [auth], so failures
        count across protocols."""
        _, factories = build(self, "smtp = 2525\npop3 = 2110\nimap = 2143\n" + NONE_ELSE,
                               auth="login_max_failures = 7\n")
        policies = {id(f.policy) for f in factories.values()}
        self.assertEqual(len(policies), 1)
        policy = factories["imap"].policy
        self.assertIsInstance(policy, AuthPolicy)
        self.assertEqual(policy.max_failures, 7)
        self.assertIsInstance(factories["imap"].portal.checkers[
            next(iter(factories["imap"].portal.checkers))], UnixChecker)


class AuthCacheAssemblyTests(unittest.TestCase):
    def checker(self, auth: str) -> UnixChecker:
        _, factories = build(self, "imap = 2143\nsmtp = no\npop3 = no\n" + NONE_ELSE, auth=auth)
        checkers = factories["imap"].portal.checkers
        return next(c for c in checkers.values() if isinstance(c, UnixChecker))

    def test_cache_from_config(self):
        """[auth] auth_cache_size/auth_cache_ttl reach the checker; size 0 turns the cache off."""
        checker = self.checker("auth_cache_size = 1M\nauth_cache_ttl = 10m\n")
        self.assertEqual(checker.cache.ttl, 600)
        self.assertIsNone(self.checker("auth_cache_size = 0\n").cache)


class PamAssemblyTests(unittest.TestCase):
    def test_passdb_pam(self):
        """passdb = pam: the portal checks passwords with PamChecker (service pam_service) and
        the realm and delivery look accounts up through NSS."""
        _, factories = build(self, "imap = 2143\nsmtp = no\npop3 = no\n" + NONE_ELSE,
                               auth="passdb = pam\npam_service = mail-test\n")
        the_portal = factories["imap"].portal
        checker = [c for c in the_portal.checkers.values() if isinstance(c, PamChecker)]
        self.assertEqual(len(checker), 1)
        self.assertEqual(checker[0].service, "mail-test")
        self.assertIsInstance(the_portal.realm.accounts, NssAccounts)


class AutoconfigAssemblyTests(unittest.TestCase):
    def test_off_by_default(self):
        """No autoconfig listener unless [listen] asks for one."""
        _, factories = build(self, "imap = 2143\nsmtp = no\npop3 = no\n" + NONE_ELSE)
        self.assertEqual(sorted(factories), ["imap"])

    def test_http_and_https(self):
        """autoconfig is a plain twisted.web Site; autoconfigs the same wrapped in the TLS of
        the mail ports."""
        top, factories = build(self, "imap = 2143\nsmtp = no\npop3 = no\n" + NONE_ELSE
                               + "autoconfig = 8080\nautoconfigs = 8443\n", tls=TLS)
        self.assertIsInstance(factories["autoconfig"], Site)
        self.assertIsInstance(factories["autoconfigs"], TLSMemoryBIOFactory)
        self.assertIsInstance(factories["autoconfigs"].wrappedFactory, Site)
        self.assertEqual(top.getServiceNamed("autoconfig@127.0.0.1").endpoint._port, 8080)
