"""TLS for every listener: one server context, a self-signed certificate on first start, reload.

``ServerTLS(cert_path, key_path)`` is what the protocols and tap.py hand to Twisted, both for
STARTTLS (``transport.startTLS(server_tls)``) and for the implicit-TLS ports (``implicit(factory)``
wraps a factory in ``TLSMemoryBIOFactory``). It provides ``IOpenSSLServerConnectionCreator``: every
new TLS connection is made from the context loaded last, so ``reload()`` (tap.py calls it on
``kill -HUP``) swaps in a new certificate while open connections keep the context they started
with and are never dropped.

The context is built here rather than with ``CertificateOptions``: TLS 1.2 and 1.3 only, ECDHE
with AES-GCM or ChaCha20-Poly1305 for TLS 1.2 (Mozilla's "intermediate" list without DHE, which
covers every Outlook since 2016 and every phone), server cipher preference, no compression, no
renegotiation, no session tickets to leak across reloads. An SNI name is accepted whatever it is
(a trailing dot, as ``mail.example.test.``, included): there is one certificate.

``ensure_certificate`` does what Debian's dovecot-core package does at install: when ``ssl`` is
``yes`` or ``required`` and neither file exists, it makes a self-signed certificate for
``myhostname`` (RSA 2048, SHA-256, ten years), writes both files with mode 0600 (creating their
directories) and says where. A self-signed certificate for another name (``myhostname`` changed)
is moved to ``PATH.old`` and made again; a certificate from a CA is never touched. Exactly one
of the two files missing is an error, not a reason to overwrite the other.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, interfaces
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from mailsuite.config import Config
from mailsuite.fsutil import atomic_write
from mailsuite.threads import Blocking

log = Logger()

#: TLS 1.2 suites (TLS 1.3 has its own, all modern): forward secret AEAD only.
CIPHERS_TLS12 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
CERT_DAYS = 3652  # Debian's dovecot-core: ten years
KEY_BITS = 2048


class TLSSetupError(Exception):
    """The certificate or key cannot be used; the message says which file and why."""


# -- the context ---------------------------------------------------------------------------------


def _servername(connection: SSL.Connection) -> None:
    """SNI callback: accept any name. ``mail.example.test.`` (trailing dot) is the same host;
    the normalised name is kept on the connection for logs. Never raises (a raise would abort
    the handshake)."""
    try:
        name = connection.get_servername()
        if name:
            connection.set_app_data(name.decode("ascii", "replace").rstrip(".").lower())
    except Exception:  # the handshake must go on whatever the name looks like
        log.debug("odd SNI name ignored")


def build_context(cert_path: str, key_path: str) -> SSL.Context:
    """A server context for the PEM certificate (chain) and key; TLSSetupError if unusable."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_NO_TICKET
    )
    ctx.set_cipher_list(CIPHERS_TLS12.encode("ascii"))
    ctx.set_session_id(b"mailsuite")
    ctx.set_tlsext_servername_callback(_servername)
    for what, path in (("certificate", cert_path), ("key", key_path)):
        try:
            open(path, "rb").close()  # OpenSSL's own reason for an unreadable file is empty
        except FileNotFoundError:
            raise TLSSetupError(f"{path}: TLS {what} file does not exist") from None
        except OSError as e:
            raise TLSSetupError(f"{path}: cannot read the TLS {what} file: {e.strerror}") \
                from None
    try:
        ctx.use_certificate_chain_file(cert_path.encode())
    except (SSL.Error, OSError) as e:
        raise TLSSetupError(f"{cert_path}: not a usable PEM certificate: {_reason(e)}") from None
    try:
        ctx.use_privatekey_file(key_path.encode())
    except (SSL.Error, OSError) as e:
        if "mismatch" in _reason(e):
            raise TLSSetupError(f"{key_path}: the key does not match {cert_path}") from None
        raise TLSSetupError(f"{key_path}: not a usable PEM private key: {_reason(e)}") from None
    try:
        ctx.check_privatekey()
    except SSL.Error:
        raise TLSSetupError(f"{key_path}: the key does not match {cert_path}") from None
    return ctx


def _reason(error: Exception) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    parts = [item[-1] for item in error.args[0] if item] if error.args and error.args[0] else []
    return "; ".join(str(p) for p in parts) or str(error)


@implementer(interfaces.IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The server side of every TLS connection; ``reload()`` swaps the certificate."""

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.context = build_context(cert_path, key_path)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)

    def reload(self, blocking: Blocking) -> defer.Deferred[bool]:
        """Read the files again (through ``blocking``, mailsuite.threads) and use them for new
        connections.

        Fires True when the new certificate is in use; False (logged) when the files are broken,
        in which case the old certificate stays in use.
        """

        def swap(ctx: SSL.Context) -> bool:
            self.context = ctx
            log.info("TLS certificate reloaded from {cert}", cert=self.cert_path)
            return True

        def failed(failure: Any) -> bool:
            log.error("TLS certificate not reloaded, the old one stays in use: {why}",
                      why=failure.getErrorMessage())
            return False

        d = blocking(build_context, self.cert_path, self.key_path)
        return d.addCallbacks(swap, failed)

    def implicit(self, factory: Any) -> TLSMemoryBIOFactory:
        """``factory`` behind TLS from the first byte (ports 465, 993, 995)."""
        return TLSMemoryBIOFactory(self, False, factory)  # type: ignore[arg-type]


def is_tls(transport: Any) -> bool:
    """Whether ``transport`` is encrypted (after STARTTLS, or on an implicit-TLS port)."""
    return bool(
        interfaces.ISSLTransport.providedBy(transport)
        or isinstance(transport, TLSMemoryBIOProtocol)
        or getattr(transport, "TLS", False)
    )


# -- the first-start certificate -----------------------------------------------------------------


def ensure_certificate(hostname: str, cert_path: str, key_path: str) -> bool:
    """Make a self-signed certificate for ``hostname`` unless the files exist.

    True when one was made. TLSSetupError when only one of the two files exists.
    """
    have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
    if have_cert and have_key:
        other = _self_signed_for_other_name(cert_path, hostname)
        if other is None:
            return False
        for path in (cert_path, key_path):  # kept, in case someone wants them back
            os.replace(path, path + ".old")
        log.warn("the self-signed TLS certificate {cert} was for {other}, not myhostname"
                 " {host}: moved to {cert}.old, a new one is made", cert=cert_path,
                 other=other, host=hostname)
        have_cert = have_key = False
    if have_cert or have_key:
        present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise TLSSetupError(
            f"{missing}: missing while {present} exists; install the matching file, or remove"
            f" {present} to have a self-signed certificate made at the next start"
        )
    cert_pem, key_pem = self_signed(hostname)
    _write_private(key_path, key_pem)
    _write_private(cert_path, cert_pem)
    log.warn(  # twisted.logger.Logger has warn, not warning
        "made a self-signed TLS certificate for {host}: {cert} (key {key}); clients will warn"
        " until a certificate from a CA is installed there (then kill -HUP)",
        host=hostname, cert=cert_path, key=key_path,
    )
    return True


def _self_signed_for_other_name(cert_path: str, hostname: str) -> str | None:
    """The names of the self-signed certificate at ``cert_path`` when they do not include
    ``hostname`` (myhostname changed since it was made); None for any other certificate (one
    from a CA is never replaced here: the admin, or ACME, chose it)."""
    from cryptography import x509

    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return None  # build_context says what is wrong with it
    if cert.issuer != cert.subject:
        return None
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n).lower() for n in alt.get_values_for_type(x509.DNSName)]
        names += [str(a) for a in alt.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    if hostname.lower() in names:
        return None
    return ", ".join(names) or cert.subject.rfc4514_string()


def self_signed(hostname: str, now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): RSA, SHA-256, CN and subjectAltName ``hostname``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or datetime.datetime.now(datetime.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        alt = x509.DNSName(hostname)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(63) + 1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_private(path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` with mode 0600 (directories made 0755), all or nothing."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    atomic_write(path, data, tmp=f"{path}.{os.getpid()}.tmp", sync=None)


def server_tls(cfg: Config) -> ServerTLS | None:
    """The ServerTLS of a configuration (None for ``ssl = no``), making the certificate if
    needed. Blocking (file I/O, key generation): call it at start-up, before the reactor runs."""
    if cfg.tls.ssl == "no":
        return None
    ensure_certificate(cfg.mail.myhostname, cfg.tls.ssl_cert, cfg.tls.ssl_key)
    return ServerTLS(cfg.tls.ssl_cert, cfg.tls.ssl_key)
