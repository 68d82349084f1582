"""ACME certificates (mailsuite.acme): the [tls] acme keys, the renewal decision, the atomic
writing of key and certificate, the http-01 token store and its HTTP answers, and the service's
schedule (start, daily, retries) with a fake issuer on a task.Clock."""

from __future__ import annotations

import dataclasses
import datetime
import os
import stat

from twisted.internet import task
from twisted.trial import unittest

from mailsuite.acme import certfiles, conf, tokens
from mailsuite.acme.service import DAY, AcmeService, add_acme
from mailsuite.config import ConfigError, parse_config
from mailsuite.threads import inline
from tests.acmefakes import EPOCH, FakeIssuer, ca_signed
from tests.test_autoconfig import http

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
BASE = """\
[mail]
myhostname = mail.example.test
mydomain = example.test
mydestination = $myhostname, example.test, other.test, localhost
[listen]
autoconfig = 80
"""


def config(extra: str = "", base: str = BASE):
    return parse_config(base + extra, "mail.ini")


class ConfigTests(unittest.TestCase):
    def test_defaults(self) -> None:
        """acme is off by default; the directory is Let's Encrypt's production one; 30 days
        before expiry (certbot's); the account key and tokens live beside the TLS files."""
        tls = config().tls
        self.assertFalse(tls.acme)
        self.assertEqual(tls.acme_server, "https://acme-v02.api.letsencrypt.org/directory")
        self.assertEqual(tls.acme_renew_before, 30 * 86400)
        cfg = config()
        self.assertEqual(conf.account_key_path(cfg), "/etc/mailsuite/tls/acme-account.key")
        self.assertEqual(conf.challenge_dir(cfg), "/etc/mailsuite/tls/acme-challenge")

    def test_names(self) -> None:
        """myhostname, then autoconfig. and autodiscover. of each of our mail domains (not
        localhost, not myhostname itself), mta-sts. too when a policy is served; acme_names
        replaces the list."""
        self.assertEqual(conf.names_of(config("[tls]\nacme = yes\n")), [
            "mail.example.test", "autoconfig.example.test",
            "autodiscover.example.test", "autoconfig.other.test", "autodiscover.other.test"])
        sts = config("", BASE.replace("[listen]\n", "mta_sts_mode = enforce\n[listen]\n"))
        self.assertIn("mta-sts.example.test", conf.names_of(sts))
        only = config("[tls]\nacme = yes\nacme_names = mail.example.test, Imap.Example.Test.\n")
        self.assertEqual(conf.names_of(only), ["mail.example.test", "imap.example.test"])

    def test_refused_settings(self) -> None:
        """An http:// directory, a bad address, acme without the HTTP responder or with
        ssl = no: each refused naming section and key."""
        cases = [
            ("[tls]\nacme_server = http://ca.test/dir\n", "[tls] acme_server"),
            ("[tls]\nacme_email = not an address\n", "[tls] acme_email"),
            ("[tls]\nacme = yes\nssl = no\n", "[tls] acme: yes needs ssl"),
            ("[tls]\nacme_renew_before = soon\n", "[tls] acme_renew_before"),
        ]
        for extra, named in cases:
            with self.assertRaises(ConfigError) as caught:
                config(extra)
            self.assertIn(named, str(caught.exception), extra)
        with self.assertRaises(ConfigError) as caught:
            config("[tls]\nacme = yes\n", BASE.replace("autoconfig = 80\n", ""))
        self.assertIn("[tls] acme: yes needs [listen] autoconfig = 80", str(caught.exception))


NAMES = ["mail.example.test", "autoconfig.example.test"]


class DueTests(unittest.TestCase):
    def test_reasons(self) -> None:
        """A new certificate is due when there is none, when it is not PEM, self-signed,
        misses a name, or expires within renew_before; a CA's certificate for every name
        (a wildcard covers one label) with time left is kept."""
        now, month = EPOCH, 30 * 86400
        good = ca_signed(NAMES, days=90)[0]
        self.assertIsNone(certfiles.due(good, NAMES, now, month))
        self.assertIn("no certificate", certfiles.due(None, NAMES, now, month))
        self.assertIn("no PEM", certfiles.due(b"junk", NAMES, now, month))
        from mailsuite.tls import self_signed
        self.assertIn("self-signed", certfiles.due(self_signed(NAMES[0])[0], NAMES, now, month))
        partial = ca_signed(NAMES[:1])[0]
        self.assertIn("does not cover autoconfig.example.test",
                      certfiles.due(partial, NAMES, now, month))
        wildcard = ca_signed(["mail.example.test", "*.example.test"])[0]
        self.assertIsNone(certfiles.due(wildcard, NAMES, now, month))
        self.assertIsNotNone(certfiles.due(wildcard, ["a.b.example.test"], now, month))
        later = now + datetime.timedelta(days=61)
        self.assertIn("expires", certfiles.due(good, NAMES, later, month))


class InstallTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.cert = os.path.join(self.dir, "tls", "cert.pem")
        self.key = os.path.join(self.dir, "tls", "key.pem")

    def modes(self) -> tuple[int, int]:
        return tuple(stat.S_IMODE(os.stat(p).st_mode) for p in (self.cert, self.key))

    def test_new_files_then_renewal(self) -> None:
        """New files: the key is 0600, the certificate 0644, directories made, no temp file
        left behind. A renewal keeps the certificate's mode (0640 here) and makes a key that
        was 0640 0600 again."""
        chain, key, _ = ca_signed(NAMES)
        certfiles.install(self.cert, self.key, chain, key)
        self.assertEqual(self.modes(), (0o644, 0o600))
        with open(self.cert, "rb") as f:
            self.assertEqual(f.read(), chain)
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.cert))), ["cert.pem", "key.pem"])
        os.chmod(self.cert, 0o640)
        os.chmod(self.key, 0o640)
        chain, key, _ = ca_signed(NAMES)
        certfiles.install(self.cert, self.key, chain, key)
        self.assertEqual(self.modes(), (0o640, 0o600))
        with open(self.key, "rb") as f:
            self.assertEqual(f.read(), key)

    def test_mismatch_leaves_old_pair(self) -> None:
        """A certificate that is not for the key is refused before either file changes."""
        chain, key, _ = ca_signed(NAMES)
        certfiles.install(self.cert, self.key, chain, key)
        other_chain = ca_signed(NAMES)[0]
        with self.assertRaises(ValueError):
            certfiles.install(self.cert, self.key, other_chain, key)
        with open(self.cert, "rb") as f:
            self.assertEqual(f.read(), chain)


class TokenTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = tokens.TokenStore(os.path.join(os.path.abspath(self.mktemp()),
                                                    "acme-challenge"))

    def test_put_read_remove(self) -> None:
        """A published token reads back (file 0644 in a directory it makes); removed, it
        reads as None, and removing it again is no error."""
        self.store.put(TOKEN, TOKEN + ".thumb")
        self.assertEqual(self.store.read(TOKEN), (TOKEN + ".thumb").encode())
        path = os.path.join(self.store.directory, TOKEN)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)
        self.store.remove(TOKEN)
        self.assertIsNone(self.store.read(TOKEN))
        self.store.remove(TOKEN)

    def test_bad_names(self) -> None:
        """Names that are not base64url tokens of 22+ characters never reach the file
        system: reading one is None, writing one a ValueError; a symlink is not followed."""
        for name in ("../../etc/passwd", "short", TOKEN + "/x", ".hidden" + TOKEN, ""):
            self.assertIsNone(self.store.read(name), name)
            self.assertRaises(ValueError, self.store.put, name, "x")
        os.makedirs(self.store.directory)
        secret = os.path.join(self.store.directory, "..", "secret")
        with open(secret, "w") as f:
            f.write("secret")
        os.symlink(secret, os.path.join(self.store.directory, TOKEN))
        self.assertIsNone(self.store.read(TOKEN))

    def test_directory_must_be_ours(self) -> None:
        """The token directory is made 0755 whatever the umask (the HTTP responder reads it);
        a symlink in its place, or one others may write, is refused before anything is
        written."""
        old = os.umask(0o077)
        try:
            self.store.put(TOKEN, "x")
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(self.store.directory).st_mode), 0o755)
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        os.rename(self.store.directory, self.store.directory + ".gone")
        os.symlink(elsewhere, self.store.directory)
        self.assertRaises(OSError, self.store.put, TOKEN, "x")
        self.assertEqual(os.listdir(elsewhere), [])
        os.unlink(self.store.directory)
        os.mkdir(self.store.directory)
        os.chmod(self.store.directory, 0o777)
        self.assertRaises(OSError, self.store.put, TOKEN, "x")

    def test_token_dir_checked_for_network_process(self) -> None:
        """(root) With privilege separation the start refuses a token directory the network
        process could not read (under a 0700 directory), naming acme_challenge_dir."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root (a child takes another uid)")
        from mailsuite.acme.service import check_token_dir
        from mailsuite.startup import StartupError
        import shutil
        import tempfile
        top = tempfile.mkdtemp(prefix="ms-acme-", dir="/tmp")  # 0700, under a searchable /tmp
        self.addCleanup(shutil.rmtree, top, True)
        cfg = config(f"[tls]\nacme = yes\nssl_cert = {top}/tls/cert.pem\n")
        with self.assertRaises(StartupError) as caught:
            check_token_dir(cfg, (65534, 65534))
        self.assertIn("[tls] acme_challenge_dir", str(caught.exception))
        os.chmod(top, 0o755)
        check_token_dir(cfg, (65534, 65534))

    def test_http_answers(self) -> None:
        """With acme = yes the HTTP responder answers the CA's GET with the key
        authorization (text/plain), an unknown token with 404, a POST with 405; with
        acme = no the path is not served at all (404)."""
        cfg = config(f"[tls]\nacme = yes\nssl_cert = {self.store.directory}/../cert.pem\n")
        store = tokens.TokenStore(conf.challenge_dir(cfg))
        store.put(TOKEN, TOKEN + ".thumb")
        path = tokens.PREFIX.encode() + TOKEN.encode()
        status, head, body = http(cfg, b"GET", path)
        self.assertEqual((status, body), (200, (TOKEN + ".thumb").encode()))
        self.assertIn("text/plain", head)
        self.assertEqual(http(cfg, b"GET", path + b"x")[0], 404)
        self.assertEqual(http(cfg, b"POST", path)[0], 405)
        self.assertEqual(http(config(), b"GET", path)[0], 404)


class ServiceTests(unittest.TestCase):
    def setUp(self) -> None:
        d = os.path.abspath(self.mktemp())
        self.cert, self.key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        from mailsuite.tls import ensure_certificate
        ensure_certificate("mail.example.test", self.cert, self.key)  # the first start's
        self.cfg = config(f"[tls]\nacme = yes\nacme_names = {', '.join(NAMES)}\n"
                          f"ssl_cert = {self.cert}\nssl_key = {self.key}\n")
        self.clock = task.Clock()
        self.clock.advance(EPOCH.timestamp())
        self.issuer = FakeIssuer(lambda: datetime.datetime.fromtimestamp(self.clock.seconds(),
                                                                         datetime.UTC))
        self.reloads = 0

        def reload() -> None:
            self.reloads += 1

        self.service = AcmeService(self.cfg, self.clock, inline, reload, issue=self.issuer)

    def test_issue_at_start_then_daily_then_renew(self) -> None:
        """At start the self-signed certificate is replaced (issued, written, TLS reloaded);
        the daily checks leave a fresh certificate alone; 30 days before expiry (a 90-day
        certificate: day 60) a second one is issued and reloaded."""
        self.service.startService()
        self.clock.advance(0)
        self.assertEqual((len(self.issuer.calls), self.reloads), (1, 1))
        self.assertEqual(self.issuer.calls[0].names, tuple(NAMES))
        with open(self.cert, "rb") as f:
            first = f.read()
        self.assertIsNone(certfiles.due(first, NAMES, self.service.now(), 30 * 86400))
        for _ in range(59):
            self.clock.advance(DAY)
        self.assertEqual(len(self.issuer.calls), 1)
        self.clock.advance(DAY)
        self.assertEqual((len(self.issuer.calls), self.reloads), (2, 2))
        with open(self.cert, "rb") as f:
            self.assertNotEqual(f.read(), first)
        self.service.stopService()
        self.assertFalse(self.clock.getDelayedCalls())

    def test_new_certificate_when_acme_server_changes(self) -> None:
        """A certificate we got from one directory (staging) is replaced at the next check
        once acme_server names another (production), fresh as it is; one installed by hand
        (not the one recorded) is judged on its own."""
        self.service.startService()
        self.clock.advance(0)
        self.assertEqual(len(self.issuer.calls), 1)
        state = certfiles.read_state(self.service.state_path)
        self.assertEqual(state["server"], self.cfg.tls.acme_server)
        self.service.settings = dataclasses.replace(self.service.settings,
                                                    server="https://ca.test/other")
        self.clock.advance(DAY)
        self.assertEqual(len(self.issuer.calls), 2)
        self.assertEqual(self.issuer.calls[1].server, "https://ca.test/other")
        chain, key, _ = ca_signed(NAMES, start=self.service.now())
        certfiles.install(self.cert, self.key, chain, key)  # by hand
        self.service.settings = dataclasses.replace(self.service.settings, server="https://x.test/")
        self.clock.advance(DAY)
        self.assertEqual(len(self.issuer.calls), 2)
        self.service.stopService()

    def test_failure_retried_with_backoff(self) -> None:
        """A failed issuance changes no file and reloads nothing; it is tried again after
        1 h, then 2 h; a success resets the back-off to the daily check."""
        with open(self.cert, "rb") as f:
            before = f.read()
        self.issuer.fail = ConnectionRefusedError("connection refused")
        self.service.startService()
        self.clock.advance(0)
        self.assertEqual((len(self.issuer.calls), self.reloads), (1, 0))
        with open(self.cert, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds(), 3600)
        self.issuer.fail = RuntimeError("still down")
        self.clock.advance(3600)
        self.assertEqual(len(self.issuer.calls), 2)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds(), 7200)
        self.clock.advance(7200)
        self.assertEqual((len(self.issuer.calls), self.reloads), (3, 1))
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds(), DAY)
        self.service.stopService()

    def test_names_without_dns_left_out(self) -> None:
        """Without acme_names, an autoconfig name with no address in DNS (or whose look-up
        fails) is left out of the order, and the log says which and how to fix it;
        myhostname is always asked for. With acme_names, every listed name is asked for."""
        from twisted.internet import defer
        cfg = config(f"[tls]\nacme = yes\nssl_cert = {self.cert}\nssl_key = {self.key}\n")
        known = {"autoconfig.example.test": ["192.0.2.1"], "autodiscover.other.test": []}

        def addresses(name: str):
            if name == "autoconfig.other.test":
                return defer.fail(TimeoutError("no answer"))
            return defer.succeed(known.get(name, []))

        said: list[str] = []

        class Log:
            def write(self, program: str, text: str) -> None:
                said.append(text)

        svc = AcmeService(cfg, self.clock, inline, lambda: None, Log(), issue=self.issuer,
                          addresses=addresses)
        self.assertTrue(self.successResultOf(svc.check()))
        self.assertEqual(self.issuer.calls[0].names,
                         ("mail.example.test", "autoconfig.example.test"))
        self.assertIn("autodiscover.example.test, autoconfig.other.test, autodiscover.other.test:"
                      " no address in DNS", "\n".join(said))
        svc = AcmeService(self.cfg, self.clock, inline, lambda: None, issue=self.issuer,
                          addresses=addresses)
        os.unlink(self.cert)
        self.successResultOf(svc.check())
        self.assertEqual(self.issuer.calls[1].names, tuple(NAMES))

    def test_add_acme_only_when_on(self) -> None:
        """add_acme adds the service named acme for acme = yes, nothing for acme = no."""
        from twisted.application import service
        top = service.MultiService()
        self.assertIsNone(add_acme(top, config(), self.clock, inline, lambda: None))
        self.assertEqual(list(top), [])
        svc = add_acme(top, self.cfg, self.clock, inline, lambda: None)
        self.assertIs(top.getServiceNamed("acme"), svc)
