"""``mailsuite doctor``'s checks of files and sockets without a network (local.py, services.py,
verdict.py, the command's options): the certificate's names, issuer and dates, the spool's and
queue's owner and mode, tables that do not parse, /proc/net/tcp, the relay test's choice of
source address and its reading of the reply, the report's lines and exit status."""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import io
import os
import pwd
import shutil
import tempfile
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet import task
from twisted.trial import unittest

from mailsuite import admin, doctor
from mailsuite.doctor import local, services, verdict
from mailsuite.doctor.context import Context, NoAddresses, host_addresses
from mailsuite.doctor.resolve import Lookups
from tests.configs import real_config
from tests.fakedns_dnssec import make_cert
from tests.fakemx import ZoneResolver

HOST = "mail.example.com"


def context(cfg: Any, local_addresses: list[str] | None = None) -> Context:
    clock = task.Clock()
    return Context(cfg, Lookups(ZoneResolver({}), clock), clock,
                   local_addresses if local_addresses is not None else ["127.0.0.1"])


class Temp(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ms-doctor-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name: str, data: str | bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        return path


class CertificateTests(Temp):
    def verdict(self, certs: list[Any], **listen: Any) -> verdict.Result:
        path = self.write("cert.pem", b"".join(
            c.cert.public_bytes(serialization.Encoding.PEM) for c in certs))
        cfg = real_config(HOST, tls={"ssl_cert": path}, listen=listen,
                          mail={"mydestination": ["example.com"]})
        return local.check_certificate(context(cfg))

    def test_ca_issued_for_the_name(self) -> None:
        """A certificate from a CA for myhostname, 30 days left: ok, days left shown."""
        ca = make_cert("Test CA", [], ca=True)
        r = self.verdict([make_cert(HOST, [HOST], issuer=ca), ca])
        self.assertEqual(r.status, "ok", r)
        self.assertRegex(r.found, r"(29|30) days left")

    def test_self_signed(self) -> None:
        """A self-signed one (what the first start makes) FAILs, the fix getting a real one."""
        r = self.verdict([make_cert(HOST, [HOST])])
        self.assertEqual(r.status, "FAIL")
        self.assertIn("self-signed", r.found)
        self.assertIn("certbot certonly -d mail.example.com", r.fix)

    def test_wrong_name_and_autoconfig_names(self) -> None:
        """It must cover myhostname, and autoconfig./autodiscover. of our domains when an
        autoconfig site is on."""
        ca = make_cert("Test CA", [], ca=True)
        r = self.verdict([make_cert("other", ["other.example.com"], issuer=ca)])
        self.assertIn("does not cover mail.example.com", r.found)
        r = self.verdict([make_cert(HOST, [HOST], issuer=ca)], autoconfigs=8443)
        self.assertIn("does not cover autoconfig.example.com, autodiscover.example.com",
                      r.found)

    def test_expiry(self) -> None:
        """Under 21 days left: warn; expired: FAIL."""
        ca = make_cert("Test CA", [], ca=True)
        r = self.verdict([make_cert(HOST, [HOST], issuer=ca, days=(-80, 10))])
        self.assertEqual(r.status, "warn")
        self.assertRegex(r.found, r"(9|10) days left")
        r = self.verdict([make_cert(HOST, [HOST], issuer=ca, days=(-80, -1))])
        self.assertEqual(r.status, "FAIL")
        self.assertIn("expired", r.found)

    def test_missing_file_and_tls_off(self) -> None:
        cfg = real_config(HOST, tls={"ssl_cert": os.path.join(self.dir, "none.pem")})
        self.assertIn("No such file", local.check_certificate(context(cfg)).found)
        cfg = real_config(HOST, tls={"ssl": "no"})
        self.assertEqual(local.check_certificate(context(cfg)).status, "warn")


class DirectoryTests(Temp):
    def test_spool_mode(self) -> None:
        """The INBOX directory must be root:mail 2775 (setup-debian.sh): another mode FAILs
        with the chown/chmod to run."""
        spool = os.path.join(self.dir, "spool")
        os.mkdir(spool)
        os.chmod(spool, 0o755)
        cfg = real_config(HOST, mailbox={"mail_location": f"mbox:~/mail:INBOX={spool}/%u"})
        r = local.check_spool(context(cfg))
        self.assertEqual(r.status, "FAIL")
        self.assertEqual(r.fix, f"chown root:mail {spool} && chmod 2775 {spool}")
        if os.geteuid() == 0:
            os.chown(spool, 0, grp.getgrnam("mail").gr_gid)
            os.chmod(spool, 0o2775)
            self.assertEqual(local.check_spool(context(cfg)).status, "ok")

    def test_inbox_in_home(self) -> None:
        cfg = real_config(HOST, mailbox={"mail_location": "mbox:~/mail:INBOX=~/mbox"})
        self.assertEqual(local.check_spool(context(cfg)).status, "ok")

    def test_queue(self) -> None:
        """Under privilege separation the queue is root's 0755 and its work directories
        mail_owner's with QUEUE_SUBDIRS' modes; a missing queue is a warning (made at start)."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("chown needs root")
        owner = pwd.getpwnam("nobody")
        queue = os.path.join(self.dir, "queue")
        cfg = real_config(HOST, mail={"queue_directory": queue, "mail_owner": "nobody"})
        self.assertEqual(local.check_queue(context(cfg)).status, "warn")
        os.mkdir(queue, 0o755)
        os.chmod(queue, 0o755)
        os.mkdir(os.path.join(queue, "active"), 0o700)
        os.chown(os.path.join(queue, "active"), owner.pw_uid, owner.pw_gid)
        self.assertEqual(local.check_queue(context(cfg)).status, "ok")
        os.chmod(os.path.join(queue, "active"), 0o755)
        r = local.check_queue(context(cfg))
        self.assertEqual(r.status, "FAIL")
        self.assertIn("active/ is nobody:nogroup 0755, not nobody 0700", r.found)
        os.chmod(queue, 0o777)
        self.assertIn("not root 0755", local.check_queue(context(cfg)).found)


class TableTests(Temp):
    def test_bad_alias_line_and_no_postmaster(self) -> None:
        """A bad aliases line FAILs naming the file and line; a table without postmaster
        warns (newaliases' own messages)."""
        bad = self.write("aliases", "postmaster: root\nbroken line without colon\n")
        cfg = real_config(HOST, mail={"alias_maps": [bad]})
        got = {r.check: r for r in local.check_tables(context(cfg))}
        self.assertEqual(got["aliases"].status, "FAIL")
        self.assertIn(f"{bad}", got["aliases"].found)
        self.write("aliases", "boss: root\n")
        got = {r.check: r for r in local.check_tables(context(cfg))}
        self.assertEqual(got["aliases"].status, "warn")
        self.assertIn("postmaster", got["aliases"].found)

    def test_content_table_that_does_not_parse(self) -> None:
        """header_checks with a bad pattern: the server's start-up check's message, a FAIL."""
        table = self.write("header_checks", "/unclosed(/ REJECT no\n")
        aliases = self.write("aliases", "postmaster: root\n")
        cfg = real_config(HOST, mail={"alias_maps": [aliases],
                                      "header_checks": [("regexp", table)]})
        got = {r.check: r for r in local.check_tables(context(cfg))}
        self.assertEqual(got["aliases"].status, "ok")
        r = got["tables content/dkim/bcc/audit"]
        self.assertEqual(r.status, "FAIL")
        self.assertIn(table, r.found)
        self.assertEqual(got["tables access"].status, "ok")


PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1
   1: 0100007F:0019 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2
   2: 00000000:006E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3
"""
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:0019 00000000000000000000000000000000:0000 0A
   1: 0000000000000000FFFF00000100007F:006E 00000000000000000000000000000000:0000 0A
"""


class ServiceTests(Temp):
    def test_listening_sockets_from_proc(self) -> None:
        """/proc/net/tcp and tcp6: the LISTEN sockets of a port (not connections), IPv6 words
        decoded, ::ffff:a.b.c.d as a.b.c.d."""
        tables = (self.write("tcp", PROC_TCP), self.write("tcp6", PROC_TCP6))
        self.assertEqual(services.listening(25, tables), ["127.0.0.1", "::1"])
        self.assertEqual(services.listening(110, tables), ["0.0.0.0", "127.0.0.1"])
        self.assertEqual(services.listening(143, tables), [])

    def test_greeting_judged(self) -> None:
        """Another server on the port (an HTTP answer on 25) FAILs; 220 is ok."""
        self.assertEqual(services._judge("c", "smtp", "220 mail ESMTP", "x").status, "ok")
        r = services._judge("c", "smtp", "HTTP/1.1 400", "x")
        self.assertEqual(r.status, "FAIL")
        self.assertIn("another server", r.fix)
        self.assertEqual(services._judge("c", "imaps", "* OK ready", "x").status, "ok")

    def test_relay_sources(self) -> None:
        """The relay test goes from an address outside mynetworks (loopback first to a
        loopback listener; the source itself behind a wildcard; never link-local IPv6)."""
        cfg = real_config(HOST, mail={"mynetworks": [ipaddress.ip_network("192.0.2.0/24")]})
        ctx = context(cfg, ["192.0.2.1", "198.51.100.3", "127.0.0.1", "fe80::1", "::1"])
        self.assertEqual(services.relay_attempts(ctx, ["127.0.0.1"]),
                         [("127.0.0.1", "127.0.0.1"), ("198.51.100.3", "127.0.0.1")])
        self.assertEqual(services.relay_attempts(ctx, ["::"]),
                         [("198.51.100.3", "198.51.100.3"), ("127.0.0.1", "127.0.0.1"),
                          ("::1", "::1")])

    def test_relay_cannot_run_when_every_address_is_trusted(self) -> None:
        """Every address of the host in mynetworks: no stranger to test from, a warning."""
        cfg = real_config(HOST, mail={"inet_interfaces": ["127.0.0.1"]})  # 127/8 trusted
        r = self.successResultOf(services.check_relay(context(cfg, ["127.0.0.1"])))
        self.assertEqual(r.status, "warn")
        self.assertIn("every address of this host is in mynetworks", r.found)

    def test_relay_replies(self) -> None:
        """250 to RCPT for an outside domain from a stranger: FAIL, open relay; 554 5.7.1: ok;
        another refusal: warn."""
        r = services._relay_verdict(250, "2.1.5 Ok", "192.0.2.1", "x@example.net")
        self.assertEqual(r.status, "FAIL")
        self.assertIn("OPEN RELAY", r.found)
        r = services._relay_verdict(554, "5.7.1 <x@example.net>: Relay access denied",
                                    "192.0.2.1", "x@example.net")
        self.assertEqual(r.status, "ok")
        self.assertEqual(services._relay_verdict(450, "4.7.1 later", "a", "b").status, "warn")

    def test_outside_domain_is_none_of_ours(self) -> None:
        cfg = real_config(HOST, mail={"mydestination": ["example.net"], "mydomain": "x.test"})
        self.assertEqual(services.outside_domain(context(cfg)), "example.org")


class ReportTests(unittest.TestCase):
    def test_lines_and_status(self) -> None:
        """A line per verdict, the fix under a line that is not ok; exit 0 with warnings,
        1 with a FAIL (or, --strict, a warning)."""
        results = [verdict.ok("a", "fine"), verdict.warn("bb", "hmm", "do x")]
        report = verdict.text(results)
        self.assertEqual(report.splitlines(), ["ok    a   fine", "warn  bb  hmm",
                                               "          fix: do x",
                                               "2 checks: 1 ok, 1 warn, 0 FAIL"])
        self.assertEqual(verdict.exit_status(results), 0)
        self.assertEqual(verdict.exit_status(results, strict=True), 1)
        self.assertEqual(verdict.exit_status([*results, verdict.fail("c", "x", "y")]), 1)

    def test_a_check_that_raises_is_a_verdict(self) -> None:
        """A check that raises becomes a FAIL line naming the error, and the checks after it
        still run."""
        got = self.successResultOf(doctor._guarded("queue", lambda: 1 / 0))
        self.assertEqual(got[0].status, "FAIL")
        self.assertIn("ZeroDivisionError", got[0].found)
        cfg = real_config(HOST, tls={"ssl": "no"})
        results = self.successResultOf(doctor.run_checks(
            context(cfg), skip=("host", "records", "ports", "relay")))
        self.assertEqual([r.check for r in results][:3],
                         ["certificate", "mail spool", "queue"])

    def test_host_addresses(self) -> None:
        """ip -j addr's JSON gives every address; a missing ip command is NoAddresses."""
        class Done:
            returncode, stderr = 0, ""
            stdout = ('[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1"}]},'
                      '{"ifname":"eth0","addr_info":[{"local":"2001:db8::5"},{"local":'
                      '"192.0.2.5"}]}]')
        self.assertEqual(host_addresses(lambda *a, **k: Done()),
                         ["127.0.0.1", "2001:db8::5", "192.0.2.5"])

        def missing(*a: Any, **k: Any) -> Any:
            raise FileNotFoundError(2, "No such file or directory")
        self.assertRaises(NoAddresses, host_addresses, missing)

    def test_help_and_bad_usage(self) -> None:
        """--help is exit 0 on stdout; an unknown option 64; a refused mail.ini 78."""
        out = io.StringIO()
        self.assertEqual(admin.main(["doctor", "--help"], out), 0)
        self.assertIn("--strict", out.getvalue())
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(admin.main(["doctor", "--bogus"], io.StringIO()), 64)
            path = tempfile.mktemp(prefix="ms-doctor-")
            with open(path, "w") as f:
                f.write("[mail]\nno_such_key = 1\n")
            self.addCleanup(os.unlink, path)
            self.assertEqual(admin.main(["doctor", "-C", path], io.StringIO()), 78)
        self.assertIn("no_such_key", err.getvalue())
        self.assertIn("doctor", admin.usage())

