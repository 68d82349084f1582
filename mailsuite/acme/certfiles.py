"""Whether the certificate in ``ssl_cert`` will do, and the writing of a new one.

``due`` gives the reason a new certificate is needed (none, self-signed, a name missing,
expiring within ``acme_renew_before``: 30 days, as certbot) or None. ``install`` replaces the
key and the certificate (full chain) atomically: both new files are complete and synced before
either is renamed into place; the key is mode 0600, the certificate keeps its mode (0644 when
new); both keep the owner of the files they replace.
"""

from __future__ import annotations

import datetime
import json
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailsuite.fsutil import atomic_write, fsync_dir

KEY_BITS = 2048  # RSA: what every mail client since 2000 takes (ECDSA would leave old ones out)


def read_cert(path: str) -> bytes | None:
    """The PEM text of ``path``, None when there is no such file (blocking)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower().rstrip(".") for name in alt.get_values_for_type(x509.DNSName)]


def covers(patterns: list[str], name: str) -> bool:
    """RFC 6125 6.4.3: an exact name, or ``*.`` over one left-most label."""
    name = name.lower().rstrip(".")
    return any(p == name or (p.startswith("*.") and name.partition(".")[2] == p[2:])
               for p in patterns)


def due(cert_pem: bytes | None, names: list[str], now: datetime.datetime,
        renew_before: float) -> str | None:
    """Why a new certificate is wanted for ``names`` at ``now``, or None when it will do."""
    if cert_pem is None:
        return "there is no certificate"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)  # the first: the server's own
    except ValueError:
        return "the certificate file holds no PEM certificate"
    if cert.issuer == cert.subject:
        return "the certificate is self-signed"
    missing = [n for n in names if not covers(dns_names(cert), n)]
    if missing:
        return f"the certificate does not cover {', '.join(missing)}"
    expires = cert.not_valid_after_utc
    if expires - now <= datetime.timedelta(seconds=renew_before):
        return f"the certificate expires {expires:%Y-%m-%d %H:%M} UTC"
    return None


def expiry(cert_pem: bytes) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def new_key() -> bytes:
    """A new certificate key, PKCS#8 PEM (what acme.crypto_util.make_csr reads)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def check_pair(fullchain_pem: bytes, key_pem: bytes) -> None:
    """ValueError unless the first certificate of ``fullchain_pem`` is ``key_pem``'s."""
    cert = x509.load_pem_x509_certificate(fullchain_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise ValueError("the issued certificate is not for the key sent")


def _owner_and_mode(path: str, mode: int) -> tuple[tuple[int, int] | None, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, mode
    return (st.st_uid, st.st_gid), stat.S_IMODE(st.st_mode)


def install(cert_path: str, key_path: str, fullchain_pem: bytes, key_pem: bytes) -> None:
    """Replace the key and the certificate (blocking). Both are written to temp files and
    synced first; then the key, then the certificate is renamed into place, and the
    directories synced: a crash leaves the old pair, or (between two renames) the new key
    beside the old certificate, which the next issuance replaces."""
    check_pair(fullchain_pem, key_pem)
    key_owner, _ = _owner_and_mode(key_path, 0o600)
    cert_owner, cert_mode = _owner_and_mode(cert_path, 0o644)
    staged = []
    for path, data, owner, mode in ((key_path, key_pem, key_owner, 0o600),
                                    (cert_path, fullchain_pem, cert_owner, cert_mode)):
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        tmp = f"{path}.acme.tmp"
        atomic_write(tmp, data, tmp=f"{tmp}.part", mode=mode, owner=owner, sync=None)
        staged.append((tmp, path))
    for tmp, path in staged:
        os.replace(tmp, path)
    for directory in sorted({os.path.dirname(p) or "." for _, p in staged}):
        fsync_dir(directory)


# -- which CA issued the certificate in place -----------------------------------------------------


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the first certificate's DER (hex)."""
    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex()


def read_state(path: str) -> dict[str, str]:
    """What the last issuance recorded ({"server": URL, "fingerprint": HEX}); {} if nothing
    (or something unreadable: then the certificate is judged on its own)."""
    try:
        with open(path, "rb") as f:
            state = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(path: str, server: str, cert_pem: bytes) -> None:
    data = json.dumps({"server": server, "fingerprint": fingerprint(cert_pem)}).encode()
    atomic_write(path, data, tmp=f"{path}.tmp", mode=0o644)


def other_server(state: dict[str, str], cert_pem: bytes | None, server: str) -> str | None:
    """The reason for a new certificate when ours came from another directory than
    ``server`` (acme_server changed: from staging to production, say), else None. A
    certificate we did not issue (installed by hand) is not ours to judge here."""
    if cert_pem is None or not state.get("server") or state["server"] == server:
        return None
    try:
        if fingerprint(cert_pem) != state.get("fingerprint"):
            return None
    except ValueError:
        return None
    return f"the certificate is from {state['server']}, not acme_server"
