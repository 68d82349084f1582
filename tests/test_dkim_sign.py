"""DKIM signing (mailsuite/filter/dkim.py, mailsuite/dkimconf.py): which mail is signed, with
which domain's key, how the signature verifies (dkimpy's verifier, the public key handed in
as its DNS answer), and how a broken [dkim] line or key file is refused."""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet import defer
from twisted.trial import unittest

from mailsuite import filter as filters
from mailsuite import threads
from mailsuite.config import ConfigError, parse_config
from mailsuite.dkimconf import DkimConfig, DkimEntry, parse_key, txt_record
from mailsuite.filter.bcc import BccStage
from mailsuite.filter.dkim import DkimStage, author_domain
from mailsuite.maillog import MailLog
from mailsuite.mta.transaction import (
    LMTP,
    PICKUP,
    SMTP,
    Client,
    Envelope,
    Hold,
    Message,
    Pipeline,
    Recipient,
)
from mailsuite.configvalues import parse_networks
from mailsuite.startup import StartupError
from tests.configs import real_config

MESSAGE = (b"Received: from client (client [192.0.2.7])\n\tby mail.example.com; Wed, 2 Dec"
           b" 2026 04:00:00 +0000\nFrom: Boss <boss@example.com>\nTo: someone@far.example\n"
           b"Subject: quarterly figures\nDate: Wed, 2 Dec 2026 04:00:00 +0000\n"
           b"Message-ID: <1@example.com>\n\nThe figures.\n\n-- \nBoss\n")

# A 512-bit RSA key (openssl genrsa 512): too short to sign with (RFC 8301)
SHORT_RSA = b"""-----BEGIN PRIVATE KEY-----
MIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA43zBd6rJB4k6Wyav
XdxTHGIaYA5RL2r85MoaFwmKWFJrqjkCiG+5yCwg2wYa6jY/+YALpPGzx+VQB4Cp
yOYdDwIDAQABAkAZBfseF7o/SvgRWMMHlxnJUH1IParuhV1GKXkPOaxvJIS4Iot7
zpwKMD0EFAvnEBFkaQvbBNHgd8nR7iCM9LRhAiEA+H4WOjf93Y/XSAwlfuhN572n
pyvu0w97fDjqZ+3PWFECIQDqXDVnZErNquqE62QAW65Nomvle4IwZa8rotbMqoAn
XwIhAJLz1edGF47Asvq7nC0J6pCCuzQEqi8NN+TFr/IYVAeRAiAhodv0G3t0qmt/
abxvJLkN4Ro005WqVl1eGL9Unb9IZwIhALAoMMODuTAEZyWTvaMsVmpXdDSJ6Hg2
5DYuaNrOC7xD
-----END PRIVATE KEY-----
"""

_RSA: list[bytes] = []


def rsa_pem() -> bytes:
    """One RSA-2048 key for the module (PKCS#1, as opendkim-genkey writes them)."""
    if not _RSA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _RSA.append(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
    return _RSA[0]


def ed25519_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def verifies(data: bytes, records: dict[str, str]) -> bool:
    """dkimpy's verification of the LF message ``data`` as sent (CRLF), the TXT records
    ``{name: text}`` its DNS."""
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        text = records.get(name.decode().rstrip("."))
        return text.encode() if text else None
    return bool(dkim.verify(data.replace(b"\n", b"\r\n"), dnsfunc=dnsfunc))


def envelope(door: str = SMTP, address: str = "192.0.2.7", user: str | None = None) -> Envelope:
    return Envelope("4F2A1B9C", "boss@example.com", [Recipient("someone@far.example")],
                    Client(door, address=address, user=user))


def tags(data: bytes) -> dict[str, str]:
    """The tags of the message's first DKIM-Signature field."""
    head = data.split(b"\n\n", 1)[0].decode()
    field = re.search(r"^DKIM-Signature: (.*?)\n(?=\S)", head, re.S | re.M)
    assert field is not None, head
    value = re.sub(r"\s+", "", field.group(1))
    return dict(item.split("=", 1) for item in value.split(";") if item)


class Keys(unittest.TestCase):
    """A temp directory of key files and a config naming them."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ms-dkim-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.maillog = MailLog(None, "mail.example.com")

    def key_file(self, name: str, pem: bytes) -> str:
        """``pem`` in a file of the temp directory, mode 0600 (as keygen writes keys)."""
        fd = os.open(os.path.join(self.dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as f:
            f.write(pem)
        return os.path.join(self.dir, name)

    def config(self, **entries: tuple[str, str]) -> Any:
        domains = {d.replace("_", "."): DkimEntry(s, p) for d, (s, p) in entries.items()}
        cfg = real_config(mail={"mynetworks": parse_networks("10.0.0.0/8")},
                          dkim={"domains": domains})
        return cfg

    def stage(self, cfg: Any) -> DkimStage:
        stage = DkimStage.from_config(cfg, self.maillog, threads.inline)
        assert stage is not None
        return stage

    def run_stage(self, stage: DkimStage, env: Envelope, data: bytes = MESSAGE) -> Message:
        message = Message(env, data)
        d = stage(message)
        if d is not None:  # None: not ours to sign, not even looked at
            self.assertIsNone(self.successResultOf(d))
        return message


class SigningTests(Keys):
    def setUp(self) -> None:
        super().setUp()
        self.rsa = self.key_file("example.com.key", rsa_pem())
        self.records = {"sel._domainkey.example.com": txt_record(parse_key(rsa_pem()))}

    def test_rsa_signature_verifies(self) -> None:
        """Mail of an authenticated user From: example.com gets a DKIM-Signature on top
        (a=rsa-sha256, c=relaxed/relaxed, d= and s= of the [dkim] line, From: signed twice:
        no From: can be added), which dkimpy verifies over the message as sent (CRLF); the
        rest of the message is unchanged; one maillog line as opendkim's."""
        message = self.run_stage(self.stage(self.config(example_com=("sel", self.rsa))),
                                 envelope(user="boss"))
        self.assertTrue(message.data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;"))
        self.assertTrue(message.data.endswith(MESSAGE))
        self.assertNotIn(b"\r", message.data)
        t = tags(message.data)
        self.assertEqual((t["a"], t["c"], t["d"], t["s"]),
                         ("rsa-sha256", "relaxed/relaxed", "example.com", "sel"))
        self.assertEqual(t["h"].lower().split(":").count("from"), 2)
        self.assertNotIn("received", t["h"].lower())
        self.assertTrue(verifies(message.data, self.records))
        (line,) = self.maillog.lines
        self.assertIn("postfix/dkim[", line)
        self.assertTrue(line.endswith("4F2A1B9C: DKIM-Signature field added"
                                      " (s=sel, d=example.com)"), line)

    def test_ed25519_signature_verifies(self) -> None:
        """An Ed25519 key signs with a=ed25519-sha256 (RFC 8463), and the record keygen would
        print (k=ed25519, p= the raw public key) verifies it."""
        pem = ed25519_pem()
        path = self.key_file("ed.key", pem)
        message = self.run_stage(self.stage(self.config(example_com=("ed", path))),
                                 envelope(user="boss"))
        self.assertEqual(tags(message.data)["a"], "ed25519-sha256")
        record = txt_record(parse_key(pem))
        self.assertTrue(record.startswith("v=DKIM1; k=ed25519; p="))
        self.assertEqual(len(base64.b64decode(record.rsplit("p=", 1)[1])), 32)
        self.assertTrue(verifies(message.data, {"ed._domainkey.example.com": record}))

    def test_relaxed_survives_whitespace_and_case(self) -> None:
        """relaxed/relaxed: the signature still verifies after what MTAs on the way do to
        whitespace (refolded headers, a header name's case, trailing blanks, blank lines at
        the end), and not after a change of the body's words or of the Subject."""
        message = self.run_stage(self.stage(self.config(example_com=("sel", self.rsa))),
                                 envelope(user="boss"))
        mangled = (message.data.replace(b"Subject: quarterly figures",
                                        b"SUBJECT:   quarterly\n\t figures")
                   .replace(b"The figures.\n", b"The   figures.  \n") + b"\n\n")
        self.assertTrue(verifies(mangled, self.records))
        self.assertFalse(verifies(message.data.replace(b"The figures", b"The fugures"),
                                  self.records))
        self.assertFalse(verifies(message.data.replace(b"quarterly", b"annual"), self.records))

    def test_which_clients_are_signed(self) -> None:
        """Signed: an authenticated user (from anywhere), a client in mynetworks (no AUTH),
        local submission (sendmail pickup). Not signed: any other client on port 25, and
        LMTP (the MTA in front hands in mail for our mailboxes)."""
        stage = self.stage(self.config(example_com=("sel", self.rsa)))
        cases = [(envelope(user="boss", address="203.0.113.9"), True),
                 (envelope(address="10.1.2.3"), True),
                 (envelope(PICKUP, address="127.0.0.1"), True),
                 (envelope(address="203.0.113.9"), False),
                 (envelope(LMTP, address="10.1.2.3"), False)]
        for env, signed in cases:
            data = self.run_stage(stage, env).data
            self.assertEqual(data.startswith(b"DKIM-Signature:"), signed, env.client)
            if signed:
                self.assertTrue(verifies(data, self.records))

    def test_signing_domain_of_from(self) -> None:
        """The From: domain picks the key: itself, else its nearest configured parent
        (d=example.com for news.example.com; d=shop.example.com, its own line, for
        shop.example.com); a From: of no configured domain, none or two From: fields: not
        signed."""
        shop = self.key_file("shop.key", ed25519_pem())
        stage = self.stage(self.config(example_com=("sel", self.rsa),
                                       shop_example_com=("s2", shop)))

        def signed_with(data: bytes) -> str | None:
            out = self.run_stage(stage, envelope(user="boss"), data).data
            return tags(out)["d"] if out.startswith(b"DKIM-Signature") else None

        def with_from(value: bytes) -> bytes:
            return MESSAGE.replace(b"From: Boss <boss@example.com>", value)

        self.assertEqual(signed_with(with_from(b"From: x@news.example.com")), "example.com")
        self.assertEqual(signed_with(with_from(b"From: x@SHOP.Example.com")), "shop.example.com")
        self.assertEqual(signed_with(with_from(b"From: x@a.shop.example.com")),
                         "shop.example.com")
        self.assertIsNone(signed_with(with_from(b"From: x@example.org")))
        self.assertIsNone(signed_with(with_from(b"From: x@notexample.com")))
        self.assertIsNone(signed_with(with_from(b"X-From: x@example.com")))
        self.assertIsNone(signed_with(with_from(b"From: a@example.com\nFrom: b@example.com")))

    def test_author_domain(self) -> None:
        """The From: field's first address, unfolded, case-folded; none without '@'."""
        self.assertEqual(author_domain(b"fRoM: \"A, B\" <a@Ex.COM.>,\n c@d.org\n\nbody"),
                         "ex.com")
        self.assertIsNone(author_domain(b"From: undisclosed\n\n"))
        self.assertIsNone(author_domain(b"Subject: x\n\nFrom: a@example.com\n"))

    def test_unsignable_message_goes_unsigned(self) -> None:
        """A header dkimpy cannot parse: the message goes on unsigned (nothing is lost), a
        maillog warning says why."""
        stage = self.stage(self.config(example_com=("sel", self.rsa)))
        data = b"From: boss@example.com\n\x00bad header\nSubject: x\n\nbody\n"
        message = self.run_stage(stage, envelope(user="boss"), data)
        self.assertEqual(message.data, data)
        self.assertIn("warning: not signed:", self.maillog.lines[-1])

    def test_held_mail_is_signed(self) -> None:
        """A message an earlier stage holds is signed before it goes to the hold queue, so
        that when released it goes out signed."""
        held: list[bytes] = []

        class Queue:
            def hold(self, envelope: Any, data: bytes, reason: str) -> Any:
                held.append(data)
                return defer.succeed(None)

        delivery = type("D", (), {"queue": Queue()})()
        stages = [lambda m: Hold("audit rule secret"),
                  self.stage(self.config(example_com=("sel", self.rsa)))]
        p = Pipeline(delivery, None, "mail.example.com", lambda: 0.0, stages)
        self.successResultOf(p.deliver(envelope(user="boss"), MESSAGE))
        (data,) = held
        self.assertTrue(verifies(data, self.records))

    def test_stage_order(self) -> None:
        """stages(): DKIM signs after the other filters and before the BCC copies are made,
        so a copy is of the signed message; no [dkim] line, no stage."""
        cfg = self.config(example_com=("sel", self.rsa))
        cfg = type(cfg)(**{**cfg.__dict__, "mail": type(cfg.mail)(
            **{**cfg.mail.__dict__, "always_bcc": "archive@example.com"})})
        kinds = [type(s) for s in filters.stages(cfg, None, self.maillog, threads.inline)]
        self.assertEqual(kinds[-2:], [DkimStage, BccStage])
        kinds = [type(s) for s in filters.stages(real_config(), None, self.maillog,
                                                  threads.inline)]
        self.assertNotIn(DkimStage, kinds)


class ConfigTests(Keys):
    def test_line_syntax(self) -> None:
        """[dkim] lines: DOMAIN = SELECTOR:/path; the domain is case-folded; each bad line is
        an error naming file, section and key (no domain, bad selector, relative path, no
        colon, a domain twice)."""
        cfg = parse_config("[dkim]\nExample.COM = mail:/etc/k.pem\nb.org = 2026.a:/k\n",
                           "/etc/mail.ini", hostname=lambda: "mail.example.com")
        self.assertEqual(cfg.dkim, DkimConfig({"example.com": DkimEntry("mail", "/etc/k.pem"),
                                               "b.org": DkimEntry("2026.a", "/k")}))
        with self.assertRaises(ConfigError) as caught:
            parse_config("[dkim]\nlocalhost = s:/k\nx.com = bad_selector:/k\ny.com = s:k.pem\n"
                         "z.com = /k\nw.com = s:/a\nW.COM = t:/b\n", "/etc/mail.ini",
                         hostname=lambda: "mail.example.com")
        self.assertEqual(caught.exception.errors, [
            "/etc/mail.ini: [dkim] localhost: 'localhost' is not a domain name with a dot"
            " (like example.com)",
            "/etc/mail.ini: [dkim] x.com: selector 'bad_selector' is not a DNS name (letters,"
            " digits, hyphens, dots)",
            "/etc/mail.ini: [dkim] y.com: 'k.pem' is not an absolute path",
            "/etc/mail.ini: [dkim] z.com: '/k' is not SELECTOR:/path/to/key.pem",
            "/etc/mail.ini: [dkim] W.COM: names w.com as w.com does (line 6)"])

    def test_broken_keys_refused_at_start(self) -> None:
        """At start every key file is read: a missing file, a file that is no PEM key, an
        RSA key under 1024 bits (RFC 8301), an EC key, an encrypted key, a FIFO (not waited
        on), a key others may read (opendkim's RequireSafeKeys) are each refused, all at
        once, naming the file, [dkim] and the line's domain."""
        ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        locked = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"))
        os.mkfifo(os.path.join(self.dir, "fifo"))
        loose = self.key_file("loose", rsa_pem())
        os.chmod(loose, 0o644)
        paths = {"a_com": os.path.join(self.dir, "missing.key"),
                 "b_com": self.key_file("b", b"not a key\n"),
                 "c_com": self.key_file("c", SHORT_RSA),
                 "d_com": self.key_file("d", ec_pem),
                 "e_com": self.key_file("e", locked),
                 "f_com": os.path.join(self.dir, "fifo"),
                 "g_com": loose}
        cfg = self.config(**{d: ("s", p) for d, p in paths.items()})
        with self.assertRaises(ConfigError) as caught:
            filters.stages(cfg, None, self.maillog, threads.inline)
        lines = caught.exception.errors
        self.assertEqual(len(lines), 7, lines)
        for line, (domain, path) in zip(lines, paths.items(), strict=True):
            self.assertTrue(line.startswith(f"mail.ini: [dkim] {domain.replace('_', '.')}:"
                                            f" {path}: "), line)
        self.assertIn("No such file or directory", lines[0])
        self.assertIn("not a PEM private key", lines[1])
        self.assertIn("RSA key of 512 bits: RFC 8301 requires at least 1024", lines[2])
        self.assertIn("an EC key: DKIM signs with RSA", lines[3])
        self.assertIn("encrypted", lines[4])
        self.assertIn("not a regular file", lines[5])
        self.assertIn("other users may read or write it (mode 0644): chmod 0600", lines[6])

    def test_key_unreadable_by_mail_owner(self) -> None:
        """(root) The master refuses a key that mail_owner, who signs, cannot read."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root (the master's check)")
        os.chmod(self.dir, 0o755)
        path = self.key_file("root-only.key", rsa_pem())
        cfg = self.config(example_com=("sel", path))
        with self.assertRaises(StartupError) as caught:
            filters.check_at_start(cfg, (65534, 65534))
        self.assertIn(f"[dkim] example.com: {path}: Permission denied (read by mail_owner",
                      str(caught.exception))
        os.chown(path, 65534, 65534)
        filters.check_at_start(cfg, (65534, 65534))
