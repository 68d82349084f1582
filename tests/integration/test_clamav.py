"""ClamAV (Debian's clamav-daemon and clamav-milter) as a plain milter: the test writes a
one-signature database (an .ndb line made from the EICAR string: there is no signature
download here), starts the real clamd on a unix socket in a temp dir and clamav-milter on a
free loopback port, and mailsuite's smtpd_milters points at the milter."""

from __future__ import annotations

import base64
import os
import shutil
import smtplib
import tempfile

from twisted.trial import unittest

from tests.integration.daemons import Daemon
from tests.integration.harness import free_port
from tests.integration.test_commands import MTASite, read, wait_for

CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
CLAMAV_MILTER = shutil.which("clamav-milter") or "/usr/sbin/clamav-milter"
EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

CLAMD_CONF = """\
Foreground yes
LocalSocket {dir}/clamd.sock
DatabaseDirectory {dir}/db
LogFile {dir}/clamd.log
PidFile {dir}/clamd.pid
Bytecode no
ScanMail yes
"""
MILTER_CONF = """\
Foreground yes
MilterSocket inet:{port}@127.0.0.1
ClamdSocket unix:{dir}/clamd.sock
PidFile {dir}/milter.pid
LogFile {dir}/milter.log
OnInfected {on_infected}
RejectMsg virus found: %v
AddHeader Replace
"""


def plain() -> bytes:
    return (f"From: alice@remote.test\r\nTo: boss@example.test\r\nSubject: plain\r\n\r\n"
            f"{EICAR}\r\n").encode()


def attachment() -> bytes:
    encoded = base64.encodebytes(EICAR.encode()).decode().replace("\n", "\r\n")
    return ("From: alice@remote.test\r\nTo: boss@example.test\r\nSubject: attached\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            "--b1\r\nContent-Type: text/plain\r\n\r\nsee the file\r\n"
            "--b1\r\nContent-Type: application/octet-stream; name=\"eicar.com\"\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            "Content-Disposition: attachment; filename=\"eicar.com\"\r\n\r\n"
            f"{encoded}--b1--\r\n").encode()


class ClamavCase(unittest.TestCase):
    timeout = 120
    on_infected = "Reject"
    if not (os.path.exists(CLAMD) and os.path.exists(CLAMAV_MILTER)):
        skip = "clamav-daemon / clamav-milter are not installed (scripts/setup-debian.sh test)"

    def setUp(self) -> None:
        # short: clamd's unix socket path must fit in sun_path
        self.dir = tempfile.mkdtemp(prefix="ms-clam-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.makedirs(os.path.join(self.dir, "db"))
        with open(os.path.join(self.dir, "db", "local.ndb"), "w") as f:
            f.write(f"Eicar-Signature:0:*:{EICAR.encode().hex()}\n")
        self.port = free_port()
        for name, text in (("clamd.conf", CLAMD_CONF), ("milter.conf", MILTER_CONF)):
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text.format(dir=self.dir, port=self.port, on_infected=self.on_infected))
        clamd = Daemon(self, "clamd", [CLAMD, "-c", os.path.join(self.dir, "clamd.conf")],
                       os.path.join(self.dir, "clamd.out"))
        clamd.start(path=os.path.join(self.dir, "clamd.sock"), timeout=60)
        milter = Daemon(self, "clamav-milter",
                        [CLAMAV_MILTER, "-c", os.path.join(self.dir, "milter.conf")],
                        os.path.join(self.dir, "milter.out"))
        milter.start(port=self.port)
        self.site = MTASite(self, mail_extra=f"smtpd_milters = inet:127.0.0.1:{self.port}\n")
        self.site.start()

    def send(self, data: bytes) -> dict:
        with smtplib.SMTP("127.0.0.1", self.site.ports["smtp"], timeout=60) as s:
            return s.sendmail("alice@remote.test", ["boss@example.test"], data)


class RejectTests(ClamavCase):
    def assert_rejected(self, data: bytes) -> None:
        with self.assertRaises(smtplib.SMTPDataError) as caught:
            self.send(data)
        self.assertGreaterEqual(caught.exception.smtp_code, 500)
        self.assertEqual(caught.exception.smtp_error,
                         b"5.7.1 virus found: Eicar-Signature.UNOFFICIAL")
        self.assertEqual(read(self.site.inbox("boss")), "")

    def test_plain_eicar_is_rejected_naming_the_virus(self) -> None:
        self.assert_rejected(plain())

    def test_eicar_attachment_is_rejected(self) -> None:
        self.assert_rejected(attachment())

    def test_clean_mail_gets_the_scan_header(self) -> None:
        self.send(b"From: alice@remote.test\r\nSubject: clean\r\n\r\nnothing here\r\n")
        wait_for("the copy", lambda: "Subject: clean" in read(self.site.inbox("boss")))
        self.assertRegex(read(self.site.inbox("boss")),
                         r"\nX-Virus-Scanned: clamav-milter .*\nX-Virus-Status: Clean\n")


class QuarantineTests(ClamavCase):
    on_infected = "Quarantine"

    def test_infected_mail_is_held(self) -> None:
        """OnInfected Quarantine: SMFIR_QUARANTINE, the Hold decision: the client gets its
        250, the message is not delivered but kept in the hold queue (mailq's ``!``)."""
        self.send(attachment())
        wait_for("the hold", lambda: "milter triggers HOLD action" in self.site.maillog_text())
        self.assertEqual(read(self.site.inbox("boss")), "")
        self.assertRegex(self.site.run("mailq").stdout.decode(), r"(?m)^[0-9A-F]+!")
