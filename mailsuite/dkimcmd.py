"""``mailsuite dkim keygen``: a DKIM signing key and the DNS record that publishes it (what
opendkim-genkey does for opendkim).

    mailsuite dkim keygen example.com [--selector S] [--ed25519] [--bits N] [--out FILE]

writes the private key (PEM, PKCS#8; RSA 2048 bits unless told otherwise, or Ed25519) to
``/etc/mailsuite/dkim/DOMAIN.key`` (the directory made 0750 if missing), mode 0600, owned by
``[mail] mail_owner`` when run as root (the process that signs runs as that user, as
opendkim's keys are the opendkim user's), never over an existing file unless ``--force``;
then prints the TXT record (``SELECTOR._domainkey.DOMAIN.``, in strings of at most 255
characters, as a zone file takes a record longer than one) and the ``[dkim]`` line. The
default selector is the year and month (``202612``): a new key gets a new selector, and the
old record can stay published until the mail signed with it has arrived (RFC 6376 3.1).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import time
from collections.abc import Callable
from typing import TextIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailsuite.cmdbase import EX_OK, EX_USAGE, ArgParser, Fatal, parse_args
from mailsuite.config import ConfigError, config_path, load_config
from mailsuite.dkimconf import MIN_RSA_BITS, parse_entry, parse_key, txt_record

EX_CANTCREAT = 73  # sysexits(3): a file cannot be created
KEY_DIR = "/etc/mailsuite/dkim"
MAX_RSA_BITS = 4096  # RFC 8301 3.2: verifiers MUST validate keys of 1024 to 4096 bits
TXT_STRING = 255  # the longest character-string of a TXT record (RFC 1035 3.3)


def parser(prog: str = "mailsuite dkim") -> argparse.ArgumentParser:
    top = ArgParser(prog=prog, description="DKIM signing keys (the [dkim] section of mail.ini)")
    sub = top.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=ArgParser)
    keygen = sub.add_parser(
        "keygen", help="write a signing key and print its DNS record",
        description="Write a DKIM private key (mode 0600) and print the DNS TXT record to"
        " publish and the [dkim] line to add.")
    keygen.add_argument("domain", metavar="DOMAIN", help="the signing domain (d=)")
    keygen.add_argument("--selector", "-s", help="the selector (s=); default: year and month,"
                        " like 202612")
    keygen.add_argument("--ed25519", action="store_true", help="an Ed25519 key (RFC 8463)"
                        " instead of RSA")
    keygen.add_argument("--bits", "-b", type=int, help="RSA key size (default 2048; 1024 to"
                        " 4096)")
    keygen.add_argument("--out", "-o", help=f"key file (default {KEY_DIR}/DOMAIN.key)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key file")
    keygen.add_argument("--owner", help="user owning the key when run as root (default: [mail]"
                        " mail_owner of mail.ini)")
    keygen.add_argument("-C", "--config", help="mail.ini (else $MAILSUITE_CONFIG, else"
                        " /etc/mailsuite/mail.ini)")
    return top


def new_key(ed25519_key: bool, bits: int | None) -> bytes:
    """A new private key, PEM (PKCS#8)."""
    if ed25519_key:
        if bits is not None:
            raise Fatal(EX_USAGE, "--bits is for RSA keys, not with --ed25519")
        key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = ed25519.Ed25519PrivateKey.generate()
    else:
        size = 2048 if bits is None else bits
        if not MIN_RSA_BITS <= size <= MAX_RSA_BITS:
            raise Fatal(EX_USAGE, f"--bits {size}: RSA keys of {MIN_RSA_BITS} to {MAX_RSA_BITS}"
                        " bits (RFC 8301; 2048 recommended)")
        key = rsa.generate_private_key(public_exponent=65537, key_size=size)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def owner_ids(explicit: str | None, config: str | None) -> tuple[int, int] | None:
    """(uid, gid) the key goes to: ``--owner``, else mail.ini's mail_owner; None when not root
    or nobody is named (the key stays the caller's)."""
    if os.geteuid() != 0:
        return None
    name = explicit
    if name is None:
        try:
            name = load_config(config_path(config)).mail.mail_owner
        except ConfigError:
            if config is not None or os.path.exists(config_path(None)):
                raise
            return None  # no mail.ini yet: the key stays root's; README says what to do
    if not name:
        return None
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        raise Fatal(EX_USAGE, f"unknown user {name!r} to own the key") from None
    return user.pw_uid, user.pw_gid


def write_key(path: str, pem: bytes, force: bool, owner: tuple[int, int] | None) -> None:
    """``pem`` into ``path``, mode 0600 from its first byte; an existing file only replaced
    with ``force`` (then whole: written beside it and renamed)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o750)
        if owner is not None:
            os.chown(directory, 0, owner[1])  # root's; mail_owner's group may look in
    target = path + ".new" if force else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    if force:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
    fd = os.open(target, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    if force:
        os.replace(target, path)


def dns_record(selector: str, domain: str, text: str) -> str:
    """The zone file line: the record's text in quoted strings of at most 255 characters."""
    parts = [text[i:i + TXT_STRING] for i in range(0, len(text), TXT_STRING)]
    return f"{selector}._domainkey.{domain}. IN TXT " + " ".join(f'"{p}"' for p in parts)


def keygen(args: argparse.Namespace, out: TextIO, now: Callable[[], float] = time.time) -> int:
    selector = args.selector or time.strftime("%Y%m", time.gmtime(now()))
    path = args.out or os.path.join(KEY_DIR, f"{args.domain.lower().rstrip('.')}.key")
    try:
        domain, entry = parse_entry(args.domain, f"{selector}:{os.path.abspath(path)}")
    except ValueError as e:
        raise Fatal(EX_USAGE, str(e)) from None
    pem = new_key(args.ed25519, args.bits)
    try:
        owner = owner_ids(args.owner, args.config)
    except ConfigError as e:
        raise Fatal(EX_USAGE, f"configuration refused:\n{e}") from None
    try:
        write_key(entry.path, pem, args.force, owner)
    except FileExistsError:
        raise Fatal(EX_CANTCREAT, f"{entry.path}: exists; --force replaces it (the mail"
                    " signed with it then no longer verifies once its record is gone)") from None
    except OSError as e:
        raise Fatal(EX_CANTCREAT, f"{entry.path}: {e.strerror}") from None
    key = parse_key(pem)
    kind = "Ed25519" if args.ed25519 else f"RSA {key.bits} bits"
    whose = f", owner {pwd.getpwuid(owner[0]).pw_name}" if owner else ""
    print(f"Wrote {entry.path} ({kind}, mode 0600{whose}).\n\n"
          "Publish this DNS record:\n"
          f"{dns_record(entry.selector, domain, txt_record(key))}\n\n"
          "Add this line to the [dkim] section of mail.ini, then restart mailsuite:\n"
          f"{domain} = {entry.selector}:{entry.path}", file=out)
    return EX_OK


def main(argv: list[str], out: TextIO) -> int:
    """``mailsuite dkim ...``: its exit status (--help to ``out``, status 0)."""
    args = parse_args(parser(), argv, out)
    return args if isinstance(args, int) else keygen(args, out)
