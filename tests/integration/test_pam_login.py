"""passdb = pam end to end: the real server (twistd) reads its PAM service from /etc/pam.d and
its accounts from NSS. Root only: the test writes a throw-away service file
/etc/pam.d/mailsuite-test-PID (removed again) whose stack accepts one password through
pam_exec, and logs in as ``nobody`` (uid 65534, an NSS account every Debian has)."""

from __future__ import annotations

import imaplib
import os
import pwd

from twisted.trial import unittest

from tests.integration.harness import Site

TIMEOUT = 20
CHECK = """#!/bin/sh
pw=$(tr -d '\\000')
[ "$PAM_USER" = nobody ] && [ "$pw" = 'pam secret' ]
"""
STACK = """#%PAM-1.0
auth [success=1 default=ignore] pam_exec.so quiet expose_authtok {check}
auth requisite pam_deny.so
auth required pam_permit.so
account required pam_permit.so
"""


def can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root to write a service file into /etc/pam.d"
    if not os.path.isdir("/etc/pam.d"):
        return "no /etc/pam.d"
    try:
        if pwd.getpwnam("nobody").pw_uid < 1000:
            return "nobody has a uid below first_valid_uid here"
    except KeyError:
        return "no NSS account nobody"
    return None


class PamSite(Site):
    def __init__(self, testcase, service: str) -> None:
        self.service = service
        super().__init__(testcase)

    def ini(self) -> str:
        return super().ini().replace(
            "[auth]\n", f"[auth]\npassdb = pam\npam_service = {self.service}\n", 1)


class PamLoginTests(unittest.TestCase):
    skip = can_run()

    def setUp(self) -> None:
        service = f"mailsuite-test-{os.getpid()}"
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        check = os.path.join(directory, "check")
        with open(check, "w") as f:
            f.write(CHECK)
        os.chmod(check, 0o755)
        path = os.path.join("/etc/pam.d", service)
        with open(path, "w") as f:
            f.write(STACK.format(check=check))
        self.addCleanup(os.remove, path)
        self.site = PamSite(self, service)
        self.site.start()

    def imap(self) -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", self.site.ports["imap"], timeout=TIMEOUT)

    def test_login_through_pam_and_nss(self) -> None:
        """The password PAM accepts logs ``nobody`` in over IMAP (account from NSS); a wrong
        one is NO [AUTHENTICATIONFAILED] and logged as Dovecot's pam() failure line."""
        with self.imap() as imap:
            typ, _ = imap.login("nobody", "pam secret")
            self.assertEqual(typ, "OK")
            imap.logout()
        refused = self.assertRaisesRegex(imaplib.IMAP4.error, "AUTHENTICATIONFAILED")
        with self.imap() as imap, refused:
            imap.login("nobody", "wrong")
        log = self.site.maillog_text()
        self.assertIn("Login: user=<nobody>", log)
        self.assertIn("auth: pam(nobody,127.0.0.1,<imap>): pam_authenticate() failed", log)
