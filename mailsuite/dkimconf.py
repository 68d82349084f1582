"""The ``[dkim]`` section of mail.ini: one line a signing domain, as opendkim's KeyTable and
SigningTable in one::

    [dkim]
    example.com = mail:/etc/mailsuite/dkim/example.com.key

The key of a line is the domain (``d=``), the value ``SELECTOR:PATH``: the selector (``s=``,
the DNS name ``SELECTOR._domainkey.DOMAIN`` holds the public key) and the PEM private key
(RSA, PKCS#1 or PKCS#8, of at least 1024 bits as RFC 8301 requires; or Ed25519, RFC 8463).

``parse_entry`` checks a line's text (mailsuite.config, pure: no file is read then, so that a
user's ``sendmail`` never needs to read the keys); ``load_key`` reads and checks a key file, at
start (the master, and the process that signs: mailsuite.filter.dkim).
"""

from __future__ import annotations

import base64
import errno
import os
import re
import stat
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from mailsuite.configvalues import parse_domain, parse_path

#: RFC 8301 section 3.2: signers MUST use RSA keys of at least 1024 bits (SHOULD: 2048).
MIN_RSA_BITS = 1024
RSA_SHA256, ED25519_SHA256 = b"rsa-sha256", b"ed25519-sha256"

# RFC 6376 section 3.1: selector = sub-domain *( "." sub-domain ) (RFC 5321's sub-domain:
# letters, digits, inner hyphens; no underscore)
_SELECTOR = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")


@dataclass(frozen=True)
class DkimEntry:
    """One ``[dkim]`` line: the selector and the private key's file."""

    selector: str
    path: str


@dataclass(frozen=True)
class DkimConfig:
    """``[dkim]``: {signing domain: its entry} (empty: nothing is signed)."""

    domains: dict[str, DkimEntry] = field(default_factory=dict)

    def signing_domain(self, domain: str) -> str | None:
        """The configured domain that signs mail From: ``domain``: the domain itself, else its
        nearest configured parent (``news.example.com`` -> ``example.com``), else None."""
        labels = domain.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            candidate = ".".join(labels[i:])
            if candidate in self.domains:
                return candidate
        return None


def parse_entry(name: str, value: str) -> tuple[str, DkimEntry]:
    """(domain, entry) of the line ``name = value``; ValueError says what is wrong."""
    domain = parse_domain(name)
    if "." not in domain:
        raise ValueError(f"{name!r} is not a domain name with a dot (like example.com)")
    selector, colon, path = value.strip().partition(":")
    if not colon:
        raise ValueError(f"{value.strip()!r} is not SELECTOR:/path/to/key.pem")
    if not _SELECTOR.match(selector) or len(selector) > 63 * 4:
        raise ValueError(f"selector {selector!r} is not a DNS name (letters, digits, hyphens,"
                         " dots)")
    return domain, DkimEntry(selector, parse_path(path))


def build(entries: dict[str, DkimEntry]) -> DkimConfig:
    return DkimConfig(dict(entries))


@dataclass(frozen=True)
class SigningKey:
    """A key as dkimpy takes it: ``algorithm`` (``a=``), ``material`` (RSA: PKCS#1 PEM;
    Ed25519: the base64 of the 32-byte private key), ``public`` (the ``p=`` of the DNS record)
    and ``bits`` (RSA's modulus; 256 for Ed25519)."""

    algorithm: bytes
    material: bytes
    public: str
    bits: int


class UnusableKey(ValueError):
    """A key file that cannot be used (the message says why)."""


def parse_key(pem: bytes) -> SigningKey:
    """The SigningKey of a PEM private key; UnusableKey if it is not RSA >= 1024 or Ed25519."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise UnusableKey("the key is encrypted (a pass phrase): store it without one,"
                        " mode 0600") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise UnusableKey(f"not a PEM private key ({e})") from None
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise UnusableKey(f"an RSA key of {key.key_size} bits: RFC 8301 requires at least"
                            f" {MIN_RSA_BITS} (2048 recommended)")
        pkcs1 = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())
        public = base64.b64encode(key.public_key().public_bytes(der, spki)).decode()
        return SigningKey(RSA_SHA256, pkcs1, public, key.key_size)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = serialization.Encoding.Raw
        seed = key.private_bytes(raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        # RFC 8463 section 4.2: p= is the bare 32-byte public key, base64
        public = base64.b64encode(key.public_key().public_bytes(
            raw, serialization.PublicFormat.Raw)).decode()
        return SigningKey(ED25519_SHA256, base64.b64encode(seed), public, 256)
    kind = "an EC" if isinstance(key, ec.EllipticCurvePrivateKey) else \
        "a DSA" if isinstance(key, dsa.DSAPrivateKey) else "another kind of"
    raise UnusableKey(f"{kind} key: DKIM signs with RSA (RFC 6376) or Ed25519 (RFC 8463)")


def load_key(path: str) -> SigningKey:
    """The key in the file ``path`` (OSError: cannot read; UnusableKey: cannot use). Only a
    regular file (opened without blocking: a FIFO must not hang the master at start) that
    other users may not read or write (opendkim's RequireSafeKeys)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if mode & 0o007:
            raise UnusableKey(f"other users may read or write it (mode {mode & 0o777:04o}):"
                              " chmod 0600 (or 0640 for a group of mail_owner's)")
        return parse_key(f.read(1024 * 1024))


def txt_record(key: SigningKey) -> str:
    """The text of the ``SELECTOR._domainkey`` TXT record publishing ``key`` (RFC 6376 3.6.1,
    RFC 8463 4.2)."""
    kind = "rsa" if key.algorithm == RSA_SHA256 else "ed25519"
    return f"v=DKIM1; k={kind}; p={key.public}"
