"""scripts/setup-debian.sh's machine set-up (``configure``, ``uninstall``) on a temporary root:
mail.ini installed once and never overwritten, the MTA commands made mailsuite's (links, or a
dpkg-divert of an installed MTA's files), twistd on PATH, and all of it undone again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial import unittest

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(CHECKOUT, "scripts", "setup-debian.sh")
COMMANDS = {"/usr/sbin/sendmail": "sendmail", "/usr/lib/sendmail": "sendmail",
            "/usr/bin/mailq": "mailq", "/usr/bin/newaliases": "newaliases",
            "/usr/local/bin/twistd": "twistd", "/usr/local/bin/mailsuite-queue": "mailsuite-queue",
            "/usr/local/bin/mailsuite": "mailsuite"}
#: What Debian's postfix package owns of them (/usr/lib/sendmail is its link to ../sbin/sendmail).
POSTFIX_FILES = ("/usr/sbin/sendmail", "/usr/lib/sendmail", "/usr/bin/mailq",
                 "/usr/bin/newaliases")


class SetupScriptTests(unittest.TestCase):
    if os.geteuid() != 0 or shutil.which("dpkg-divert") is None:
        skip = "needs root and dpkg (Debian), as the set-up itself"

    def setUp(self) -> None:
        self.root = tempfile.mkdtemp(prefix="ms-root-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.venv = os.path.join(self.root, "opt", "mailsuite")
        os.makedirs(os.path.join(self.venv, "bin"))
        self.write(os.path.join(self.venv, "bin", "python"),
                   f'#!/bin/sh\nexec {sys.executable} "$@"\n', 0o755)
        for name in set(COMMANDS.values()):
            self.write(os.path.join(self.venv, "bin", name), f"#!/bin/sh\necho {name}\n", 0o755)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    def at(self, path: str) -> str:
        return self.root + path

    def setup(self, command: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, MAILSUITE_ROOT=self.root, MAILSUITE_VENV=self.venv)
        return subprocess.run(["sh", SCRIPT, command], env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    def configure(self) -> None:
        p = self.setup("configure")
        self.assertEqual(p.returncode, 0, p.stderr)

    def assert_ours(self) -> None:
        for path, name in COMMANDS.items():
            self.assertEqual(os.readlink(self.at(path)), f"{self.venv}/bin/{name}", path)

    def fake_postfix(self) -> None:
        """A dpkg database in which postfix is installed and owns the MTA commands."""
        info = self.at("/var/lib/dpkg/info")
        os.makedirs(info)
        self.write(self.at("/var/lib/dpkg/status"),
                   "Package: postfix\nStatus: install ok installed\nPriority: optional\n"
                   "Section: mail\nMaintainer: x\nArchitecture: amd64\nVersion: 3.7.11\n"
                   "Provides: mail-transport-agent\nDescription: fake\n\n")
        self.write(os.path.join(info, "postfix.list"), "\n".join(POSTFIX_FILES) + "\n")
        for path in POSTFIX_FILES:
            if path == "/usr/lib/sendmail":
                os.makedirs(os.path.dirname(self.at(path)), exist_ok=True)
                os.symlink("../sbin/sendmail", self.at(path))
            else:
                self.write(self.at(path), f"postfix's {path}\n", 0o755)

    def test_links_where_no_mta(self) -> None:
        """No MTA installed: the commands become links to the venv's, twistd is on PATH;
        /etc/mailsuite/mail.ini is etc/mail.ini, maildrop/ of its queue_directory exists
        (1733), and a second run keeps a changed mail.ini; uninstall removes the links only."""
        self.configure()
        self.assert_ours()
        with open(os.path.join(CHECKOUT, "etc", "mail.ini")) as f:
            shipped = f.read()
        installed = self.at("/etc/mailsuite/mail.ini")
        with open(installed) as f:
            self.assertEqual(f.read(), shipped)
        maildrop = self.at("/var/spool/mailsuite/maildrop")
        self.assertEqual(os.stat(maildrop).st_mode & 0o7777, 0o1733)
        self.assertTrue(os.path.exists(self.at("/etc/aliases")))
        self.write(installed, shipped.replace("smtp = 25", "smtp = 2525"))
        self.configure()
        with open(installed) as f:
            self.assertIn("smtp = 2525", f.read())
        self.assert_ours()
        p = self.setup("uninstall")
        self.assertEqual(p.returncode, 0, p.stderr)
        for path in COMMANDS:
            self.assertFalse(os.path.lexists(self.at(path)), path)
        self.assertTrue(os.path.exists(installed))

    def test_divert_installed_mta(self) -> None:
        """postfix installed: each of its commands is diverted (renamed to .mailsuite-orig,
        listed by dpkg-divert) and replaced by ours; uninstall brings postfix's files back."""
        self.fake_postfix()
        self.configure()
        self.assert_ours()
        with open(self.at("/usr/sbin/sendmail.mailsuite-orig")) as f:
            self.assertEqual(f.read(), "postfix's /usr/sbin/sendmail\n")
        self.assertEqual(os.readlink(self.at("/usr/lib/sendmail.mailsuite-orig")),
                         "../sbin/sendmail")
        listed = subprocess.run(["dpkg-divert", f"--root={self.root}", "--list"],
                                capture_output=True, text=True, check=True).stdout
        for path in POSTFIX_FILES:
            self.assertIn(f"diversion of {path} to {path}.mailsuite-orig by mailsuite", listed)
        self.configure()  # again: nothing diverted twice, still ours
        self.assert_ours()
        p = self.setup("uninstall")
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(self.at("/usr/sbin/sendmail")) as f:
            self.assertEqual(f.read(), "postfix's /usr/sbin/sendmail\n")
        self.assertEqual(os.readlink(self.at("/usr/lib/sendmail")), "../sbin/sendmail")
        self.assertFalse(os.path.lexists(self.at("/usr/local/bin/twistd")))
        listed = subprocess.run(["dpkg-divert", f"--root={self.root}", "--list"],
                                capture_output=True, text=True, check=True).stdout
        self.assertNotIn("mailsuite", listed)

    def test_foreign_file_left_alone(self) -> None:
        """A file no package owns (someone's own /usr/local/bin/twistd) stops the set-up with
        its name, untouched."""
        self.write(self.at("/usr/local/bin/twistd"), "#!/bin/sh\necho mine\n", 0o755)
        p = self.setup("configure")
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"{self.root}/usr/local/bin/twistd exists and is not mailsuite's",
                      p.stderr)
        with open(self.at("/usr/local/bin/twistd")) as f:
            self.assertEqual(f.read(), "#!/bin/sh\necho mine\n")

    def test_service_files(self) -> None:
        """configure installs etc/systemd/mailsuite.service as /etc/systemd/system/
        mailsuite.service, ExecStart in the venv and otherwise the shipped unit, which
        ``systemd-analyze verify`` accepts (the venv's twistd exists); where systemd is not
        PID 1 it is not enabled, and the script says so. /etc/logrotate.d/
        mailsuite names the installed mail.ini's maillog_file and is kept once there;
        /etc/mailsuite/tls (a ReadWritePaths= of the unit) exists. uninstall removes both."""
        installed = self.at("/etc/mailsuite/mail.ini")
        with open(os.path.join(CHECKOUT, "etc", "mail.ini")) as f:
            shipped = f.read()
        self.write(installed, shipped.replace("maillog_file = /var/log/maillog",
                                              "maillog_file = /var/log/mail/maillog"))
        p = self.setup("configure")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("systemd is not running: mailsuite.service installed, not enabled",
                      p.stdout)
        unit = self.at("/etc/systemd/system/mailsuite.service")
        with open(unit) as f, open(os.path.join(CHECKOUT, "etc", "systemd",
                                                "mailsuite.service")) as g:
            self.assertEqual(f.read(), g.read().replace("ExecStart=/opt/mailsuite/",
                                                        f"ExecStart={self.venv}/"))
        self.assertFalse(os.path.lexists(self.at("/etc/systemd/system/multi-user.target.wants")))
        if shutil.which("systemd-analyze"):
            v = subprocess.run(["systemd-analyze", "verify", "--man=no", unit],
                               capture_output=True, text=True, timeout=60, check=False)
            self.assertEqual((v.returncode, v.stdout + v.stderr), (0, ""))
        rotate = self.at("/etc/logrotate.d/mailsuite")
        with open(rotate) as f:
            text = f.read()
        self.assertIn("\n/var/log/mail/maillog {\n", text)
        self.assertIn("$(cat /var/spool/mailsuite/pid/master.pid ", text)
        self.assertTrue(os.path.isdir(self.at("/etc/mailsuite/tls")))
        self.write(rotate, "# mine\n")
        self.configure()
        with open(rotate) as f:
            self.assertEqual(f.read(), "# mine\n")
        p = self.setup("uninstall")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertFalse(os.path.exists(unit))
        self.assertFalse(os.path.exists(rotate))

    def test_service_enabled_where_systemd_runs(self) -> None:
        """A root whose systemd runs (/run/systemd/system, sd_booted(3)'s test): the unit is
        enabled (``systemctl --root``: the link in multi-user.target.wants, nothing asked
        of this machine's systemd); uninstall disables and removes it."""
        if not shutil.which("systemctl"):
            raise unittest.SkipTest("systemctl is not installed (Debian's systemd package)")
        os.makedirs(self.at("/run/systemd/system"))
        p = self.setup("configure")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("mailsuite.service enabled", p.stdout)
        wants = self.at("/etc/systemd/system/multi-user.target.wants/mailsuite.service")
        self.assertEqual(os.readlink(wants), "/etc/systemd/system/mailsuite.service")
        p = self.setup("uninstall")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertFalse(os.path.lexists(wants))
        self.assertFalse(os.path.exists(self.at("/etc/systemd/system/mailsuite.service")))
