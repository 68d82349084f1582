"""ARC sealing (RFC 8617) of the mail we forward: a message checked on its way in whose
recipients include an address forwarded to another domain (an alias or ~/.forward) gets one
more ARC set, so the next receiver can see our Authentication-Results (SPF, DKIM, DMARC as we
found them) although forwarding breaks SPF and may break DKIM.

dkimpy's ``arc_sign`` writes the set (ARC-Seal, ARC-Message-Signature over the message with
relaxed canonicalization, ARC-Authentication-Results copied from our Authentication-Results,
``cv=`` from its ``arc=`` result). It signs with rsa-sha256 only. The key is
``[auth_checks] arc_key = DOMAIN:SELECTOR:/path/key.pem`` (a PEM RSA key, readable by
mail_owner); its public half is published as ``SELECTOR._domainkey.DOMAIN`` like a DKIM key.
Without it, the ``[dkim]`` key of ``mydomain`` seals when it is RSA (``from_dkim``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailsuite.dkimconf import RSA_SHA256, load_key
from mailsuite.mta import forward
from mailsuite.mta.accept import LocalRecipient
from mailsuite.mta.transaction import Envelope


@dataclass(frozen=True)
class SealingKey:
    """The d=, s= and the PEM private key of our seals."""

    domain: str
    selector: str
    pem: bytes


def load(spec: str) -> SealingKey:
    """The key of ``DOMAIN:SELECTOR:/path`` (parsed by authcheckconf.parse_arc_key); OSError
    when the file cannot be read, ValueError when it is not a PEM RSA private key."""
    domain, selector, path = spec.split(":", 2)
    with open(path, "rb") as f:
        pem = f.read()
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a PEM private key without a passphrase ({e})") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 1024:
        raise ValueError(f"{path}: ARC seals need an RSA key of 1024 bits or more")
    return SealingKey(domain, selector, pem)


def from_dkim(cfg: Any) -> SealingKey | None:
    """Without an ``arc_key``: the ``[dkim]`` key of ``mydomain`` (or its nearest configured
    parent) seals, when it is RSA (dkimpy's arc_sign signs rsa-sha256 only); None otherwise.
    The key was read and checked at start with the other [dkim] keys (a broken one refused
    the start there)."""
    domain = cfg.dkim.signing_domain(cfg.mail.mydomain)
    if domain is None:
        return None
    entry = cfg.dkim.domains[domain]
    try:
        key = load_key(entry.path)
    except (OSError, ValueError):
        return None
    if key.algorithm != RSA_SHA256:
        return None
    return SealingKey(domain, entry.selector, key.material)


def forwarded(envelope: Envelope) -> bool:
    """Whether a recipient of ``envelope`` is forwarded to another domain (its RCPT look-up
    found a forward.Remote among its destinations)."""
    return any(isinstance(r.route, LocalRecipient)
               and any(isinstance(d, forward.Remote) for d in r.route.accounts)
               for r in envelope.recipients)


def seal(data: bytes, key: SealingKey, authserv_id: str, timestamp: int | None) -> bytes:
    """The ARC set's three fields for ``data`` (whose top Authentication-Results is ours),
    LF line ends, to be put on top; blocking (RSA). Raises dkim.DKIMException."""
    fields: list[Any] = dkim.arc_sign(
        data, key.selector.encode(), key.domain.encode(), key.pem, authserv_id.encode(),
        timestamp=timestamp, linesep=b"\n")
    return b"".join(fields)
