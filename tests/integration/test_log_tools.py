"""Issue 14 item 5: the maillog of the real server (twistd, real clients) read by the log tools
a Postfix admin already has, unchanged: fail2ban's stock filters (Debian's fail2ban-regex with
/etc/fail2ban/filter.d/postfix.conf in modes more, aggressive and auth, and dovecot.conf) match
every reject and failed login, and pflogsumm counts what was received, delivered and
rejected."""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import smtplib
import ssl
import subprocess
from typing import Any

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.integration import harness
from tests.integration.harness import Site
from tests.integration.test_restrictions import DNSBLCase, listing

TIMEOUT = 20
FILTERS = "/etc/fail2ban/filter.d"
MESSAGE = b"From: friend@remote.test\r\nSubject: hello\r\n\r\nhello\r\n"


def run(args: list[str]) -> str:
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout.decode("utf-8", "replace")
    return proc.stdout.decode("utf-8", "replace")


def fail2ban(maillog: str, filter_spec: str) -> list[str]:
    """The address of every line the stock filter matched, as fail2ban itself reads them."""
    return run(["fail2ban-regex", "--out", "ip", maillog, filter_spec]).split()


def pflogsumm(maillog: str) -> dict[str, int]:
    """pflogsumm's "Grand Totals" (received, delivered, rejected...) of ``maillog``."""
    out = run(["pflogsumm", "--smtpd-stats", maillog])
    return {name: int(count) for count, name in
            re.findall(r"^ +(\d+) +(received|delivered|forwarded|deferred|bounced|rejected"
                       r"|reject warnings|held|discarded)\b", out, re.M)}


class LogToolTests(unittest.TestCase):
    if not shutil.which("fail2ban-regex") or not os.path.exists(f"{FILTERS}/postfix.conf"):
        skip = "fail2ban is not installed (scripts/setup-debian.sh test installs it)"
    elif not shutil.which("pflogsumm"):
        skip = "pflogsumm is not installed (scripts/setup-debian.sh test installs it)"

    def setUp(self) -> None:
        self.site = Site(self, tls=True)
        self.site.start()
        self.context = ssl.create_default_context(cafile=self.site.cert)
        self.context.check_hostname = False

    def traffic(self) -> None:
        """Two messages delivered (one with two recipients), an unknown user (550 5.1.1) and a
        relay attempt (554 5.7.1) refused, a failed SMTP AUTH on 587 and on 465, a failed
        IMAP and POP3 login."""
        with smtplib.SMTP("127.0.0.1", self.site.ports["smtp"], timeout=TIMEOUT) as client:
            client.sendmail("friend@remote.test", ["boss@example.test"], MESSAGE)
            refused = client.sendmail("friend@remote.test",
                                      ["boss@example.test", "carol@example.test",
                                       "nobody@example.test", "someone@elsewhere.test"],
                                      MESSAGE)
        self.assertEqual({rcpt: code for rcpt, (code, _) in refused.items()},
                         {"nobody@example.test": 550, "someone@elsewhere.test": 554})
        with smtplib.SMTP("127.0.0.1", self.site.ports["submission"], timeout=TIMEOUT) as c:
            c.starttls(context=self.context)
            c.ehlo("client.example")
            with self.assertRaises(smtplib.SMTPAuthenticationError):
                c.login("boss", "wrong")  # LOGIN, then PLAIN: two failures
        with smtplib.SMTP_SSL("127.0.0.1", self.site.ports["smtps"], context=self.context,
                              timeout=TIMEOUT) as c:
            c.ehlo("client.example")
            c.user, c.password = "carol", "wrong"
            with self.assertRaises(smtplib.SMTPAuthenticationError):
                c.auth("PLAIN", c.auth_plain)
        with imaplib.IMAP4_SSL("127.0.0.1", self.site.ports["imaps"], ssl_context=self.context,
                               timeout=TIMEOUT) as imap, \
                self.assertRaisesRegex(imaplib.IMAP4.error, "AUTHENTICATIONFAILED"):
            imap.login("boss", "wrong")
        pop = poplib.POP3_SSL("127.0.0.1", self.site.ports["pop3s"], context=self.context,
                              timeout=TIMEOUT)
        pop.user("carol")
        with self.assertRaisesRegex(poplib.error_proto, r"\[AUTH\]"):
            pop.pass_("wrong")
        pop.quit()

    def test_stock_filters_and_pflogsumm_read_the_maillog(self) -> None:
        """Every ``reject:`` line is matched by postfix.conf (mode more, Debian's [postfix]
        jail; and mode normal) and by mode aggressive; every SASL failure by mode auth (Debian's
        [postfix-sasl] jail) and aggressive (with the ``disconnect ... auth=0/N`` lines of
        those sessions); dovecot.conf matches the auth line of every
        failed password and the login process's line of each failed IMAP and POP3
        connection; all for the client's address. pflogsumm counts 2 received, 3 delivered,
        2 rejected."""
        self.traffic()
        self.site.stop()  # every line written
        log = self.site.maillog_text()
        rejects = [line for line in log.splitlines() if ": reject: " in line]
        sasl = [line for line in log.splitlines() if "SASL" in line and "failed" in line]
        self.assertEqual(len(rejects), 2, log)
        self.assertEqual(len(sasl), 3, log)  # LOGIN and PLAIN on 587, PLAIN on 465
        self.assertIn(" postfix/submission/smtpd[", sasl[0])
        self.assertIn(" postfix/smtps/smtpd[", sasl[2])
        # every line of a session on 587 and 465, as Debian's master.cf names them
        self.assertRegex(log, r" postfix/submission/smtpd\[\d+\]: disconnect from .* auth=0/2")
        self.assertRegex(log, r" postfix/smtps/smtpd\[\d+\]: disconnect from .* auth=0/1")
        maillog = self.site.maillog
        for spec in ("postfix.conf", "postfix.conf[mode=normal]"):
            self.assertEqual(fail2ban(maillog, f"{FILTERS}/{spec}"), ["127.0.0.1"] * 2, log)
        self.assertEqual(fail2ban(maillog, f"{FILTERS}/postfix.conf[mode=auth]"),
                         ["127.0.0.1"] * 3, log)
        # and the two ``disconnect from ... auth=0/N`` lines (its ddos part), as Postfix's
        self.assertEqual(fail2ban(maillog, f"{FILTERS}/postfix.conf[mode=aggressive]"),
                         ["127.0.0.1"] * 7, log)
        # 3 SMTP + 1 IMAP + 1 POP3 passwords, and the IMAP and POP3 login lines
        self.assertEqual(fail2ban(maillog, f"{FILTERS}/dovecot.conf"), ["127.0.0.1"] * 7, log)
        totals = pflogsumm(maillog)
        self.assertEqual((totals["received"], totals["delivered"], totals["rejected"]),
                         (2, 3, 2), log)


class RBLTests(DNSBLCase):
    if not shutil.which("fail2ban-regex") or not os.path.exists(f"{FILTERS}/postfix.conf"):
        skip = "fail2ban is not installed (scripts/setup-debian.sh test installs it)"

    @defer.inlineCallbacks
    def test_rbl_reject_matched_by_postfix_rbl(self) -> Any:
        """A client listed in the DNSBL: the 554 5.7.1 ``Service unavailable; Client host
        [...] blocked using`` reject is matched by the stock filter in mode rbl (Debian's
        [postfix-rbl] jail) and in mode more ([postfix])."""
        server = self.dns(listing("127.0.0.1"))
        site = Site(self, mail_extra=f"dns_resolver = {server}\n"
                    "smtpd_client_restrictions = reject_rbl_client zen.example\n")
        site.start()

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=TIMEOUT) as client, \
                    self.assertRaises(smtplib.SMTPRecipientsRefused):
                client.sendmail("friend@remote.test", ["boss@example.test"], MESSAGE)

        yield threads.deferToThread(send)
        site.stop()
        log = site.maillog_text()
        for mode in ("rbl", "more"):
            found = yield threads.deferToThread(
                fail2ban, site.maillog, f"{FILTERS}/postfix.conf[mode={mode}]")
            self.assertEqual(found, ["127.0.0.1"], log)


class JailTests(unittest.TestCase):
    if not shutil.which("fail2ban-client") or not os.path.isdir("/etc/fail2ban/jail.d"):
        skip = "fail2ban is not installed (scripts/setup-debian.sh test installs it)"

    def test_shipped_jails(self) -> None:
        """etc/fail2ban/jail.d/mailsuite.conf beside Debian's own fail2ban configuration
        (a copy, without Debian's sshd jail, which reads the journal): fail2ban-client reads
        it and starts the jails postfix, postfix-sasl and dovecot, each on the maillog, with
        the stock filters (postfix-sasl: postfix in mode auth)."""
        conf = os.path.join(self.mktemp(), "fail2ban")
        shutil.copytree("/etc/fail2ban", conf)
        os.remove(os.path.join(conf, "jail.d", "defaults-debian.conf"))
        maillog = os.path.join(os.path.dirname(conf), "maillog")
        with open(maillog, "w"):
            pass
        ours = os.path.join(harness.ROOT, "etc", "fail2ban", "jail.d", "mailsuite.conf")
        with open(ours) as f:
            text = f.read()
        self.assertEqual(text.count("logpath = /var/log/maillog\n"), 3)
        with open(os.path.join(conf, "jail.d", "mailsuite.conf"), "w") as f:
            f.write(text.replace("/var/log/maillog", maillog))
        out = run(["fail2ban-client", "-c", conf, "-d"])
        for jail in ("postfix", "postfix-sasl", "dovecot"):
            self.assertIn(f"['add', '{jail}', 'auto']", out)
            self.assertIn(f"['set', '{jail}', 'addlogpath', '{maillog}', 'head']", out)
        sasl = [line for line in out.splitlines() if "'postfix-sasl', 'addfailregex'" in line]
        self.assertTrue(sasl and all("SASL" in line for line in sasl), out)
        self.assertNotIn("'sshd'", out)
