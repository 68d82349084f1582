"""passdb = pam (mailsuite.auth.pam) against a real libpam with real PAM modules.

The stacks live in a temporary directory handed to ``pam_start_confdir``, so nothing under
/etc is touched. ``pam_exec`` with ``expose_authtok`` runs a small script that receives the
password exactly as our conversation function answered PAM's prompt: these tests prove the
ctypes plumbing (start, conversation, PAM_RHOST, pam_authenticate, pam_acct_mgmt, the fail-delay
hook, return codes) and the shipped etc/pam.d/mailsuite against the system's pam_unix stack
(refusals only: no test account with a known password exists in /etc/shadow).
"""

from __future__ import annotations

import os
import shutil

from twisted.cred import credentials
from twisted.cred.error import UnauthorizedLogin
from twisted.trial import unittest

from mailsuite import threads
from mailsuite.accounts import Account
from mailsuite.auth import pam
from tests.fakes import FakeAccounts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = "/lib/x86_64-linux-gnu/security"

PASSWORD_CHECK = """#!/bin/sh
# pam_exec expose_authtok: the password arrives on stdin, NUL-terminated.
pw=$(tr -d '\\000')
[ "$PAM_USER" = boss ] && [ "$pw" = 'sécret pass' ]
"""
ACCOUNT_CHECK = """#!/bin/sh
echo "$PAM_RHOST" > "$(dirname "$0")/rhost"
[ "$PAM_USER" != expired ]
"""

# Debian's common-auth shape: pam_exec says yes -> skip pam_deny.
STACK = """#%PAM-1.0
auth [success=1 default=ignore] pam_exec.so quiet expose_authtok {dir}/password-check
auth requisite pam_deny.so
auth required pam_permit.so
account [success=1 default=ignore] pam_exec.so quiet {dir}/account-check
account requisite pam_deny.so
account required pam_permit.so
"""


#: boss may log in; system's uid is below first_valid_uid (as root, daemon, nobody are)
ACCOUNTS = (Account("boss", 2000, 2000, "/home/boss"), Account("expired", 2001, 2001, "/home/x"),
            Account("system", 1, 1, "/usr/sbin"))


def have_pam():
    try:
        pam.library()
    except OSError:
        return False
    return os.path.exists(os.path.join(MODULES, "pam_exec.so"))


class PamStackTests(unittest.TestCase):
    if not have_pam():
        skip = "libpam or pam_exec.so not installed"

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.write("password-check", PASSWORD_CHECK, 0o755)
        self.write("account-check", ACCOUNT_CHECK, 0o755)
        self.write("mailsuite-test", STACK.format(dir=self.dir))
        self.write("always-no", "auth required pam_deny.so\naccount required pam_deny.so\n")
        self.write("broken", "auth required pam_no_such_module.so\n")
        self.accounts = FakeAccounts(*ACCOUNTS)
        self.checker = pam.PamChecker("mailsuite-test", self.accounts, threads.inline,
                                      confdir=self.dir)

    def write(self, name, text, mode=0o644):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    def login(self, user, password, client_ip=None):
        creds = credentials.UsernamePassword(user, password)
        if client_ip:
            creds.client_ip = client_ip
        return self.checker.requestAvatarId(creds)

    def test_right_password(self):
        """PAM gets the password our conversation answers (UTF-8, spaces) and says yes; the
        avatarId is the login name as bytes and the account came from the account lookup."""
        self.assertEqual(self.successResultOf(self.login(b"boss", "sécret pass".encode())), b"boss")
        self.assertEqual(self.accounts.asked, ["boss"])

    def test_wrong_password(self):
        """A wrong password is UnauthorizedLogin (pam_deny: PAM_AUTH_ERR); no account look-up."""
        self.failureResultOf(self.login(b"boss", b"wrong"), UnauthorizedLogin)
        self.assertEqual(self.accounts.asked, [])

    def test_code_of_a_wrong_password(self):
        """pam_check returns the refusing code itself."""
        code = pam.pam_check("mailsuite-test", b"boss", b"wrong", confdir=self.dir)
        self.assertEqual(code, pam.PAM_AUTH_ERR)

    def test_account_stack_refuses(self):
        """pam_acct_mgmt runs after authentication: its refusal is UnauthorizedLogin."""
        self.write("password-check", "#!/bin/sh\nexit 0\n", 0o755)
        self.failureResultOf(self.login(b"expired", b"x"), UnauthorizedLogin)
        self.successResultOf(self.login(b"boss", b"x"))

    def test_rhost_reaches_pam(self):
        """The client address of the credentials becomes PAM_RHOST (pam_access, logs)."""
        self.successResultOf(self.login(b"boss", "sécret pass".encode(), "192.0.2.7"))
        with open(os.path.join(self.dir, "rhost")) as f:
            self.assertEqual(f.read().strip(), "192.0.2.7")

    def test_account_lookup_refusal(self):
        """PAM says yes but the account may not log in (uid < first_valid_uid): refused."""
        self.write("password-check", "#!/bin/sh\nexit 0\n", 0o755)
        self.failureResultOf(self.login(b"system", b"x"), UnauthorizedLogin)

    def test_nul_and_empty_passwords(self):
        """A password with NUL cannot be passed to PAM: refused without asking PAM."""
        self.failureResultOf(self.login(b"boss", b"s\0x"), UnauthorizedLogin)

    def test_pam_deny_stack(self):
        """A stack of pam_deny refuses everything."""
        checker = pam.PamChecker("always-no", self.accounts, threads.inline,
                                 confdir=self.dir)
        d = checker.requestAvatarId(credentials.UsernamePassword(b"boss", b"x"))
        self.failureResultOf(d, UnauthorizedLogin)

    def test_broken_stack_is_unavailable_not_refused(self):
        """A stack PAM cannot run is a temporary failure (PamUnavailable), not a wrong
        password: the protocols answer "temporary", the brute-force policy does not count it."""
        checker = pam.PamChecker("broken", self.accounts, threads.inline,
                                 confdir=self.dir)
        d = checker.requestAvatarId(credentials.UsernamePassword(b"boss", b"x"))
        self.failureResultOf(d, pam.PamUnavailable)
        self.flushLoggedErrors()

    def test_unexpected_error_is_a_refusal(self):
        """An unexpected error inside the check (ctypes, OSError) is logged and refused like a
        wrong password (UnauthorizedLogin), as UnixChecker does: no SERVERBUG for the client,
        and the brute-force policy counts it."""
        checker = pam.PamChecker("always-no", self.accounts, threads.inline,
                                 confdir=self.dir)

        def broken(*args):
            raise OSError("libpam went away")

        checker.verify = broken
        d = checker.requestAvatarId(credentials.UsernamePassword(b"boss", b"x"))
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_no_sleep_on_failure(self):
        """A module's fail delay (pam_unix asks 2 s; pam_faildelay.so 30 s here) goes to our
        no-op PAM_FAIL_DELAY hook instead of libpam's sleep, so no pool thread sleeps (without
        the hook this test would take 15-45 s: libpam randomizes the delay to 50-150%)."""
        self.write("slow", "auth optional pam_faildelay.so delay=30000000\n"
                           "auth required pam_deny.so\n")
        pam.skipped_delay = 0
        self.assertEqual(pam.pam_check("slow", b"boss", b"x", confdir=self.dir), pam.PAM_AUTH_ERR)
        self.assertGreaterEqual(pam.skipped_delay, 15_000_000)


class ShippedServiceTests(unittest.TestCase):
    """etc/pam.d/mailsuite with the system's common-auth/common-account (pam_unix)."""

    if not have_pam() or not os.path.exists("/etc/pam.d/common-auth"):
        skip = "no libpam or no Debian common-auth stack"

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        shutil.copy(os.path.join(ROOT, "etc", "pam.d", "mailsuite"), self.dir)
        for name in ("common-auth", "common-account"):
            os.symlink(os.path.join("/etc/pam.d", name), os.path.join(self.dir, name))

    def test_unknown_user_refused(self):
        """The shipped file parses, includes the common stacks and pam_unix refuses an
        unknown user (a refusal code, not a stack error)."""
        code = pam.pam_check("mailsuite", b"no-such-user-4711", b"x", confdir=self.dir)
        self.assertIn(code, pam.REFUSALS)

    def test_locked_system_account_refused(self):
        """nobody (password '*' in shadow) cannot log in through pam_unix."""
        code = pam.pam_check("mailsuite", b"nobody", b"", confdir=self.dir)
        self.assertIn(code, pam.REFUSALS)
        code = pam.pam_check("mailsuite", b"nobody", b"guess", confdir=self.dir)
        self.assertIn(code, pam.REFUSALS)


class NssAccountsTests(unittest.TestCase):
    def test_lookup_from_nss(self):
        """Accounts come from getpwnam: uid, gid and home of the passwd database."""
        accounts = pam.NssAccounts(first_valid_uid=0)
        root = accounts.lookup("root")
        self.assertEqual((root.uid, root.home), (0, "/root"))

    def test_first_valid_uid(self):
        """Below first_valid_uid: no login (lookup None) but still a mail recipient."""
        accounts = pam.NssAccounts(first_valid_uid=1000)
        self.assertIsNone(accounts.lookup("root"))
        self.assertEqual(accounts.recipient("root").uid, 0)

    def test_unknown_and_odd_names(self):
        """Unknown names and names with NUL are no account."""
        accounts = pam.NssAccounts(first_valid_uid=0)
        self.assertIsNone(accounts.lookup("no-such-user-4711"))
        self.assertIsNone(accounts.lookup("ro\0ot"))
        self.assertIsNone(accounts.lookup(""))
