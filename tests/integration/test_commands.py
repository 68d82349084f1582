"""sendmail / newaliases / mailq against the real daemon, s-nail sending through our sendmail,
LMTP with smtplib.LMTP (TCP and unix socket), |command, /file and ~/.forward deliveries."""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from tests.integration import harness
from tests.integration.harness import ROOT, Site, free_port

SNAIL = shutil.which("s-nail")
WAIT = 30.0


class MTASite(Site):
    """A Site with LMTP on (a TCP port, or a unix socket path) and a sendmail wrapper script."""

    lmtp: int | str | None = None

    def ini(self) -> str:
        text = super().ini()
        if self.lmtp is not None:
            text = text.replace("imaps = no\n", f"imaps = no\nlmtp = {self.lmtp}\n")
        return text

    def command(self, name: str) -> str:
        """An executable script running our command with this site's mail.ini."""
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\nPYTHONPATH={ROOT} MAILSUITE_CONFIG={self.config} exec"
                    f" {sys.executable} -c 'import sys; sys.argv[0] = \"{name}\";"
                    f" from mailsuite.cli import main; main()' \"$@\"\n")
        os.chmod(path, 0o755)
        return path

    def run(self, name: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
        return subprocess.run([self.command(name), *args], input=stdin, capture_output=True,
                              check=False, timeout=60)


def make_site(case: unittest.TestCase, aliases: str, lmtp: int | str | None = None) -> MTASite:
    MTASite.lmtp = lmtp
    try:
        return MTASite(case, aliases)
    finally:
        MTASite.lmtp = None


def wait_for(what: str, check) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def outdir(case: unittest.TestCase) -> str:
    """A directory every user (nobody, boss) may write, for command and file targets."""
    d = tempfile.mkdtemp(prefix="ms-out-", dir="/tmp")
    os.chmod(d, 0o777)
    case.addCleanup(shutil.rmtree, d, True)
    return d


class SendmailTests(unittest.TestCase):
    def test_sendmail_with_daemon_stopped(self) -> None:
        """sendmail succeeds while the daemon is down (maildrop/), mailq lists the message, and
        it is delivered when the daemon starts."""
        site = make_site(self, "postmaster: boss\n")
        p = site.run("sendmail", "-i", "carol", stdin=b"Subject: while down\n\nqueued body\n")
        self.assertEqual((p.returncode, p.stderr), (0, b""))
        listing = site.run("mailq").stdout.decode()
        self.assertIn("carol", listing)
        self.assertIn("-- 1 Kbytes in 1 Request.", listing)
        site.start()
        wait_for("delivery", lambda: "queued body" in read(site.inbox("carol")))
        box = read(site.inbox("carol"))
        self.assertIn("Subject: while down", box)
        self.assertIn("From: ", box)  # added as cleanup does
        self.assertIn("Message-ID: <", box)
        self.assertIn("(mailsuite, from userid 0)", box)
        wait_for("empty queue", lambda: "Mail queue is empty" in site.run("mailq").stdout.decode())

    def test_t_extracts_and_drops_bcc(self) -> None:
        """-t takes recipients from To/Cc/Bcc, Bcc: is removed, -f sets the envelope sender."""
        site = make_site(self, "postmaster: boss\n")
        site.start()
        msg = b"To: Boss <boss@example.test>\nBcc: carol\nSubject: t\n\nbody t\n.\nafter dot\n"
        p = site.run("sendmail", "-t", "-oi", "-f", "robot@example.test", stdin=msg)
        self.assertEqual(p.returncode, 0, p.stderr)
        for user in ("boss", "carol"):
            wait_for(user, lambda u=user: "after dot" in read(site.inbox(u)))
        self.assertNotIn("Bcc:", read(site.inbox("carol")))
        self.assertIn("Return-Path: <robot@example.test>", read(site.inbox("boss")))

    def test_dot_ends_without_i(self) -> None:
        """Without -i/-oi a line with a single dot ends the message (sendmail's default)."""
        site = make_site(self, "postmaster: boss\n")
        site.start()
        site.run("sendmail", "boss", stdin=b"Subject: dot\n\nkept\n.\ndropped\n")
        wait_for("delivery", lambda: "kept" in read(site.inbox("boss")))
        self.assertNotIn("dropped", read(site.inbox("boss")))

    def test_bs_session(self) -> None:
        """sendmail -bs speaks SMTP on stdin/stdout and queues each message."""
        site = make_site(self, "postmaster: boss\n")
        site.start()
        session = (b"EHLO me\r\nMAIL FROM:<joe@example.test>\r\nRCPT TO:<carol@example.test>\r\n"
                   b"DATA\r\nSubject: bs\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n")
        p = site.run("sendmail", "-bs", stdin=session)
        out = p.stdout.decode()
        self.assertTrue(out.startswith("220 mail.example.test"), out)
        self.assertIn("250 2.0.0 Ok: queued as ", out)
        self.assertTrue(out.rstrip().endswith("221 2.0.0 Bye"), out)
        wait_for("delivery", lambda: ".leading dot" in read(site.inbox("carol")))
        self.assertIn("Return-Path: <joe@example.test>", read(site.inbox("carol")))

    def test_newaliases_reports_bad_line(self) -> None:
        """newaliases exits 1 and names file and line of a bad entry; sendmail -bi is the same;
        a good file passes (warning about a missing postmaster alias)."""
        site = make_site(self, "postmaster: boss\nteam: boss\nthis line is bad\n")
        aliases = os.path.join(site.dir, "aliases")
        p = site.run("newaliases")
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"{aliases}, line 3", p.stderr.decode())
        self.assertEqual(site.run("sendmail", "-bi").returncode, 1)
        with open(aliases, "w") as f:
            f.write("team: boss\n")
        p = site.run("newaliases")
        self.assertEqual(p.returncode, 0)
        self.assertIn("no postmaster alias", p.stderr.decode())

    def test_newaliases_takes_effect_at_once(self) -> None:
        """An alias added to the file works for the very next message to the running server."""
        site = make_site(self, "postmaster: boss\n")
        site.start()
        with open(os.path.join(site.dir, "aliases"), "a") as f:
            f.write("newlist: carol\n")
        self.assertEqual(site.run("newaliases").returncode, 0)
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"]) as s:
            s.sendmail("x@example.test", ["newlist@example.test"], b"Subject: new\n\nnew list\n")
        wait_for("delivery", lambda: "new list" in read(site.inbox("carol")))

    def test_queue_delete(self) -> None:
        """mailsuite-queue -d ALL empties the queue (postsuper -d ALL)."""
        site = make_site(self, "postmaster: boss\n")
        site.run("sendmail", "-i", "carol", stdin=b"Subject: x\n\nx\n")
        p = site.run("mailsuite-queue", "-d", "ALL")
        self.assertIn("Deleted: 1 message", p.stderr.decode())
        self.assertIn("Mail queue is empty", site.run("mailq").stdout.decode())

    def test_snail_sends_through_sendmail(self) -> None:
        """s-nail's mail command, told to use our sendmail (-Smta=), delivers."""
        if SNAIL is None:
            raise unittest.SkipTest("s-nail is not installed")
        site = make_site(self, "postmaster: boss\n")
        site.start()
        p = subprocess.run(
            [SNAIL, "-:/", "-Smta=" + site.command("sendmail"), "-s", "from s-nail",
             "carol@example.test"], input=b"hello from mail\n", capture_output=True, timeout=60,
            check=False,
            env={"PATH": "/usr/bin:/bin", "HOME": site.dir, "LC_ALL": "C.UTF-8"})
        self.assertEqual(p.returncode, 0, p.stderr)
        wait_for("delivery", lambda: "hello from mail" in read(site.inbox("carol")))
        self.assertIn("Subject: from s-nail", read(site.inbox("carol")))


def local_user(case: unittest.TestCase, site: MTASite) -> tuple[str, int, str]:
    """A real Unix account (useradd; removed at clean-up), also known to ``site``'s passwd
    file, with a home in the site directory; the site directory becomes traversable so the user
    reaches mail.ini, the command wrappers and maildrop/. Returns (name, uid, home)."""
    name = f"ms{os.getpid()}u{len(case._cleanups)}"
    home = os.path.join(site.dir, "home", name)
    for _ in range(50):  # another test's useradd may hold /etc/passwd's lock for a moment
        p = subprocess.run(["useradd", "-M", "-N", "-s", "/bin/sh", "-d", home, name],
                           capture_output=True, timeout=60, check=False)
        if p.returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"useradd failed: {p.stderr!r}")
    case.addCleanup(subprocess.run, ["userdel", name], capture_output=True, check=False)
    pw = pwd.getpwnam(name)
    os.makedirs(home)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    os.chmod(site.dir, 0o711)
    with open(os.path.join(site.dir, "passwd"), "a") as f:
        f.write(f"{name}:x:{pw.pw_uid}:{pw.pw_gid}:Test User:{home}:/bin/sh\n")
    with open(os.path.join(site.dir, "shadow"), "a") as f:
        f.write(f"{name}:!:20000:0:99999:7:::\n")
    return name, pw.pw_uid, home


class UnprivilegedSendTests(unittest.TestCase):
    """sendmail and s-nail run by a normal user (not root), as cron and people run them."""

    if os.geteuid() != 0:
        skip = "needs root (useradd, and running the commands as that user)"

    def setUp(self) -> None:
        self.site = make_site(self, "postmaster: boss\n")
        self.name, self.uid, self.home = local_user(self, self.site)
        self.gid = pwd.getpwnam(self.name).pw_gid
        self.site.start()

    def as_user(self, argv: list[str], stdin: bytes) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, input=stdin, capture_output=True, timeout=60, check=False, cwd=self.home,
            user=self.uid, group=self.gid, extra_groups=[],
            env={"PATH": "/usr/bin:/bin", "HOME": self.home, "USER": self.name,
                 "LOGNAME": self.name, "LC_ALL": "C.UTF-8"})

    def test_sendmail_as_user_exits_0_and_delivers_once(self) -> None:
        """Exit 0, nothing on stderr, and exactly one copy delivered, from the user."""
        p = self.as_user([self.site.command("sendmail"), "-i", "carol"],
                         b"Subject: user mail\n\nsent by a user\n")
        self.assertEqual((p.returncode, p.stderr), (0, b""))
        wait_for("delivery", lambda: "sent by a user" in read(self.site.inbox("carol")))
        box = read(self.site.inbox("carol"))
        self.assertEqual(box.count("sent by a user"), 1)
        self.assertIn(f"Return-Path: <{self.name}@example.test>", box)
        self.assertIn(f"(mailsuite, from userid {self.uid})", box)

    def test_snail_as_user(self) -> None:
        """The stock mail command (s-nail) run by the user reports success: no error, no
        dead.letter, and the message arrives once."""
        if SNAIL is None:
            raise unittest.SkipTest("s-nail is not installed")
        p = self.as_user([SNAIL, "-:/", "-Smta=" + self.site.command("sendmail"), "-s",
                          "from a user", "carol@example.test"], b"hello from the user\n")
        self.assertEqual((p.returncode, p.stderr), (0, b""))
        self.assertFalse(os.path.exists(os.path.join(self.home, "dead.letter")))
        wait_for("delivery", lambda: "hello from the user" in read(self.site.inbox("carol")))
        self.assertEqual(read(self.site.inbox("carol")).count("hello from the user"), 1)

    def test_unknown_recipient_bounces_to_the_user(self) -> None:
        """sendmail to an unknown local user: exit 0 (the message is queued), then an RFC 3464
        bounce from MAILER-DAEMON with the null sender reaches the sending user's mailbox;
        the other recipient still gets the message."""
        p = self.as_user([self.site.command("sendmail"), "-i", "ghost", "carol"],
                         b"Subject: to a ghost\n\nanyone there?\n")
        self.assertEqual((p.returncode, p.stderr), (0, b""))
        mine = self.site.inbox(self.name)
        wait_for("bounce", lambda: "Undelivered Mail Returned to Sender" in read(mine))
        box = read(mine)
        self.assertTrue(box.startswith("From MAILER-DAEMON "), box[:200])
        self.assertIn("Return-Path: <>", box)
        self.assertIn("Content-Type: multipart/report; report-type=delivery-status", box)
        self.assertIn("Final-Recipient: rfc822; ghost@example.test", box)
        self.assertIn("Action: failed\nStatus: 5.1.1", box)
        self.assertIn("<ghost@example.test>: Recipient address rejected: User unknown", box)
        self.assertIn("anyone there?", box)  # the message is attached
        self.assertIn("anyone there?", read(self.site.inbox("carol")))
        wait_for("log", lambda: "sender non-delivery notification" in self.site.maillog_text())

    def test_sendmail_as_user_without_maildrop_fails(self) -> None:
        """Where the message cannot be queued (maildrop/ not writable by users), exit 75 and
        nothing is delivered."""
        maildrop_dir = os.path.join(self.site.dir, "queue", "maildrop")
        os.chmod(maildrop_dir, 0o1730)
        p = self.as_user([self.site.command("sendmail"), "-i", "carol"], b"Subject: no\n\nno\n")
        self.assertEqual(p.returncode, 75, p.stderr)
        self.assertIn(b"Permission denied", p.stderr)
        self.assertEqual(os.listdir(maildrop_dir), [])


class SpecialTargetTests(unittest.TestCase):
    def test_command_file_and_forward(self) -> None:
        """Alias |command and /file targets and boss's ~/.forward (a command as boss plus a copy
        in his mailbox) all deliver the message sent over SMTP."""
        out = outdir(self)
        site = make_site(self, f'postmaster: boss\nprog: "|cat > {out}/prog.txt"\n'
                               f"filed: {out}/file.mbox\n")
        forward = os.path.join(site.home("boss"), ".forward")
        with open(forward, "w") as f:
            f.write(f'\\boss, "|id -u > {out}/fwd.txt"\n')
        if os.geteuid() == 0:
            os.chown(forward, site.uids["boss"], site.uids["boss"])
        site.start()
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"]) as s:
            s.sendmail("joe@example.test", ["prog@example.test", "filed@example.test",
                                            "boss@example.test"],
                       b"Subject: special\n\nspecial body\n")
        wait_for("command", lambda: "special body" in read(f"{out}/prog.txt"))
        wait_for("file", lambda: "special body" in read(f"{out}/file.mbox"))
        wait_for("forward", lambda: read(f"{out}/fwd.txt").strip() != "")
        wait_for("mailbox", lambda: "special body" in read(site.inbox("boss")))
        self.assertTrue(read(f"{out}/file.mbox").startswith("From joe@example.test  "))
        self.assertIn("Return-Path: <joe@example.test>", read(f"{out}/prog.txt"))
        if os.geteuid() == 0:
            self.assertEqual(os.stat(f"{out}/prog.txt").st_uid, 65534)  # default_privs
            self.assertEqual(read(f"{out}/fwd.txt").strip(), str(site.uids["boss"]))
        wait_for("log", lambda: "delivered to command: cat >" in site.maillog_text())
        self.assertIn(f"status=sent (delivered to file: {out}/file.mbox)", site.maillog_text())


    def test_file_targets_need_no_interpreter_access(self) -> None:
        """With the server's Python under a directory nobody and boss cannot enter (a venv
        made from a Python under /root), an alias /file (as nobody) and a ~/.forward /file (as
        boss) are still delivered, at once, by the running server."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to switch users")
        self.patch(harness, "TWISTD", [private_python(self), *harness.TWISTD[1:]])
        out = outdir(self)
        site = make_site(self, f"postmaster: boss\nfiled: {out}/alias.mbox\n")
        forward = os.path.join(site.home("boss"), ".forward")
        with open(forward, "w") as f:
            f.write(f"{out}/boss.mbox\n")
        os.chown(forward, site.uids["boss"], site.uids["boss"])
        site.start()
        with smtplib.SMTP("127.0.0.1", site.ports["smtp"]) as s:
            s.sendmail("joe@example.test", ["filed@example.test", "boss@example.test"],
                       b"Subject: filed\n\nfiled body\n")
        wait_for("alias file", lambda: "filed body" in read(f"{out}/alias.mbox"))
        wait_for("forward file", lambda: "filed body" in read(f"{out}/boss.mbox"))
        self.assertEqual(os.stat(f"{out}/alias.mbox").st_uid, 65534)
        self.assertEqual(os.stat(f"{out}/boss.mbox").st_uid, site.uids["boss"])
        self.assertNotIn("Permission denied", site.maillog_text())


def private_python(case: unittest.TestCase) -> str:
    """This venv's Python, reached through a root-only (0700) directory: a venv whose
    interpreter no other user can run."""
    top = tempfile.mkdtemp(prefix="ms-venv-", dir="/tmp")
    case.addCleanup(shutil.rmtree, top, True)
    os.chmod(top, 0o700)
    venv = os.path.dirname(os.path.dirname(sys.executable))
    os.makedirs(os.path.join(top, "bin"))
    os.symlink(os.path.realpath(sys.executable), os.path.join(top, "bin", "python3"))
    shutil.copy(os.path.join(venv, "pyvenv.cfg"), top)
    for name in ("lib", "lib64"):
        if os.path.exists(os.path.join(venv, name)):
            os.symlink(os.path.join(venv, name), os.path.join(top, name))
    return os.path.join(top, "bin", "python3")

class LMTPTests(unittest.TestCase):
    ALIASES = 'postmaster: boss\nlater: "|exit 75"\nbroken: "|exit 1"\n'

    def exchange(self, client: smtplib.LMTP) -> list[tuple[int, bytes]]:
        client.ehlo_or_helo_if_needed()
        client.mail("joe@example.test")
        codes = [client.rcpt(r)[0] for r in ("boss@example.test", "ghost@example.test",
                                              "carol@example.test", "later@example.test",
                                              "broken@example.test")]
        self.assertEqual(codes, [250, 550, 250, 250, 250])
        first = client.data(b"Subject: over lmtp\r\n\r\nlmtp body\r\n")
        return [first] + [client.getreply() for _ in range(3)]

    def check(self, site: MTASite, replies: list[tuple[int, bytes]]) -> None:
        self.assertEqual([code for code, _ in replies], [250, 250, 451, 550])
        self.assertIn(b"<boss@example.test>", replies[0][1])
        self.assertIn(b"Command died with status 1", replies[3][1])
        for user in ("boss", "carol"):
            self.assertIn("lmtp body", read(site.inbox(user)))
        self.assertIn("with LMTP id", read(site.inbox("boss")))

    def test_lmtp_tcp(self) -> None:
        """LHLO over TCP; after DATA one reply per accepted recipient, in order: 250 for each
        mailbox, 451 for a command exiting 75, 550 for one exiting 1."""
        site = make_site(self, self.ALIASES, lmtp=free_port())
        site.start()
        client = smtplib.LMTP("127.0.0.1", site_port(site))
        with client:
            self.check(site, self.exchange(client))

    def test_lmtp_unix_socket(self) -> None:
        """The same over a unix socket path (mailbox_transport = lmtp:unix:/path)."""
        path = os.path.join(tempfile.mkdtemp(prefix="ms-l-", dir="/tmp"), "lmtp")
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        site = make_site(self, self.ALIASES, lmtp=path)
        site.start()
        wait_for("socket", lambda: os.path.exists(path))
        with smtplib.LMTP(path) as client:
            self.check(site, self.exchange(client))


def site_port(site: MTASite) -> int:
    for line in read(site.config).splitlines():
        if line.startswith("lmtp = "):
            return int(line.split("=")[1])
    raise AssertionError("no lmtp port")
