"""DKIM signing through the real server, checked by an independent verifier: keys made by the
real ``mailsuite dkim keygen`` command, its TXT records served by a DNS server on loopback,
mail sent by an authenticated user, a mynetworks client, ``sendmail`` (pickup) and a port-25
stranger, read back from the mbox and from a receiving MX, and verified by dkimpy's
``dkimverify`` command (dkimverify_at.py: its main with dnspython pointed at the test DNS)."""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
from typing import Any

from twisted.internet import defer, threads
from twisted.names import dns
from twisted.trial import unittest

from tests import fakemx
from tests.integration.harness import PRIVSEP, ROOT
from tests.integration.test_commands import MTASite, read, wait_for
from tests.integration.test_startup_failures import run_to_exit
from tests.test_dkim_sign import SHORT_RSA

VERIFY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dkimverify_at.py")
#: a body with what SMTP and mbox change on the way: a leading dot, a "From " line
BODY = "Dear all,\n.a line with a dot\nFrom the desk of the boss\n\ttabbed   spaced  \n"
MX = "127.0.0.4"


def message(sender: str, subject: str, to: str = "carol@example.test") -> bytes:
    return (f"From: Boss <{sender}>\nTo: <{to}>\nSubject: {subject}\n"
            f"Message-ID: <{subject}@example.test>\n\n{BODY}").encode()


def mailsuite(*argv: str) -> subprocess.CompletedProcess[str]:
    """The ``mailsuite`` command (mailsuite.admin's console entry) of this checkout."""
    return subprocess.run([sys.executable, "-c", "from mailsuite.admin import entry; entry()",
                           *argv], env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=60, check=False)


def keygen(site: MTASite, domain: str, selector: str, *more: str) -> tuple[str, list[str], str]:
    """(record name, its strings, the [dkim] line) of a key keygen makes for ``domain``."""
    out = os.path.join(site.dir, "dkim", f"{domain}.key")
    p = mailsuite("dkim", "keygen", domain, "--selector", selector, "--out", out,
                  "-C", site.config, *more)
    assert p.returncode == 0, p.stderr
    record = next(line for line in p.stdout.splitlines() if " IN TXT " in line)
    name, _, strings = record.partition(" IN TXT ")
    return name.rstrip("."), re.findall(r'"([^"]*)"', strings), p.stdout.strip().splitlines()[-1]


def mbox_messages(text: bytes) -> dict[str, bytes]:
    """{Subject: the message as sent, CRLF} of an mbox (the From_ line off, >From unquoted)."""
    out = {}
    for chunk in re.split(rb"(?:^|\n)From [^\n]*\n", text):
        if not chunk.strip():
            continue
        body = re.sub(rb"(?m)^>(>*From )", rb"\1", chunk.removesuffix(b"\n"))
        subject = re.search(rb"(?m)^Subject: (\S+)", body)
        assert subject is not None, chunk
        out[subject.group(1).decode()] = body.replace(b"\n", b"\r\n")
    return out


def dkimverify(port: int, data: bytes) -> tuple[int, str]:
    p = subprocess.run([sys.executable, VERIFY, str(port)], input=data, capture_output=True,
                       timeout=60, check=False)
    return p.returncode, (p.stdout + p.stderr).decode()


class DkimThroughServer(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.records: dict[tuple[str, int], list[Any]] = fakemx.zone(
            {"remote.test": [(10, "mx.remote.test")]}, {"mx.remote.test": MX})
        self.dns_port, _, ports = fakemx.start_dns(self.records)
        for p in ports:
            self.addCleanup(p.stopListening)
        self.smtp_port = fakemx.free_port_on([MX])
        sinks, ports = fakemx.start_sinks({MX: fakemx.Behaviour()}, self.smtp_port)
        self.mx = sinks[MX]
        for p in ports:
            self.addCleanup(p.stopListening)

    def start(self) -> MTASite:
        """(blocking) A server signing example.test (RSA, keygen's default 2048 bits) and
        ed.test (Ed25519), mynetworks 127.0.0.2 only: 127.0.0.1 is a stranger."""
        site = MTASite(self, "postmaster: boss\n", mail_extra=(
            f"mynetworks = 127.0.0.2/32\ndns_resolver = 127.0.0.1:{self.dns_port}\n"
            f"smtp_port = {self.smtp_port}\n"))
        lines = []
        for domain, selector, more in (("example.test", "rsa1", ()),
                                       ("ed.test", "ed1", ("--ed25519",))):
            name, strings, line = keygen(site, domain, selector, *more)
            self.records[(name, dns.TXT)] = [dns.Record_TXT(*(s.encode() for s in strings))]
            lines.append(line)
        key = os.stat(os.path.join(site.dir, "dkim", "example.test.key"))
        assert oct(key.st_mode & 0o777) == "0o600", oct(key.st_mode)
        if PRIVSEP:  # keygen -C: the key is mail_owner's, who signs
            import pwd
            assert key.st_uid == pwd.getpwnam(PRIVSEP).pw_uid
        with open(site.config, "a") as f:
            f.write("\n[dkim]\n" + "\n".join(lines) + "\n")
        site.start()
        return site

    def send_all(self, site: MTASite) -> None:
        """(blocking) One message through each door."""
        port = site.ports["smtp"]
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.login("boss", "secret")
            s.sendmail("boss@example.test", ["carol@example.test"],
                       message("boss@example.test", "authenticated"))
            s.sendmail("boss@example.test", ["far@remote.test"],
                       message("boss@example.test", "relayed", to="far@remote.test"))
        with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0)) as s:
            s.sendmail("app@ed.test", ["carol@example.test"], message("app@ed.test", "mynet"))
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.sendmail("boss@example.test", ["carol@example.test"],
                       message("boss@example.test", "stranger"))
        p = site.run("sendmail", "-i", "-f", "boss@example.test", "carol@example.test",
                     stdin=message("boss@news.example.test", "pickup"))
        assert p.returncode == 0, p.stderr
        wait_for("four messages for carol", lambda: read(site.inbox("carol")).count(
            "Subject: ") == 4)

    @defer.inlineCallbacks
    def test_signed_mail_verifies_with_dkimverify(self) -> None:
        """What an authenticated user (RSA, example.test), a mynetworks client (Ed25519,
        ed.test) and sendmail (From: a subdomain: signed d=example.test) send is signed and
        verifies with dkimverify over the message as stored in the mbox and as the MX got
        it; the stranger's mail on port 25 is not signed; a changed Subject or body fails."""
        site = yield threads.deferToThread(self.start)
        yield threads.deferToThread(self.send_all, site)
        yield threads.deferToThread(wait_for, "the relayed copy", lambda: self.mx.received)
        with open(site.inbox("carol"), "rb") as f:
            stored = mbox_messages(f.read())
        relayed = self.mx.received[0].data.replace(b"\n", b"\r\n")
        cases = [("authenticated", stored["authenticated"], "rsa-sha256", "example.test"),
                 ("relayed", relayed, "rsa-sha256", "example.test"),
                 ("mynet", stored["mynet"], "ed25519-sha256", "ed.test"),
                 ("pickup", stored["pickup"], "rsa-sha256", "example.test")]
        for what, data, algorithm, domain in cases:
            # on top of what we got (local(8) puts Return-Path, Delivered-To above it)
            head = data.split(b"\r\nReceived: ", 1)[0]
            self.assertRegex(head, rb"(^|\n)DKIM-Signature: v=1; a=" + algorithm.encode(), what)
            self.assertIn(f"d={domain};".encode(), data, what)
            code, said = yield threads.deferToThread(dkimverify, self.dns_port, data)
            self.assertEqual((code, said.strip()), (0, "signature ok"), what)
        self.assertNotIn(b"DKIM-Signature", stored["stranger"])
        # tampered: a signed header (the signature fails), the body (dkimverify stops at
        # dkimpy's ValidationError, exit 1)
        forged = stored["authenticated"].replace(b"Subject: authenticated", b"Subject: other")
        code, said = yield threads.deferToThread(dkimverify, self.dns_port, forged)
        self.assertEqual((code, said.strip()), (1, "signature verification failed"))
        forged = stored["authenticated"].replace(b"Dear all", b"Dear few")
        code, said = yield threads.deferToThread(dkimverify, self.dns_port, forged)
        self.assertEqual(code, 1)
        self.assertIn("body hash mismatch", said)
        signed = [line for line in site.maillog_text().splitlines()
                  if "DKIM-Signature field added" in line]
        self.assertEqual(len(signed), 4, signed)


class BrokenKeysAtStart(unittest.TestCase):
    def test_broken_keys_refuse_the_start(self) -> None:
        """A [dkim] line whose key is missing or too short: the server does not start (exit
        78, as for any mail.ini error), one stderr line each naming mail.ini, [dkim], the
        domain and the key file; nothing is bound."""
        site = MTASite(self, "postmaster: boss\n")
        short = os.path.join(site.dir, "short.key")
        with open(os.open(short, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(SHORT_RSA)
        missing = os.path.join(site.dir, "missing.key")
        with open(site.config, "a") as f:
            f.write(f"\n[dkim]\na.test = s1:{missing}\nb.test = s2:{short}\n")
        status, out, err = run_to_exit(site.config, site.dir)
        self.assertEqual(status, 78, err)
        self.assertNotIn("Traceback", out + err)
        self.assertEqual(err.splitlines(), [
            f"mailsuite: {site.config}: [dkim] a.test: {missing}: No such file or directory",
            f"mailsuite: {site.config}: [dkim] b.test: {short}: an RSA key of 512 bits:"
            " RFC 8301 requires at least 1024 (2048 recommended)"])

    def test_key_mail_owner_cannot_read(self) -> None:
        """(privilege separation) A key only root may read: refused at start, naming it and
        saying mail_owner must read it."""
        if not PRIVSEP:
            raise unittest.SkipTest("needs root and the mail_owner user")
        site = MTASite(self, "postmaster: boss\n")
        out = os.path.join(site.dir, "root.key")
        p = mailsuite("dkim", "keygen", "a.test", "--out", out, "--owner", "root")
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(site.config, "a") as f:
            f.write(f"\n[dkim]\na.test = s1:{out}\n")
        status, _, err = run_to_exit(site.config, site.dir)
        self.assertNotEqual(status, 0)
        self.assertEqual(err.splitlines(), [
            f"mailsuite: {site.config}: [dkim] a.test: {out}: Permission denied (read by"
            " mail_owner: `mailsuite dkim keygen` makes keys it owns, mode 0600)"])
