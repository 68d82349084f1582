"""A real Dovecot (Debian's dovecot-imapd / dovecot-pop3d) started by a test, on loopback.

``Dovecot(root)`` writes a minimal configuration under ``root``: its own base_dir and
state_dir, a passwd-file passdb/userdb with one user (``boss``/``secret``, mapped to the
``nobody`` account: Dovecot refuses to serve mail as root), ``mail_location`` pointing at
``root/home/mail`` with INBOX ``root/spool/boss``, and IMAP and POP3 on free ports of
127.0.0.1 (never the standard ones). ``start()`` runs ``dovecot -F -c CONFIG`` with its output
to a file and waits for both ports; ``stop()`` ends it by its pid.

Needs root (to start Dovecot's processes as their users) and the packages; ``skip_reason()``
says why a test cannot run here.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import pwd
import shutil
import signal
import subprocess
import tempfile

from tests.integration.harness import free_port, wait_ports

DOVECOT = "/usr/sbin/dovecot"
USER, PASSWORD = "boss", "secret"

CONFIG = """\
base_dir = {base_dir}
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
mail_location = mbox:{root}/home/mail:INBOX={root}/spool/%u
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = {root}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


def skip_reason() -> str | None:
    if not os.path.exists(DOVECOT):
        return "Dovecot is not installed (scripts/setup-debian.sh test installs it)"
    if os.geteuid() != 0:
        return "starting Dovecot needs root"
    for name in ("nobody", "dovecot", "dovenull"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            return f"no {name} account for Dovecot"
    return None


class Dovecot:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.spool = os.path.join(self.root, "spool")
        self.mail = os.path.join(self.root, "home", "mail")
        self.inbox = os.path.join(self.spool, USER)
        self.imap_port, self.pop3_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        # its unix sockets are in base_dir: a short path (sun_path holds 108 bytes)
        self.base_dir = tempfile.mkdtemp(prefix="mailsuite-dovecot-")
        nobody = pwd.getpwnam("nobody")
        self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
        for d in (self.root, os.path.dirname(self.mail)):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        for d in (self.spool, self.mail, os.path.dirname(self.mail)):
            os.makedirs(d, exist_ok=True)
            os.chown(d, self.uid, self.gid)
        parent = os.path.dirname(self.root)
        while parent != "/":  # Dovecot's processes run as nobody: every parent must be passable
            os.chmod(parent, os.stat(parent).st_mode | 0o111)
            parent = os.path.dirname(parent)
        home = os.path.dirname(self.mail)
        with open(os.path.join(self.root, "passwd"), "w") as f:
            f.write(f"{USER}:{{PLAIN}}{PASSWORD}:{self.uid}:{self.gid}::{home}::\n")
        self.config = os.path.join(self.root, "dovecot.conf")
        with open(self.config, "w") as f:
            f.write(CONFIG.format(root=self.root, base_dir=self.base_dir, imap=self.imap_port,
                                  pop3=self.pop3_port))

    def write_inbox(self, data: bytes) -> None:
        with open(self.inbox, "wb") as f:
            f.write(data)
        os.chown(self.inbox, self.uid, self.gid)
        os.chmod(self.inbox, 0o600)

    def start(self, timeout: float = 20.0) -> None:
        with open(os.path.join(self.root, "dovecot.out"), "wb") as out:
            self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.config], stdout=out,
                                         stderr=subprocess.STDOUT)
        try:
            wait_ports((self.imap_port, self.pop3_port), timeout, "dovecot", self.log, self.proc)
        except AssertionError as e:
            self.stop()
            raise RuntimeError(str(e)) from None

    def log(self) -> str:
        text = []
        for name in ("dovecot.out", "dovecot.log"):
            try:
                with open(os.path.join(self.root, name), errors="replace") as f:
                    text.append(f.read()[-2000:])
            except OSError:
                pass
        return "\n".join(text)

    def stop(self) -> None:
        """End Dovecot (its master takes its children along) and remove its base_dir."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def imap(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=10)
        client.login(USER, PASSWORD)
        return client

    def pop3_uidls(self) -> list[bytes]:
        client = poplib.POP3("127.0.0.1", self.pop3_port, timeout=10)
        try:
            client.user(USER)
            client.pass_(PASSWORD)
            return list(client.uidl()[1])
        finally:
            client.quit()
