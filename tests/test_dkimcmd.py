"""``mailsuite dkim keygen`` (mailsuite/dkimcmd.py) and the ``mailsuite`` dispatcher
(mailsuite/admin.py): the key file (mode, refusal to overwrite, owner), the DNS record printed
(one that verifies the key's signatures), the [dkim] line, usage errors as sysexits."""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import re
import shutil
import stat
import tempfile

import dkim
from twisted.trial import unittest

from mailsuite import admin, dkimcmd
from mailsuite.config import parse_config
from mailsuite.dkimconf import load_key

MESSAGE = b"From: boss@example.com\r\nTo: a@far.example\r\nSubject: hi\r\n\r\nbody\r\n"


ERRORS: list[str] = []  # what the last run() wrote to stderr


def run(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = admin.main(list(argv), out)
    ERRORS[:] = [err.getvalue()]
    return code, out.getvalue()


def record_of(output: str) -> tuple[str, str]:
    """(name, text) of the zone file line printed: its quoted strings joined."""
    line = next(ln for ln in output.splitlines() if " IN TXT " in ln)
    name, _, strings = line.partition(" IN TXT ")
    parts = re.findall(r'"([^"]*)"', strings)
    assert all(len(p) <= 255 for p in parts), parts
    return name, "".join(parts)


class KeygenTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ms-keygen-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.out = os.path.join(self.dir, "keys", "example.com.key")

    def signs_and_verifies(self, output: str, path: str) -> dkim.DKIM:
        """Sign with the written key; verify with the printed record as the only DNS."""
        name, text = record_of(output)
        selector = name.split("._domainkey.")[0]
        key = load_key(path)
        header = dkim.DKIM(MESSAGE, signature_algorithm=key.algorithm).sign(
            selector.encode(), b"example.com", key.material,
            canonicalize=(b"relaxed", b"relaxed"))

        def dnsfunc(query: bytes, timeout: int = 5) -> bytes | None:
            return text.encode() if query.decode() == name else None

        self.assertTrue(dkim.verify(header + MESSAGE, dnsfunc=dnsfunc))
        return key

    def test_rsa_default(self) -> None:
        """An RSA-2048 key, mode 0600 in a directory made 0750; the record
        (S._domainkey.DOMAIN., v=DKIM1; k=rsa, in strings of <= 255) verifies what the key
        signs; the [dkim] line printed is one mail.ini takes."""
        code, output = run("dkim", "keygen", "Example.COM", "--selector", "sel",
                           "--out", self.out)
        self.assertEqual(code, 0, output)
        self.assertEqual(stat.S_IMODE(os.stat(self.out).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.out)).st_mode), 0o750)
        name, text = record_of(output)
        self.assertEqual(name, "sel._domainkey.example.com.")
        self.assertTrue(text.startswith("v=DKIM1; k=rsa; p=MII"), text)
        self.assertGreater(len(re.findall(r'"', output)), 2)  # 2048 bits: two strings
        self.assertEqual(self.signs_and_verifies(output, self.out).bits, 2048)
        line = output.strip().splitlines()[-1]
        self.assertEqual(line, f"example.com = sel:{self.out}")
        cfg = parse_config(f"[dkim]\n{line}\n", "mail.ini", hostname=lambda: "mail.example.com")
        self.assertEqual(cfg.dkim.domains["example.com"].path, self.out)

    def test_ed25519_and_bits(self) -> None:
        """--ed25519: an Ed25519 key, k=ed25519 record of the 32-byte public key; --bits
        sets RSA's size."""
        code, output = run("dkim", "keygen", "example.com", "--ed25519", "-s", "ed",
                           "--out", self.out)
        self.assertEqual(code, 0, output)
        self.assertIn('ed._domainkey.example.com. IN TXT "v=DKIM1; k=ed25519; p=', output)
        self.assertEqual(self.signs_and_verifies(output, self.out).bits, 256)
        other = os.path.join(self.dir, "3072.key")
        code, output = run("dkim", "keygen", "example.com", "--bits", "3072", "--out", other)
        self.assertEqual(self.signs_and_verifies(output, other).bits, 3072)

    def test_never_overwrites_unless_forced(self) -> None:
        """A second keygen on the same file fails (73, EX_CANTCREAT) and leaves the key;
        --force replaces it (still 0600)."""
        self.assertEqual(run("dkim", "keygen", "example.com", "--out", self.out)[0], 0)
        with open(self.out, "rb") as f:
            first = f.read()
        code, _ = run("dkim", "keygen", "example.com", "--out", self.out)
        self.assertEqual(code, 73)
        self.assertIn(f"mailsuite: fatal: {self.out}: exists; --force replaces it", ERRORS[0])
        with open(self.out, "rb") as f:
            self.assertEqual(f.read(), first)
        self.assertEqual(run("dkim", "keygen", "example.com", "--ed25519", "--force",
                             "--out", self.out)[0], 0)
        with open(self.out, "rb") as f:
            self.assertNotEqual(f.read(), first)
        self.assertEqual(stat.S_IMODE(os.stat(self.out).st_mode), 0o600)
        self.assertFalse(os.path.exists(self.out + ".new"))

    def test_default_selector_and_path(self) -> None:
        """No --selector: the year and month (UTC) of now; no --out: /etc/mailsuite/dkim/
        DOMAIN.key (checked on the parsed arguments, not written)."""
        args = dkimcmd.parser().parse_args(["keygen", "example.com", "--out", self.out])
        out = io.StringIO()
        dkimcmd.keygen(args, out, now=lambda: 1796184000.0)  # 2026-12-02
        self.assertIn("202612._domainkey.example.com.", out.getvalue())
        self.assertEqual(dkimcmd.KEY_DIR, "/etc/mailsuite/dkim")

    def test_owner(self) -> None:
        """(root) --owner USER: the key is that user's (the signing process's, mail_owner),
        still 0600; the directory made is root's, group the user's, 0750."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root")
        nobody = pwd.getpwnam("nobody")
        code, output = run("dkim", "keygen", "example.com", "--owner", "nobody",
                           "--out", self.out)
        self.assertEqual(code, 0, output)
        st = os.stat(self.out)
        self.assertEqual((st.st_uid, st.st_gid), (nobody.pw_uid, nobody.pw_gid))
        self.assertIn("owner nobody", output)
        self.assertEqual(os.stat(os.path.dirname(self.out)).st_gid, nobody.pw_gid)

    def test_usage_errors(self) -> None:
        """Usage errors are 64 (EX_USAGE) and say what is wrong on stderr: a domain without
        a dot, a bad selector, RSA bits outside 1024-4096, --bits with --ed25519, an unknown
        sub-command; no file is written."""
        for argv in (["dkim", "keygen", "localhost"],
                     ["dkim", "keygen", "example.com", "-s", "a_b"],
                     ["dkim", "keygen", "example.com", "--bits", "512"],
                     ["dkim", "keygen", "example.com", "--bits", "8192"],
                     ["dkim", "keygen", "example.com", "--ed25519", "--bits", "2048"],
                     ["dkim", "rotate"], ["nonsense"], []):
            self.assertEqual(run(*argv, "--out", self.out)[0] if argv[:2] == ["dkim", "keygen"]
                             else run(*argv)[0], 64, argv)
            if argv:
                self.assertIn("mailsuite: fatal: ", ERRORS[0])
        self.assertFalse(os.path.exists(self.out))

    def test_help(self) -> None:
        """--help of the command, of dkim and of keygen: usage on stdout, exit 0."""
        for argv in (["--help"], ["dkim", "--help"], ["dkim", "keygen", "--help"]):
            code, output = run(*argv)
            self.assertEqual(code, 0, argv)
            self.assertIn("usage: mailsuite", output)
        self.assertIn("keygen", run("dkim", "--help")[1])
        self.assertIn("--ed25519", run("dkim", "keygen", "--help")[1])
