"""Issue 14 item 1: mailsuite as a service. The shipped systemd unit passes
``systemd-analyze verify`` and keeps the README's ``run`` command; the real server works under
the unit's NoNewPrivileges= and CapabilityBoundingSet= (applied with setpriv(1): systemd does
not run here); the logrotate snippet parses, and a forced real rotation with the server
running leaves the next line in the new file.

Not tested here, for want of systemd as PID 1: PrivateTmp=, RuntimeDirectory=, the Protect*
and Restrict* directives (only checked by verify); ProtectSystem=strict with ReadWritePaths=
is imitated with a mount namespace, and ReadWritePaths= is checked against mail.ini's
defaults."""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import re
import shutil
import smtplib
import subprocess
import time

from twisted.trial import unittest

from mailsuite.configschema import SECTIONS
from tests.integration import harness
from tests.integration.harness import PRIVSEP, Site

CHECKOUT = harness.ROOT
UNIT = os.path.join(CHECKOUT, "etc", "systemd", "mailsuite.service")
LOGROTATE = os.path.join(CHECKOUT, "etc", "logrotate.d", "mailsuite")
TIMEOUT = 20
MESSAGE = b"From: friend@remote.test\r\nSubject: hello\r\n\r\nhello\r\n"


def directives(path: str) -> dict[str, list[str]]:
    """``{Key: [value, ...]}`` of a unit file (systemd allows a key more than once)."""
    found: dict[str, list[str]] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")) and "=" in line:
                key, value = line.split("=", 1)
                found.setdefault(key, []).append(value)
    return found


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


class UnitTests(unittest.TestCase):
    if not shutil.which("systemd-analyze"):
        skip = "systemd-analyze is not installed (Debian's systemd package)"

    def test_verify(self) -> None:
        """``systemd-analyze verify`` finds nothing to say about the shipped unit (unknown
        directives, bad values, an ExecStart that is not executable: the venv's twistd must
        exist, so the test needs the installed /opt/mailsuite)."""
        start = directives(UNIT)["ExecStart"][0].split()[0]
        if not os.access(start, os.X_OK):
            raise unittest.SkipTest(f"{start} is not installed (sh scripts/setup-debian.sh)")
        p = run(["systemd-analyze", "verify", "--man=no", UNIT])
        self.assertEqual((p.returncode, p.stdout + p.stderr), (0, ""))

    def test_service_shape(self) -> None:
        """twistd in the foreground with the README's ``run`` command line (the set-up
        script's), restart on failure, reload = SIGHUP to the master, NoNewPrivileges,
        ProtectHome off (mail folders are in the homes), and every path mail.ini's
        defaults write (INBOXes, queue, maillog, TLS files) writable under ProtectSystem."""
        unit = directives(UNIT)
        with open(os.path.join(CHECKOUT, "scripts", "setup-debian.sh")) as f:
            script = f.read()
        run_line = re.search(r'exec "\$VENV/bin/twistd" (.*) --config "\$R\$CONFIG"', script)
        assert run_line is not None
        self.assertEqual(unit["ExecStart"], [f"/opt/mailsuite/bin/twistd {run_line[1]} "
                                             "--config /etc/mailsuite/mail.ini"])
        self.assertEqual(unit["Type"], ["simple"])
        self.assertEqual(unit["Restart"], ["on-failure"])
        self.assertEqual(unit["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(unit["NoNewPrivileges"], ["yes"])
        self.assertEqual(unit["PrivateTmp"], ["yes"])
        self.assertEqual(unit["ProtectSystem"], ["strict"])
        self.assertNotIn("ProtectHome", unit)
        self.assertGreaterEqual(int(unit["LimitNOFILE"][0]), 8192)
        writable = [p.lstrip("-") for p in unit["ReadWritePaths"][0].split()]
        defaults = {key.name: key.default for key in SECTIONS["mail"].keys}
        tls = {key.name: key.default for key in SECTIONS["tls"].keys}
        mailbox = {key.name: key.default for key in SECTIONS["mailbox"].keys}
        inbox = mailbox["mail_location"].split("INBOX=")[1]
        for path in (defaults["queue_directory"], defaults["maillog_file"], tls["ssl_cert"],
                     inbox, "/home/boss/mail"):
            self.assertTrue(any(path == w or path.startswith(w + "/") for w in writable), path)


def capability_names(unit: dict[str, list[str]]) -> list[str]:
    return [c.lower().removeprefix("cap_") for c in unit["CapabilityBoundingSet"][0].split()]


class HardenedServerTests(unittest.TestCase):
    """The real privilege-separated server started as the unit starts it, as far as can be
    without systemd: ``setpriv --no-new-privs --bounding-set`` (the unit's capabilities), in
    a mount namespace (unshare) where only the paths it is configured to write are
    writable (ProtectSystem=strict, ReadWritePaths=)."""

    if os.geteuid() != 0 or not PRIVSEP:
        skip = "needs root and the mailsuite user (privilege separation)"
    elif not shutil.which("setpriv") or not shutil.which("unshare"):
        skip = "setpriv and unshare are not installed (util-linux)"

    def test_privsep_works_with_no_new_privs_and_the_bounding_set(self) -> None:
        """Under NoNewPrivileges, only the unit's capabilities and a read-only file system
        outside its configured paths, the master still starts
        the zygote and network process as mail_owner, an IMAP login gets its agent with the
        user's uid, mail is delivered into the user's INBOX (owned by the user), and the
        ~/.forward in a 0700 home is read (a copy goes to a second user)."""
        unit = directives(UNIT)
        caps = ",".join("+" + c for c in capability_names(unit))
        site = Site(self, tls=True)
        # ProtectSystem=strict with ReadWritePaths=: in a mount namespace of its own, / is
        # read-only but the site's directory (its INBOXes, homes, queue, maillog, TLS files)
        read_only = ("mount --bind \"$0\" \"$0\" && mount -o remount,bind,ro / && "
                     'exec "$@"')
        self.patch(harness, "TWISTD", [
            "unshare", "--mount", "--propagation", "private", "sh", "-c", read_only, site.dir,
            "setpriv", "--no-new-privs", "--bounding-set", f"-all,{caps}", "--",
            *harness.TWISTD])
        # a ~/.forward in a 0700 home: the master reads it (CAP_DAC_READ_SEARCH)
        home = site.home("boss")
        forward = os.path.join(home, ".forward")
        with open(forward, "w") as f:
            f.write("\\boss, carol\n")
        os.chown(forward, site.uids["boss"], site.uids["boss"])
        os.chmod(forward, 0o600)
        os.chmod(home, 0o700)
        site.start()
        assert site.process is not None
        with open(f"/proc/{site.process.pid}/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        self.assertEqual(status["NoNewPrivs"], "1")
        with open(f"/proc/{site.process.pid}/mountinfo") as f:
            mounts = {line.split()[4]: line.split()[5] for line in f}
        self.assertTrue(mounts["/"].startswith("ro"), mounts["/"])
        self.assertTrue(mounts[site.dir].startswith("rw"), mounts)
        decoded = run(["capsh", f"--decode={status['CapBnd']}"]).stdout if shutil.which(
            "capsh") else None
        if decoded is not None:
            self.assertEqual(sorted(decoded.split("=", 1)[1].strip().split(",")),
                             sorted("cap_" + c for c in capability_names(unit)))
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=TIMEOUT) as client:
            client.sendmail("friend@remote.test", ["boss@example.test"], MESSAGE)
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(site.inbox("carol")):  # forwarded: through the queue
            self.assertLess(time.monotonic(), deadline, site.maillog_text())
            time.sleep(0.05)
        for user in ("boss", "carol"):
            self.assertEqual(os.stat(site.inbox(user)).st_uid, site.uids[user])
        imap = imaplib.IMAP4("127.0.0.1", site.ports["imap"], timeout=TIMEOUT)
        imap.login("boss", "secret")
        self.assertEqual(imap.select("INBOX")[1], [b"1"])
        imap.logout()
        self.assertIn("Login: user=<boss>", site.maillog_text())
        # the processes: the network process as mail_owner, an agent as boss
        owners = set()
        for pid in harness.server_processes(site.process.pid) | set(self.children(site)):
            with contextlib.suppress(FileNotFoundError):  # (ended meanwhile)
                owners.add(os.stat(f"/proc/{pid}").st_uid)
        self.assertIn(site.uids["boss"], owners, site.log())
        self.assertIn(pwd.getpwnam(PRIVSEP).pw_uid, owners, site.log())

    def children(self, site: Site) -> list[int]:
        """Every descendant of the master (the zygote starts its children in sessions of
        their own)."""
        assert site.process is not None
        table: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        table[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        found = {site.process.pid}
        for _ in range(10):
            found |= {pid for pid, ppid in table.items() if ppid in found}
        return sorted(found)


class LogrotateTests(unittest.TestCase):
    if not shutil.which("logrotate"):
        skip = "logrotate is not installed"

    def snippet(self, maillog: str, queue_directory: str) -> str:
        """The shipped snippet for ``maillog`` and the server of ``queue_directory``, in a
        temp file (the only changes: those two paths, as the set-up script makes them)."""
        with open(LOGROTATE) as f:
            text = f.read()
        self.assertIn("\n/var/log/maillog {\n", text)
        self.assertIn("/var/spool/mailsuite/pid/master.pid", text)
        text = text.replace("/var/log/maillog {", f"{maillog} {{").replace(
            "/var/spool/mailsuite/pid/", f"{queue_directory}/pid/")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_debug_parse(self) -> None:
        """``logrotate -d`` reads the shipped snippet without an error."""
        state = self.mktemp()
        p = run(["logrotate", "-d", "-s", state, LOGROTATE])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("error:", p.stdout + p.stderr)
        self.assertIn("rotating pattern: /var/log/maillog  weekly (4 rotations)", p.stderr)

    def test_forced_rotation_reopens(self) -> None:
        """With the server running (privilege-separated when it can be), ``logrotate -f``
        moves the maillog to maillog.1, makes a new one (0640, group adm) and HUPs the master
        (no systemd here: the pid of queue_directory/pid/master.pid); the next SMTP
        session's lines (written by the network process) are in the new file, none in the
        old one."""
        site = Site(self)
        site.start()
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=TIMEOUT) as client:
            client.sendmail("friend@remote.test", ["boss@example.test"], MESSAGE)
        conf = self.snippet(site.maillog, os.path.join(site.dir, "queue"))
        state = self.mktemp()
        p = run(["logrotate", "-f", "-v", "-s", state, conf])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("running postrotate script", p.stderr)
        with open(site.maillog + ".1") as f:
            old = f.read()
        self.assertIn("status=sent", old)
        st = os.stat(site.maillog)
        self.assertEqual((st.st_mode & 0o777, st.st_gid), (0o640, grp.getgrnam("adm").gr_gid))
        deadline = time.monotonic() + TIMEOUT
        # the HUP is taken asynchronously: the master writes "reload -- configuration" (in the
        # new file) once the network process has answered the reload, which it takes after
        # the new maillog (the same channel, in order); lines of the moments before that may
        # still go to the old file
        while "reload -- configuration" not in site.maillog_text():
            self.assertLess(time.monotonic(), deadline, site.log())
            time.sleep(0.05)
        with open(site.maillog + ".1") as f:
            old = f.read()
        while "connect from" not in site.maillog_text():
            self.assertLess(time.monotonic(), deadline, site.log())
            with smtplib.SMTP("127.0.0.1", site.ports["smtp"], timeout=TIMEOUT) as client:
                client.noop()
            time.sleep(0.1)
        self.assertRegex(site.maillog_text(), r" postfix/smtpd\[\d+\]: connect from localhost")
        with open(site.maillog + ".1") as f:
            self.assertEqual(f.read(), old)
        self.assertIsNone(site.process.poll() if site.process else 0)
