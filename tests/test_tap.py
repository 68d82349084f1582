"""twistd's side: options, config refusal, and the services assembled from a mail.ini."""

from __future__ import annotations

import os

from twisted.python import usage
from twisted.trial import unittest

from mailsuite import tap


def write_config(case: unittest.TestCase, listen: str, extra: str = "") -> str:
    d = os.path.abspath(case.mktemp())
    os.makedirs(d)
    for name in ("passwd", "shadow", "aliases"):
        open(os.path.join(d, name), "w").close()
    path = os.path.join(d, "mail.ini")
    with open(path, "w") as f:
        f.write(f"""[mail]
myhostname = mail.example.test
inet_interfaces = 127.0.0.1
alias_maps = {d}/aliases
queue_directory = {d}/queue
maillog_file = {d}/maillog
{extra}
[listen]
{listen}
[auth]
passwd_file = {d}/passwd
shadow_file = {d}/shadow
[mailbox]
mail_location = mbox:~/mail:INBOX={d}/spool/%u
[tls]
ssl = no
""")
    return path


NONE_ELSE = "submission = no\nsmtps = no\npop3s = no\nimaps = no\n"


class OptionsTests(unittest.TestCase):
    def test_config_path_order(self) -> None:
        """--config wins, then $MAILSUITE_CONFIG, then /etc/mailsuite/mail.ini."""
        self.patch(os, "environ", {"MAILSUITE_CONFIG": "/env/mail.ini"})
        self.assertEqual(tap.config_path("/x/mail.ini"), "/x/mail.ini")
        self.assertEqual(tap.config_path(None), "/env/mail.ini")
        self.patch(os, "environ", {})
        self.assertEqual(tap.config_path(None), "/etc/mailsuite/mail.ini")

    def test_broken_config_is_a_usage_error(self) -> None:
        """A bad key stops twistd before anything is bound, naming file, section and key."""
        path = write_config(self, "smtp = 99999\n" + NONE_ELSE)
        options = tap.Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--config", path])
        self.assertIn(path, str(caught.exception))
        self.assertIn("[listen] smtp", str(caught.exception))

    def test_unserved_listener_refused(self) -> None:
        """A listener this version cannot serve yet is refused, not silently ignored."""
        path = write_config(self, "smtp = 25\nsubmission = 587\nsmtps = no\npop3s = no\nimaps = no\n")
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--config", path])
        self.assertIn("[listen] submission", str(caught.exception))


class BuildTests(unittest.TestCase):
    def test_one_service_per_listener(self) -> None:
        """Each enabled [listen] service becomes one named listening service; 'no' makes none."""
        path = write_config(self, "smtp = 2525\npop3 = no\nimap = 1143\n" + NONE_ELSE)
        options = tap.Options()
        options.parseOptions(["--config", path])
        top = tap.build(options["cfg"])
        self.addCleanup(top.maillog.close)
        names = sorted(s.name for s in top)
        self.assertEqual(names, ["control", "imap@127.0.0.1", "pickup", "qmgr", "smtp@127.0.0.1"])
        self.assertEqual(top.getServiceNamed("smtp@127.0.0.1").endpoint._port, 2525)

    def test_listen_addresses(self) -> None:
        """inet_interfaces: a list is used as is; loopback-only always includes 127.0.0.1;
        all is one wildcard socket."""
        self.assertEqual(tap.listen_addresses(["192.0.2.1", "::1"]), ["192.0.2.1", "::1"])
        self.assertEqual(tap.listen_addresses(["loopback-only"])[0], "127.0.0.1")
        self.assertIn(tap.listen_addresses(["all"]), (["::"], ["0.0.0.0"]))
