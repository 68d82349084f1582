"""``mailsuite config`` (mailsuite/configcmd.py, mailsuite.config.setting_texts): postconf's
listing of the effective settings: the line format, ``$name`` expanded, -n and -d, keys asked
by name, unknown keys, and a refused file's errors and status."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile

from twisted.trial import unittest

from mailsuite import admin
from mailsuite.config import parse_config
from mailsuite.net import default_hostname

INI = """\
[mail]
myhostname = mx1.example.org
relay_domains = $mydomain,
    partner.example      # a continued value
smtp_mta_sts_enable = true
always_bcc = archive@$mydomain
[listen]
smtp = 2525
smtps = no
[tls]
ssl = no
[dkim]
example.org = 202612:/etc/mailsuite/dkim/example.org.key
"""


class ConfigCommandTests(unittest.TestCase):
    def setUp(self) -> None:
        self.ini = self.write(INI.replace("smtps = no", "smtps = no\npop3s = no\nimaps = no"))

    def write(self, text: str) -> str:
        fd, path = tempfile.mkstemp(prefix="ms-configcmd-", suffix=".ini")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.addCleanup(os.unlink, path)
        return path

    def run_config(self, *argv: str, ini: str | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err):
            code = admin.main(["config", "-C", ini or self.ini, *argv], out)
        return code, out.getvalue(), err.getvalue()

    def lines(self, *argv: str) -> list[str]:
        code, out, err = self.run_config(*argv)
        self.assertEqual((code, err), (0, ""))
        return out.splitlines()

    def test_every_key_once_in_its_format(self) -> None:
        """Every key of every section once: ``key = value`` for [mail], ``section.key = value``
        for the others, sorted within a section, [mail] first, [dkim]'s lines included."""
        lines = self.lines()
        names = [line.partition(" = ")[0].rstrip(" =") for line in lines]
        self.assertEqual(len(names), len(set(names)))
        self.assertIn("listen.smtp = 2525", lines)
        self.assertIn("tls.ssl = no", lines)
        self.assertIn("auth.first_valid_uid = 1000", lines)
        self.assertIn("dkim.example.org = 202612:/etc/mailsuite/dkim/example.org.key", lines)
        mail = [n for n in names if "." not in n]
        self.assertEqual(mail, sorted(mail))
        self.assertEqual(names[:len(mail)], mail)
        self.assertIn("relay_domains", mail)

    def test_values_expanded_as_the_file_takes_them(self) -> None:
        """$name expanded (a default built from another key too), a continued value on one
        line, a boolean as yes/no, a literal $ as $$, an empty value as ``key =``."""
        lines = self.lines()
        self.assertIn("relay_domains = example.org, partner.example", lines)
        self.assertIn("mydestination = mx1.example.org, localhost.example.org, localhost", lines)
        self.assertIn("always_bcc = archive@example.org", lines)
        self.assertIn("smtp_mta_sts_enable = yes", lines)
        self.assertIn("relayhost =", lines)
        rbl = next(line for line in lines if line.startswith("default_rbl_reply = "))
        self.assertTrue(rbl.startswith("default_rbl_reply = $$rbl_code "), rbl)

    def test_printed_lines_read_back_the_same(self) -> None:
        """The listing, put back under its section headers, is a mail.ini that parses to the
        same configuration."""
        sections: dict[str, list[str]] = {}
        for line in self.lines():
            name, _, value = line.partition(" =")
            section, dot, key = name.partition(".")
            if not dot:
                section, key = "mail", name
            sections.setdefault(section, []).append(f"{key} ={value}")
        text = "".join(f"[{s}]\n" + "\n".join(keys) + "\n" for s, keys in sections.items())
        again = parse_config(text, "again.ini")
        with open(self.ini) as f:
            first = parse_config(f.read(), "again.ini")
        self.assertEqual(again, first)

    def test_n_only_what_the_file_sets(self) -> None:
        """-n: the file's keys (expanded), nothing else."""
        self.assertEqual(self.lines("-n"), [
            "always_bcc = archive@example.org",
            "myhostname = mx1.example.org",
            "relay_domains = example.org, partner.example",
            "smtp_mta_sts_enable = yes",
            "listen.imaps = no",
            "listen.pop3s = no",
            "listen.smtp = 2525",
            "listen.smtps = no",
            "tls.ssl = no",
            "dkim.example.org = 202612:/etc/mailsuite/dkim/example.org.key",
        ])

    def test_d_the_defaults_without_the_file(self) -> None:
        """-d: the defaults as if the file were empty (the host's name for myhostname), and
        the file is not even read."""
        lines = self.lines("-d", "myhostname", "mydomain", "relay_domains", "listen.smtp")
        host = default_hostname()
        self.assertEqual(lines[0], f"myhostname = {host}")
        self.assertEqual(lines[2:], ["relay_domains =", "listen.smtp = 25"])
        code, out, _ = self.run_config("-d", "tls.ssl", ini="/nonexistent/mail.ini")
        self.assertEqual((code, out), (0, "tls.ssl = yes\n"))

    def test_keys_by_name(self) -> None:
        """A [mail] key bare or as mail.KEY, section.key, section/key, a whole section; in
        the order asked."""
        self.assertEqual(self.lines("listen/smtp", "myhostname", "mail.mydomain", "tls.ssl"), [
            "listen.smtp = 2525", "myhostname = mx1.example.org", "mydomain = example.org",
            "tls.ssl = no"])
        whole = self.lines("tls")
        self.assertEqual([line for line in whole if line.startswith("tls.ssl")], [
            "tls.ssl = no", "tls.ssl_cert = /etc/mailsuite/tls/cert.pem",
            "tls.ssl_key = /etc/mailsuite/tls/key.pem"])
        self.assertTrue(all(line.startswith("tls.") for line in whole))
        self.assertEqual(whole, sorted(whole))

    def test_unknown_key(self) -> None:
        """An unknown key: postconf's warning naming it (with the right name when it is a key
        of another section), the known ones still printed, exit status 64."""
        code, out, err = self.run_config("smtp", "myhostname", "no_such_thing")
        self.assertEqual(code, 64)
        self.assertEqual(out, "myhostname = mx1.example.org\n")
        self.assertEqual(err.splitlines(), [
            "mailsuite config: warning: smtp: unknown parameter (did you mean listen.smtp?)",
            "mailsuite config: warning: no_such_thing: unknown parameter"])

    def test_refused_file(self) -> None:
        """A file mailsuite refuses: every error with file, section and key, status 78, and
        nothing on stdout; a missing file likewise."""
        bad = self.write("[mail]\nmessage_size_limit = lots\n[listen]\nsmpt = 25\n")
        code, out, err = self.run_config(ini=bad)
        self.assertEqual((code, out), (78, ""))
        self.assertIn(f"{bad}: [mail] message_size_limit:", err)
        self.assertIn(f"{bad}: [listen] smpt: unknown key (did you mean smtp?)", err)
        code, out, err = self.run_config(ini="/nonexistent/mail.ini")
        self.assertEqual(code, 78)
        self.assertIn("/nonexistent/mail.ini: cannot read the configuration file", err)

    def test_usage(self) -> None:
        """--help to stdout, status 0; -n with -d is a usage error (64)."""
        code, out, _ = self.run_config("--help")
        self.assertEqual(code, 0)
        self.assertIn("usage: mailsuite config", out)
        code, _, err = self.run_config("-n", "-d")
        self.assertEqual(code, 64)
        self.assertIn("not allowed with argument", err)
